"""Prediction speed: this project's Predictor versus transformers' pipeline("ner", aggregation_strategy="first"),
on the same fine-tuned model and the same validation texts, with each side's word-level F1.

    python bench/predict_speed.py --model DIR    # a model saved by bench/accuracy.py --save-model DIR
    python bench/predict_speed.py                # trains a quick model first (2000 sentences, 2 epochs)
    python bench/predict_speed.py --quick        # CI smoke run, under 2 minutes

Last output line: one JSON object {"pipeline_single", "pipeline_batched", "ours", "ours_argmax"}. For
*_single and ours*, p50_ms/p95_ms are the latency of one text per call; for pipeline_batched, of one call with a
batch of 32. "ours" decodes the best valid BIO sequence (the default); "ours_argmax" takes each word's top label,
the pipeline's rule, so its spans should equal the pipeline's. sentences_per_s of the batched sides is the
median of three whole passes over the texts; the single-text latencies of the three sides are measured on the same
texts, interleaved text by text.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    BIO_LABELS, TRAIN_FILE, VALID_FILE, machine, print_result, read_examples, spans_to_word_tags, stand_in_model,
)


def _latencies(call, items) -> list[float]:
    times = []
    for item in items:
        started = time.perf_counter()
        call(item)
        times.append((time.perf_counter() - started) * 1000)
    return times


def _median_pass(run, repeats: int = 3):
    """The median wall time of ``repeats`` calls of ``run`` (a whole pass over the texts), and the first call's
    output: the first pass over new batch shapes is slower, and this machine is shared."""
    seconds, outputs = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        outputs.append(run())
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), outputs[0]


def _summary(total_s: float, n: int, latencies_ms: list[float], f1: float, **extra) -> dict:
    ordered = sorted(latencies_ms)
    return {"sentences_per_s": round(n / total_s, 1), "p50_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 2), "f1": round(f1, 4), **extra}


def measure(model_dir: Path, texts_n: int | None, threads: int, precision: str) -> dict:
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    from backend.model.metrics import score_tags
    from backend.model.predict import Predictor

    torch.set_num_threads(threads)
    valid = read_examples(VALID_FILE, texts_n)
    texts = [e.text for e in valid]  # tokens joined by single spaces: the words' offsets are known exactly
    gold = [e.tags for e in valid]

    def f1_of(span_lists) -> float:
        return score_tags(gold, [spans_to_word_tags(e.words, spans) for e, spans in zip(valid, span_lists)]).overall.f1

    reference = pipeline("ner", model=AutoModelForTokenClassification.from_pretrained(model_dir),
                         tokenizer=AutoTokenizer.from_pretrained(model_dir), aggregation_strategy="first", device="cpu")
    reference(texts[0])  # warm-up
    predictors = {decoding: Predictor.load(model_dir, precision=precision, threads=threads, decoding=decoding)
                  for decoding in ("bio", "argmax")}
    for predictor in predictors.values():
        predictor.predict(texts[:32])  # warm-up

    # One text per call, the three sides interleaved text by text, so the machine's noise hits them alike.
    single_out, single_ms = [], []
    ours_single_ms: dict[str, list[float]] = {decoding: [] for decoding in predictors}
    for text in texts:
        t = time.perf_counter()
        single_out.append(reference(text))
        single_ms.append((time.perf_counter() - t) * 1000)
        for decoding, predictor in predictors.items():
            ours_single_ms[decoding] += _latencies(predictor.predict, [[text]])
    single_s = sum(single_ms) / 1000
    as_spans = lambda out: [[(e["start"], e["end"], e["entity_group"]) for e in entities] for entities in out]  # noqa: E731

    batches = [texts[i:i + 32] for i in range(0, len(texts), 32)]

    batched_s, batched_out = _median_pass(
        lambda: [entities for batch in batches for entities in reference(batch, batch_size=32)])
    batch_ms = _latencies(lambda batch: reference(batch, batch_size=32), batches)

    def ours(decoding: str) -> dict:
        predictor = predictors[decoding]
        total_s, out = _median_pass(lambda: predictor.predict(texts))
        batch_ms = _latencies(predictor.predict, batches)
        spans = [[(s.start, s.end, s.label) for s in p.spans] for p in out]
        agreement = sum(a == b for a, b in zip(spans, as_spans(batched_out))) / len(texts)
        return _summary(total_s, len(texts), ours_single_ms[decoding], f1_of(spans), batch_p50_ms=round(statistics.median(batch_ms), 2),
                        batch_size=predictor.batch_size, precision=predictor.placement.precision, decoding=decoding,
                        agreement_with_pipeline=round(agreement, 4))

    return {
        "pipeline_single": _summary(single_s, len(texts), single_ms, f1_of(as_spans(single_out))),
        "pipeline_batched": _summary(batched_s, len(texts), batch_ms, f1_of(as_spans(batched_out)), batch_size=32),
        # The default: the best valid BIO sequence. ours_argmax: each word's top label, the pipeline's own rule.
        "ours": ours("bio"),
        "ours_argmax": ours("argmax"),
        "texts": len(texts), "threads": threads, "model": str(model_dir), "machine": machine(),
    }


def _train_quick_model(out: Path, n: int, epochs: int, threads: int) -> None:
    from backend.model.config import TrainingConfig
    from backend.model.train import train_model

    config = TrainingConfig(base_model=stand_in_model(), epochs=epochs, threads=threads)
    train_model(read_examples(TRAIN_FILE, n), BIO_LABELS, config, out)


def quick_model(out: Path, n: int, epochs: int, threads: int) -> Path:
    """Train a model in a child process: training bounds its process's oneDNN caches (backend/model/device.py), and
    the server predicts in a process that never trains, as this one then does."""
    import multiprocessing

    child = multiprocessing.get_context("spawn").Process(target=_train_quick_model, args=(out, n, epochs, threads))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"training the quick model failed with exit code {child.exitcode}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a fine-tuned model folder (default: train one quickly)")
    parser.add_argument("--quick", action="store_true", help="200 texts; quick model on 400 sentences, 1 epoch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="auto", help="our predictor's precision (auto: bf16 only where native)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(args.model) if args.model else quick_model(
            Path(scratch) / "model", 400 if args.quick else 2000, 1 if args.quick else 2, args.threads)
        print_result(measure(model, 200 if args.quick else None, args.threads, args.precision))


if __name__ == "__main__":
    main()
