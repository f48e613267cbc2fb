"""Annotation loop: a simulated annotator over the MIT restaurant training pool (its tags are the annotator's
answers), scored on restaurantvalid.bio.

Start from ``--start`` random sentences. Each round the strategy picks the next ``--step`` sentences from the
pool with the serving model (``random``; ``doubt``: the lowest task score the backend serves; the lowest under
one of ``backend.model.predict.TASK_SCORES``: ``least-word``, the least certain word, ``whole-labelling``, the
product of the words' label probabilities; ``mc-dropout``: the least agreement of 5 passes with dropout on; or
``doubt-sampled``: a sample weighted by doubt, each candidate's chance growing as its surprisal ** ``--beta``),
the annotator corrects the suggestions (its answers are the gold tags), and the model retrains through
``train_model``, the service's training function: ``warm`` (from the serving model with the service's warm-start
schedule, ``training_run.warm_recipe``, back to the base model when the service would: ``training_run.rebase_due``)
or ``scratch`` (from the base model). ``--serve-average K`` serves the mean weights of a warm line's last K versions.
Per round: annotations so far, validation F1, the share of the picked batch's gold entities the shown suggestions
already had exactly (work saved), the share of suggested entities the annotator kept exactly, training seconds.
One JSON line per round, a PNG of F1 against annotations for the runs side by side (``--plot``), and a summary
JSON object last. ``--quick``: the tiny model of the tests on synthetic sentences, a few rounds (for CI).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (BIO_LABELS, TRAIN_FILE, VALID_FILE, machine, print_result, read_examples,  # noqa: E402
                    recipe_options, stand_in_model)

from backend.model.config import TrainingConfig  # noqa: E402
from backend.model.metrics import entities  # noqa: E402
from backend.model.predict import TASK_SCORES, doubt_score, whole_labelling  # noqa: E402
from backend.shared.settings import Settings  # noqa: E402
from backend.training.training_run import rebase_due, warm_recipe  # noqa: E402

# Pool sentences a doubt strategy scores per round, a random sample: the whole pool (--candidates 0) takes longer a
# round and picked no better, from 850 annotations on worse (docs/tuning-history.md, the annotation loop's levers).
CANDIDATES = 2000


def shown_and_kept(gold: list[list[str]], shown: list[list[str]]) -> tuple[float | None, float | None]:
    """(gold entities the suggestions had exactly / gold entities, suggested entities kept exactly / suggested)."""
    hits = suggested = wanted = 0
    for gold_tags, shown_tags in zip(gold, shown):
        truth, offered = set(entities(gold_tags)), set(entities(shown_tags))
        hits += len(truth & offered)
        suggested += len(offered)
        wanted += len(truth)
    return (hits / wanted if wanted else None), (hits / suggested if suggested else None)


MEASURES = {"doubt": doubt_score, **TASK_SCORES}  # doubt: the task score the backend serves (its readable form)
MC_PASSES = 5
STRATEGIES = ["random", *MEASURES, "mc-dropout", "doubt-sampled"]


def dropout_agreement(predictor, token_lists: list[list[str]], passes: int = MC_PASSES) -> list[float]:
    """Per word list, the share of ``passes`` predictions with dropout on (Monte Carlo dropout) that give the most
    frequent tag sequence: 1 when every pass agrees (Siddhant & Lipton, EMNLP 2018, BALD for sequences)."""
    import torch

    dropouts = [m for m in predictor.model.modules() if isinstance(m, torch.nn.Dropout)]
    for module in dropouts:
        module.train()
    try:
        samples = [predictor.predict_tags(token_lists) for _ in range(passes)]
    finally:
        for module in dropouts:
            module.eval()
    return [max(Counter(map(tuple, tag_lists)).values()) / passes for tag_lists in zip(*samples)]


def pick(strategy: str, predictor, pool: list, taken: set[int], step: int, rng: random.Random,
         candidates: int = CANDIDATES, beta: float = 1.0) -> list[int]:
    """The indices of the next ``step`` pool sentences to annotate: a random sample, or the lowest-scored of
    ``candidates`` random ones (0: the whole pool) under the strategy's measure of the serving model's doubt."""
    left = [i for i in range(len(pool)) if i not in taken]
    if strategy == "random" or predictor is None:
        return rng.sample(left, min(step, len(left)))
    candidates = rng.sample(left, min(candidates or len(left), len(left)))
    words = [pool[i].tokens for i in candidates]
    per_word = [confidences for _, confidences in predictor.predict_words(words)]
    if strategy == "doubt-sampled":  # surprisal: -log of the whole labelling's probability, summed (no underflow)
        surprisals = [sum(-math.log(max(c, 1e-12)) for c in confidences) for confidences in per_word]
        return [candidates[k] for k in weighted_sample(surprisals, beta, step, rng)]
    measure = whole_labelling if strategy == "mc-dropout" else MEASURES[strategy]
    scores = [measure(confidences) for confidences in per_word]
    if strategy == "mc-dropout":  # the passes' agreement first, the whole labelling's probability between ties
        scores = list(zip(dropout_agreement(predictor, words), scores))
    ranked = sorted(zip(scores, candidates))
    return [i for _, i in ranked[:step]]


def weighted_sample(weights: list[float], beta: float, k: int, rng: random.Random) -> list[int]:
    """``k`` indices drawn without replacement, each with a chance proportional to ``weight ** beta`` (Gumbel-top-k;
    Kirsch et al., "Stochastic Batch Acquisition", TMLR 2023): ``beta`` 0 is a random order, a large ``beta`` the
    highest weights first."""
    keys = [beta * math.log(max(w, 1e-12)) - math.log(-math.log(rng.random() or 1e-300)) for w in weights]
    return sorted(range(len(weights)), key=lambda i: keys[i], reverse=True)[:k]


def averaged(dirs: list[Path], out: Path) -> Path:
    """The version to serve from a line of warm starts' last versions ``dirs``: the last one alone, or a copy of it
    whose weights are the mean of all of theirs (written to ``out``; --serve-average)."""
    if len(dirs) == 1:
        return dirs[0]
    import shutil

    from safetensors.torch import load_file, save_file

    states = [load_file(str(d / "model.safetensors")) for d in dirs]
    mean = {k: (sum(s[k].float() for s in states) / len(states)).to(states[-1][k].dtype)
            if states[-1][k].is_floating_point() else states[-1][k] for k in states[-1]}
    shutil.copytree(dirs[-1], out)
    save_file(mean, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def run(strategy: str, mode: str, pool: list, valid: list, base: str, labels: list[str], args, work: Path,
        log) -> list[dict]:
    from backend.model.predict import Predictor
    from backend.model.train import evaluate_model, train_model

    rng = random.Random(args.seed)
    warm_settings = Settings(warm_start_epochs=args.warm_epochs, warm_start_min_steps=args.warm_min_steps,
                             warm_start_lr=args.warm_lr, warm_start_rebase_growth=args.rebase_growth)
    config = TrainingConfig(base_model=base, seed=args.seed, threads=args.threads, **args.recipe)
    taken: list[int] = rng.sample(range(len(pool)), args.start)
    predictor, model_dir, rounds, line = None, None, [], []
    line_base_size = 0  # the annotations of the last run from the base model (training_run.rebase_due)
    while True:
        picked = taken[-args.step:] if predictor is not None else taken
        saved = kept = None
        if predictor is not None:  # what the serving model suggested for the sentences the annotator now does
            shown = predictor.predict_tags([pool[i].tokens for i in picked])
            saved, kept = shown_and_kept([pool[i].tags for i in picked], shown)
        warm = mode == "warm" and model_dir is not None and not rebase_due(warm_settings, len(taken), line_base_size)
        recipe = warm_recipe(warm_settings, config, model_dir) if warm else config
        line_base_size = line_base_size if warm else len(taken)
        started = time.perf_counter()
        model_dir = train_model([pool[i] for i in taken], labels, recipe, work / f"{strategy}-{mode}-{len(taken)}")\
            .model_dir
        train_s = time.perf_counter() - started
        line = [*line, model_dir] if warm else [model_dir]
        served = averaged(line[-args.serve_average:], work / f"avg-{strategy}-{mode}-{len(taken)}")
        predictor = Predictor.load(served, threads=args.threads)
        f1 = evaluate_model(predictor, valid).overall.f1
        row = {"strategy": strategy, "mode": mode, "round": len(rounds), "annotations": len(taken),
               "f1": round(f1, 4), "work_saved": None if saved is None else round(saved, 4),
               "kept_exactly": None if kept is None else round(kept, 4), "train_s": round(train_s, 1),
               "started_from": "warm start" if warm else "base model"}
        rounds.append(row)
        print(json.dumps(row), file=log, flush=True)
        if len(taken) >= args.until:
            if args.picks:  # the pool indices in the order annotated, to train on the same sentences elsewhere
                args.picks.with_name(f"{args.picks.stem}-{strategy}-{mode}.json").write_text(json.dumps(taken))
            return rounds
        taken += pick(strategy, predictor, pool, set(taken), min(args.step, args.until - len(taken)), rng,
                      args.candidates, args.beta)


def plot(runs: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, rounds in runs.items():
        line, = axis.plot([r["annotations"] for r in rounds], [r["f1"] for r in rounds], marker="o", label=name)
        based = [r for r in rounds if r.get("started_from") == "base model"]  # rings: the runs from the base model
        axis.scatter([r["annotations"] for r in based], [r["f1"] for r in based], s=110, facecolors="none",
                     edgecolors=line.get_color(), linewidths=1.5)
    axis.plot([], [], "o", markersize=9, markerfacecolor="none", markeredgecolor="grey", label="from the base model")
    axis.set_xlabel("annotated sentences")
    axis.set_ylabel("F1 on restaurantvalid.bio")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--strategies", nargs="+", default=["random", "doubt"], choices=STRATEGIES)
    parser.add_argument("--modes", nargs="+", default=["warm"], choices=["warm", "scratch"])
    parser.add_argument("--start", type=int, default=50)
    parser.add_argument("--step", type=int, default=50)
    parser.add_argument("--until", type=int, default=1500, help="stop after this many annotations")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warm-epochs", type=int, default=Settings.warm_start_epochs)
    parser.add_argument("--warm-min-steps", type=int, default=Settings.warm_start_min_steps)
    parser.add_argument("--warm-lr", type=float, default=Settings.warm_start_lr)
    parser.add_argument("--rebase-growth", type=float, default=Settings.warm_start_rebase_growth,
                        help="warm: back to the base model when the annotations have grown this many times since the "
                             "last run from it (0: never)")
    parser.add_argument("--candidates", type=int, default=CANDIDATES,
                        help="pool sentences a doubt strategy scores per round, a random sample (0: the whole pool)")
    parser.add_argument("--beta", type=float, default=1.0,
                        help="doubt-sampled: a candidate's chance of a pick grows as its surprisal ** beta")
    parser.add_argument("--serve-average", type=int, default=1, metavar="K",
                        help="serve (evaluate, pick with) the mean weights of the warm line's last K versions; the "
                             "next warm start continues from the last version's own weights")
    parser.add_argument("--plot", type=Path, help="PNG of F1 against annotations")
    parser.add_argument("--picks", type=Path, help="write each run's annotated pool indices to PICKS-<run>.json")
    parser.add_argument("--recipe-option", action="append", default=[], metavar="KEY=JSON",
                        help="override a TrainingConfig field of every retrain, e.g. carve_fraction=0.0 (for tuning)")
    parser.add_argument("--quick", action="store_true", help="tiny model, synthetic sentences, 3 rounds (CI)")
    args = parser.parse_args(argv)
    if args.serve_average < 1:
        parser.error(f"--serve-average must be 1 or more (versions to average), not {args.serve_average}")
    args.recipe = recipe_options(args.recipe_option)
    with tempfile.TemporaryDirectory(prefix="ner-bench-loop-") as tmp:
        work = Path(tmp)
        if args.quick:
            from tests.conftest import TINY_RECIPE
            from tests.helpers.synthetic import bio_labels, restaurant_examples
            from tests.helpers.tiny_model import build_tiny_model

            pool, valid = restaurant_examples(300, seed=1), restaurant_examples(60, seed=2)
            base = str(build_tiny_model(work / "tiny", [e.text for e in pool + valid]))
            labels = bio_labels()
            args.start, args.step, args.until = 20, 20, min(args.until, 60)
            args.recipe = {**{k: v for k, v in TINY_RECIPE.items() if k != "threads"}, **args.recipe}
        else:
            pool, valid, base, labels = read_examples(TRAIN_FILE), read_examples(VALID_FILE), stand_in_model(), BIO_LABELS
        runs = {f"{s}+{m}": run(s, m, pool, valid, base, list(labels), args, work, sys.stdout)
                for s in args.strategies for m in args.modes}
    if args.plot:
        plot(runs, args.plot)

    def at(rounds: list[dict], n: int) -> dict | None:
        return next((r for r in rounds if r["annotations"] >= n), None)

    print_result({"bench": "annotation_loop", "seed": args.seed, "quick": args.quick, "start": args.start,
                  "step": args.step, "until": args.until, "candidates": args.candidates, "warm_lr": args.warm_lr,
                  "warm_min_steps": args.warm_min_steps, "rebase_growth": args.rebase_growth, "threads": args.threads,
                  "beta": args.beta, "serve_average": args.serve_average, "recipe": args.recipe,
                  "plot": str(args.plot) if args.plot else None,
                  "final": {name: rounds[-1] for name, rounds in runs.items()},
                  "at_500": {name: (at(rounds, 500) or {}).get("f1") for name, rounds in runs.items()},
                  "at_1000_kept_exactly": {name: (at(rounds, 1000) or {}).get("kept_exactly")
                                           for name, rounds in runs.items()}, "machine": machine()})


if __name__ == "__main__":
    main()
