"""The review's measurement (issue 33): 2,000 annotated MIT training sentences, a known 5% of them corrupted (type
swaps, boundary shifts by one word, deleted spans, spurious spans on plain words, in equal parts; seeded), the
review run over them (``backend.training.review.review_examples``, k-fold, each fold's model trained by
``train_model`` with the project's recipe on the stand-in model), and its ranking scored against the corrupted
tasks: precision among the top N (N = the number corrupted) and recall within the top 2N, overall and per kind,
beside two baselines from the same run: random order, and the serving model's disagreement count (a model trained on
all 2,000, corrupted ones included, counting the spans where it reads otherwise: no out-of-sample scoring).
restaurantvalid.bio is never trained on here.

Prints JSON lines: the machine, one line per ranking, the cost (the review's wall and CPU seconds, and its share of
one training run on the 2,000), and the 20 top-ranked tasks that were not corrupted, for a person to inspect.
``--quick``: the tests' tiny model on synthetic sentences (for CI; its figures mean nothing).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BIO_LABELS,
    TRAIN_FILE,
    machine,
    print_result,
    read_examples,
    recipe_options,
    stand_in_model,
)

from backend.data.review import findings, word_spans
from backend.data.spans import Example
from backend.model.config import TrainingConfig
from backend.training.review import review_examples, score_with_model

KINDS = ("type swap", "boundary shift", "deleted span", "spurious span")


def _tags_of(spans: list[tuple[int, int, str]], n: int) -> list[str]:
    tags = ["O"] * n
    for start, end, kind in spans:
        for i in range(start, end):
            tags[i] = ("B-" if i == start else "I-") + kind
    return tags


def corrupt(example: Example, kind: str, rng: random.Random, types: list[str]) -> Example | None:
    """``example`` with one error of ``kind``; None when it cannot take one (no span, no plain word...)."""
    spans, n = word_spans(example.tags), len(example.tags)
    taken = {i for start, end, _ in spans for i in range(start, end)}
    if kind == "type swap" and spans:
        at = rng.randrange(len(spans))
        start, end, old = spans[at]
        spans[at] = (start, end, rng.choice([t for t in types if t != old]))
    elif kind == "boundary shift" and spans:
        at = rng.randrange(len(spans))
        start, end, label = spans[at]
        moves = [m for m, ok in (
            ((start - 1, end), start > 0 and start - 1 not in taken),   # one word more on the left
            ((start, end + 1), end < n and end not in taken),           # one word more on the right
            ((start + 1, end), end - start > 1),                        # one word less on the left
            ((start, end - 1), end - start > 1)) if ok]                 # one word less on the right
        if not moves:
            return None
        spans[at] = (*rng.choice(moves), label)
    elif kind == "deleted span" and spans:
        spans.pop(rng.randrange(len(spans)))
    elif kind == "spurious span":
        plain = [i for i in range(n) if i not in taken]
        if not plain:
            return None
        i = rng.choice(plain)
        spans = sorted([*spans, (i, i + 1, rng.choice(types))])
    else:
        return None
    return Example(example.text, example.words, _tags_of(spans, n), example.source)


def corrupt_share(examples: list[Example], share: float, seed: int) -> dict[int, str]:
    """Corrupt ``share`` of ``examples`` in place, the kinds in equal parts; returns {index: kind}."""
    rng = random.Random(seed)
    types = sorted({s[2] for e in examples for s in word_spans(e.tags)})
    count = round(share * len(examples)) // len(KINDS) * len(KINDS)
    order = list(range(len(examples)))
    rng.shuffle(order)
    corrupted: dict[int, str] = {}
    for kind in KINDS:
        for index in order:
            if sum(1 for k in corrupted.values() if k == kind) == count // len(KINDS):
                break
            if index in corrupted:
                continue
            changed = corrupt(examples[index], kind, rng, types)
            if changed is not None and changed.tags != examples[index].tags:
                examples[index] = changed
                corrupted[index] = kind
    return corrupted


def measure(name: str, ranking: list[int], corrupted: dict[int, str], **extra) -> dict:
    n = len(corrupted)
    top_n, top_2n = set(ranking[:n]), set(ranking[:2 * n])
    per_kind = {}
    for kind in KINDS:
        mine = {i for i, k in corrupted.items() if k == kind}
        per_kind[kind] = {"corrupted": len(mine), "recall_at_n": round(len(mine & top_n) / len(mine), 3),
                          "recall_at_2n": round(len(mine & top_2n) / len(mine), 3),
                          "share_of_top_n": round(len(mine & top_n) / n, 3)}
    return {"ranking": name, "n": n, "precision_at_n": round(len(top_n & set(corrupted)) / n, 3),
            "recall_at_2n": round(len(top_2n & set(corrupted)) / n, 3), "per_kind": per_kind, **extra}


def cpu_seconds() -> float:
    return time.process_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="annotated training sentences (first N of the file)")
    parser.add_argument("--share", type=float, default=0.05, help="share corrupted")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--recipe", nargs="*", default=[], help="TrainingConfig overrides KEY=JSON, e.g. epochs=3")
    parser.add_argument("--quick", action="store_true", help="tiny model, synthetic sentences (CI)")
    parser.add_argument("--dump", type=Path, help="also write every sentence's out-of-sample scores to this JSON "
                                                   "file (words, tags, corruption, per-word label log-probabilities)")
    args = parser.parse_args()
    print_result({"machine": machine(), "args": {key: str(value) if isinstance(value, Path) else value
                                                 for key, value in vars(args).items()}})

    if args.quick:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.helpers.synthetic import bio_labels, restaurant_examples
        from tests.helpers.tiny_model import build_tiny_model

        examples = restaurant_examples(min(args.n, 200), seed=args.seed)
        work = Path(tempfile.mkdtemp(prefix="bench-review-tiny-"))
        base, labels = str(build_tiny_model(work, [e.text for e in examples])), bio_labels()
    else:
        examples, base, labels = read_examples(TRAIN_FILE, args.n), stand_in_model(), BIO_LABELS
    corrupted = corrupt_share(examples, args.share, args.seed)
    recipe = TrainingConfig(base_model=base, **recipe_options(args.recipe))
    keyed = list(enumerate(examples))

    with tempfile.TemporaryDirectory(prefix="bench-review-") as work:
        started, cpu = time.perf_counter(), cpu_seconds()
        kept: dict[int, object] = {}

        def scoring(model_dir, held):  # the review's own scorer, its scores kept for the earlier rankings below
            scores = score_with_model(model_dir, held)
            kept.update({id(example): score for example, score in zip(held, scores)})
            return scores

        reviews = review_examples(keyed, labels, recipe, Path(work) / "folds", args.folds, score_fn=scoring)
        review_s, review_cpu = time.perf_counter() - started, cpu_seconds() - cpu
        review_rank = [item["task"] for item in reviews]
        if args.dump:
            args.dump.write_text(json.dumps({"labels": list(labels), "sentences": [
                {"index": i, "words": examples[i].tokens, "tags": examples[i].tags, "corrupted": corrupted.get(i),
                 "fold": item["fold"], "rows": [[round(v, 4) for v in row] for row in kept[id(examples[i])].rows]}
                for i, item in ((item["task"], item) for item in reviews)]}))
        print_result(measure("review (out-of-sample, the most doubtful word's log-ratio, per-label thresholds)",
                             review_rank, corrupted, folds=args.folds, seconds=round(review_s, 1)))
        # the same folds' scores ranked as the review's earlier versions did: the most doubtful word's plain
        # log-ratio (second), the whole sequences' log-ratio (first, 695b9f9)
        for name, measure_of in (("the most doubtful word's plain log-ratio", lambda s: s.worst_word),
                                 ("whole-sequence log-ratio", lambda s: s.log_ratio)):
            rank = sorted(range(len(examples)), key=lambda i: (-measure_of(kept[id(examples[i])]), i))
            print_result(measure(f"review (out-of-sample, {name})", rank, corrupted, folds=args.folds))

        from backend.model.train import train_model

        started, cpu = time.perf_counter(), cpu_seconds()
        result = train_model(examples, labels, recipe, Path(work) / "serving")
        train_s, train_cpu = time.perf_counter() - started, cpu_seconds() - cpu
        scored = score_with_model(result.model_dir, examples)
    disagreements = [len(findings(example, score.best_tags)) for example, score in zip(examples, scored)]
    rng = random.Random(args.seed)
    ties = [rng.random() for _ in examples]
    serving_rank = sorted(range(len(examples)), key=lambda i: (-disagreements[i], ties[i]))
    random_rank = list(range(len(examples)))
    random.Random(args.seed + 1).shuffle(random_rank)

    print_result(measure("random order", random_rank, corrupted))
    print_result(measure("serving model's disagreement count (in-sample)", serving_rank, corrupted))
    print_result({"cost": {"review_s": round(review_s, 1), "review_cpu_s": round(review_cpu, 1),
                           "training_run_s": round(train_s, 1), "training_run_cpu_s": round(train_cpu, 1),
                           "review_share_of_training_run": round(review_s / train_s, 2),
                           "sentences": len(examples), "folds": args.folds,
                           "epochs_per_fold": result.epochs_run}})
    by_task = {item["task"]: item for item in reviews}
    clean_top = [i for i in review_rank if i not in corrupted][:20]
    print_result({"inspect": [{"task": i, "rank": review_rank.index(i) + 1, "score": by_task[i]["score"],
                               "words": " ".join(f"{w.text}/{t}" if t != "O" else w.text
                                                 for w, t in zip(examples[i].words, examples[i].tags)),
                               "findings": by_task[i]["findings"]} for i in clean_top]})


if __name__ == "__main__":
    main()
