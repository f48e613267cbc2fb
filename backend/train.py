"""Fine-tuning a token-classification model on word-level examples: one function the CLI, the HTTP backend and
the benchmarks all call, writing one self-contained model version (weights, tokenizer, label map, metrics.json).
"""
from __future__ import annotations

import json
import math
import platform
import random
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import torch

from backend.device import Placement, matmul_precision, set_threads, training_placement
from backend.dropout import use_fast_dropout
from backend.encoding import encode_word_lists, label_batch, length_grouped_batches, pad_batch
from backend.metrics import Scores, score_tags
from backend.predict import Predictor
from backend.spans import Example, has_entities
from backend.splits import split_examples


@dataclass
class TrainingConfig:
    """The training recipe. Defaults are the project's default recipe (see bench/README.md for the evidence)."""

    base_model: str = "distilbert-base-uncased"  # hub id or local folder, loaded with from_pretrained
    epochs: int | None = None  # None: `default_epochs`, raised on small data until `min_steps` optimizer steps
    lr: float = 3e-4  # peak learning rate of the linear warm-up / linear decay schedule
    batch_size: int | None = None  # None: 32, or `small_data_batch_size` below `small_data_size` training windows
    small_data_batch_size: int = 16
    max_batch_tokens: int | None = 768  # cap on a batch's padded size (texts x longest subwords): bounds a step's memory
    small_data_size: int = 2000
    max_length: int = 128  # subwords per window, special tokens included; longer texts become overlapping windows
    seed: int = 42  # set before the classifier head is created, so a run is reproducible
    device: str = "auto"  # "auto" (CUDA if present, else CPU), "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"  # "auto", "fp32", "bf32", "bf16", "fp16" (see backend.device.training_placement)
    validation_fraction: float = 0.1  # carved from the examples when no validation set is given
    early_stopping_patience: int = 3  # stop after this many epochs without a better F1 (0: never), once past min_steps
    threads: int | None = None  # torch intra-op threads; None = PyTorch's default
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    default_epochs: int = 5
    min_steps: int = 300  # small data needs many optimizer steps to learn at all (../shared/baseline.md)
    max_epochs: int = 40  # upper bound for the automatic epoch count on tiny data
    freeze_embeddings: bool = True  # keep the embedding block fixed: no dense update of the vocabulary matrix
    dropout: float | None = None  # probability for every dropout of the model (None: the model's own)
    # Keep the lowest N transformer layers fixed: no backward pass through them. Faster (2 of 6 layers: +32%
    # samples/s) but it cost full-data F1 over three seeds (0.793 vs 0.801 mean), so the default trains every layer.
    frozen_layers: int = 0
    head_lr: float | None = None  # learning rate of the new classifier head (None: `lr`)
    eval_batch_size: int = 64


@dataclass
class TrainingProgress:
    """Where a running training is: optimizer ``step`` of ``total_steps``, 1-based ``epoch``, seconds so far."""

    step: int
    total_steps: int
    epoch: int
    elapsed_s: float


@dataclass
class TrainingResult:
    """The saved version's folder and the metrics record written there as metrics.json."""

    model_dir: Path
    metrics: dict = field(default_factory=dict)


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def planned_epochs(config: TrainingConfig, steps_per_epoch: int) -> int:
    """``config.epochs`` when set; otherwise enough epochs for ``min_steps`` steps (at least ``default_epochs``).

    >>> planned_epochs(TrainingConfig(), steps_per_epoch=216), planned_epochs(TrainingConfig(), steps_per_epoch=8)
    (5, 38)
    """
    if config.epochs is not None:
        return config.epochs
    needed = math.ceil(config.min_steps / max(steps_per_epoch, 1))
    return max(config.default_epochs, min(needed, config.max_epochs))


def default_batch_size(config: TrainingConfig, n_windows: int) -> int:
    """32, or ``small_data_batch_size`` on small data: it reaches ``min_steps`` with half the compute of 32.

    >>> default_batch_size(TrainingConfig(), 500), default_batch_size(TrainingConfig(), 7000)
    (16, 32)
    """
    return config.small_data_batch_size if n_windows < config.small_data_size else 32


def _label_ids(examples: Sequence[Example], bio_labels: Sequence[str]) -> list[list[int]]:
    index = {tag: i for i, tag in enumerate(bio_labels)}
    rows = []
    for n, example in enumerate(examples):
        unknown = sorted({tag for tag in example.tags if tag not in index})
        if unknown:
            where = example.source or f"example {n + 1}"
            raise ValueError(
                f"{where}: tags {unknown} are not in the label list {list(bio_labels)}; "
                "add their labels to the label config or fix the data"
            )
        rows.append([index[tag] for tag in example.tags])
    return rows


def _freeze(model, config: TrainingConfig) -> None:
    """Mark the parameters the recipe keeps fixed (the embedding block if asked, the lowest ``frozen_layers``
    transformer layers); they get no gradient, no optimizer state, no update."""
    if config.freeze_embeddings:
        # The vocabulary matrix, plus the position/type embeddings and their LayerNorm ("...embeddings...." in
        # BERT, DistilBERT and RoBERTa alike): with all of them fixed no gradient is computed below layer 0.
        model.get_input_embeddings().weight.requires_grad_(False)
        for name, parameter in model.named_parameters():
            if re.search(r"(^|\.)embeddings\.", name):
                parameter.requires_grad_(False)
    if config.frozen_layers:
        # Layer parameters are named "...layer.<i>...." in BERT, DistilBERT and RoBERTa alike.
        for name, parameter in model.named_parameters():
            match = re.search(r"\blayer\.(\d+)\.", name)
            if match and int(match.group(1)) < config.frozen_layers:
                parameter.requires_grad_(False)


def _set_dropout(model, probability: float | None) -> None:
    """Give every dropout of the model (hidden, attention, classifier) the probability ``probability``."""
    if probability is None:
        return
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = probability


def _optimizer(model, config: TrainingConfig, placement: Placement) -> torch.optim.Optimizer:
    head = set(id(p) for p in model.get_output_embeddings().parameters()) if model.get_output_embeddings() else set()
    head |= {id(p) for name, p in model.named_parameters() if name.startswith("classifier.")}
    buckets: dict[tuple[bool, bool], list] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        # Biases and normalisation weights are not decayed (standard for BERT fine-tuning).
        buckets.setdefault((id(parameter) in head, parameter.ndim >= 2), []).append(parameter)
    groups = [
        {"params": params, "weight_decay": config.weight_decay if decayed else 0.0,
         "lr": (config.head_lr or config.lr) if is_head else config.lr}
        for (is_head, decayed), params in buckets.items()
    ]
    # The fused kernel does the whole update in one pass per tensor: less Python per step than foreach.
    try:
        return torch.optim.AdamW(groups, lr=config.lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=config.lr)


def _schedule(optimizer, total_steps: int, warmup_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def carve_validation(examples: Sequence[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """Deterministic (train, validation) split keyed by each example's text: duplicates stay on one side."""
    if fraction <= 0 or len(examples) < 2:
        return list(examples), []
    return split_examples(((example.text, example) for example in examples), fraction)


def train_model(
    examples: Sequence[Example],
    bio_labels: Sequence[str],
    config: TrainingConfig,
    out_dir: Path,
    validation: Sequence[Example] | None = None,
    progress: Callable[[TrainingProgress], None] | None = None,
) -> TrainingResult:
    """Fine-tune ``config.base_model`` on ``examples`` and save the best epoch (by validation F1) in ``out_dir``.

    ``bio_labels`` is the label list (``O`` first, then ``B-x``/``I-x``); every tag of every example must be in
    it. Without ``validation`` a deterministic part of ``examples`` is held out for choosing the epoch. Only
    ``out_dir`` is written: model.safetensors, config.json (id2label), tokenizer files and metrics.json.
    """
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    started = time.perf_counter()
    set_threads(config.threads)
    bio_labels = list(bio_labels)
    validation_given = validation is not None
    if validation is None:
        train_set, validation = carve_validation(examples, config.validation_fraction)
    else:
        train_set = list(examples)
    scored_on = "the given validation set" if validation_given else "validation carved from the training data"
    if not validation:
        scored_on = "nothing: there is no validation set, so the last epoch is kept"
    elif not has_entities(validation):
        # Every epoch would score F1 0 on it, so "the best epoch" would be the first, barely trained one. Keep the
        # last epoch instead; a carved part goes back into training (its texts still teach what is not an entity).
        scored_on = ("nothing: the given validation set has no entities, so the last epoch is kept" if validation_given
                     else "nothing: the carved validation part had no entities, so it was trained on and the last "
                          "epoch is kept")
        if not validation_given:
            train_set = list(examples)
        validation = []
    train_set = [e for e in train_set if e.words]
    if not train_set:
        raise ValueError("no training examples with words: annotate some texts first")
    train_labels = _label_ids(train_set, bio_labels)

    placement = training_placement(config.device, config.precision)
    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    windows = encode_word_lists(tokenizer, [e.tokens for e in train_set], config.max_length)
    window_labels = [train_labels[w.sentence] for w in windows]

    # The seed goes first: from_pretrained draws the new classifier head from torch's generator.
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    model = AutoModelForTokenClassification.from_pretrained(
        config.base_model,
        num_labels=len(bio_labels),
        id2label=dict(enumerate(bio_labels)),
        label2id={tag: i for i, tag in enumerate(bio_labels)},
    )
    model.to(placement.device)
    _freeze(model, config)
    _set_dropout(model, config.dropout)
    if placement.device.type == "cpu":
        use_fast_dropout(model)  # PyTorch's CPU dropout is a sizeable share of a step (backend/dropout.py)

    batch_size = config.batch_size or default_batch_size(config, len(windows))
    # Every epoch's batches are drawn before the first step, so the step count (and with it the learning-rate
    # schedule and the progress total) is exact, batches split by the token cap included.
    rng = random.Random(config.seed)
    lengths = [len(w.input_ids) for w in windows]
    epoch_batches = [length_grouped_batches(lengths, batch_size, rng, max_tokens=config.max_batch_tokens)]
    epochs = planned_epochs(config, len(epoch_batches[0]))
    epoch_batches += [length_grouped_batches(lengths, batch_size, rng, max_tokens=config.max_batch_tokens)
                      for _ in range(1, epochs)]
    total_steps = sum(len(batches) for batches in epoch_batches)
    optimizer = _optimizer(model, config, placement)
    scheduler = _schedule(optimizer, total_steps, config.warmup_ratio)
    scaler = torch.amp.GradScaler("cuda") if placement.precision == "fp16" else None
    autocast_on = placement.precision in ("bf16", "fp16")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    history: list[dict] = []
    best_f1, best_epoch, best_state, best_scores, stale = -1.0, 0, None, None, 0
    step, windows_seen = 0, 0
    train_started = time.perf_counter()
    with matmul_precision(placement):  # bf32: the matrix multiplies on the CPU's bf16 units
        for epoch, batches in enumerate(epoch_batches, start=1):
            model.train()
            loss_sum, loss_count = 0.0, 0
            for batch_indices in batches:
                batch = [windows[i] for i in batch_indices]
                ids, mask = pad_batch(batch, pad_id)
                labels = label_batch(batch, [window_labels[i] for i in batch_indices], ids.shape[1])
                ids, mask, labels = (t.to(placement.device) for t in (ids, mask, labels))
                with torch.autocast(placement.device.type, dtype=placement.dtype, enabled=autocast_on):
                    logits = model(input_ids=ids, attention_mask=mask).logits
                loss = torch.nn.functional.cross_entropy(
                    logits.float().view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100
                )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                scheduler.step()
                step += 1
                windows_seen += len(batch)
                loss_sum += loss.item()
                loss_count += 1
                if progress is not None:
                    progress(TrainingProgress(step, total_steps, epoch, time.perf_counter() - started))

            record = {"epoch": epoch, "loss": loss_sum / max(loss_count, 1), "elapsed_s": time.perf_counter() - started}
            if validation:
                predictor = Predictor(model, tokenizer, placement, batch_size=config.eval_batch_size,
                                      max_length=config.max_length)
                scores = _score(predictor, validation)
                record["f1"] = scores.overall.f1
                if scores.overall.f1 > best_f1:
                    best_f1, best_epoch, best_scores, stale = scores.overall.f1, epoch, scores, 0
                    # Keep the best weights in memory instead of saving every epoch; frozen ones never change.
                    best_state = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
                else:
                    stale += 1
            history.append(record)
            # Never stop before the minimum number of steps: on small data the early epochs are noisy, not done.
            patience_over = config.early_stopping_patience and stale >= config.early_stopping_patience
            if validation and patience_over and step >= config.min_steps:
                break
    train_time = time.perf_counter() - train_started

    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    else:
        best_epoch = len(history)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.device("cpu"), dtype=torch.float32)
    model.save_pretrained(out_dir)
    # The version predicts with the windows it was trained and scored on: a model fine-tuned on 128-subword windows
    # labels long texts worse in 512-subword ones (30-sentence documents: F1 0.59 vs 0.65 in 128).
    tokenizer.model_max_length = config.max_length
    tokenizer.save_pretrained(out_dir)

    metrics = {
        "overall": best_scores.to_dict()["overall"] if best_scores else None,
        "per_entity": best_scores.to_dict()["per_entity"] if best_scores else {},
        "scored_on": scored_on,
        "train_size": len(train_set),
        "validation_size": len(validation or []),
        "train_windows": len(windows),
        "epochs_planned": epochs,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "optimizer_steps": step,
        "batch_size": batch_size,
        "train_time_s": round(train_time, 3),
        "total_time_s": round(time.perf_counter() - started, 3),
        # Sentences (windows) processed per second of training wall time, per-epoch validation included.
        "samples_per_s": round(windows_seen / train_time, 3) if train_time > 0 else None,
        "history": history,
        "bio_labels": bio_labels,
        "config": asdict(config),
        "device": str(placement.device),
        "precision": placement.precision,
        "precision_reason": placement.reason,
        "threads": torch.get_num_threads(),
        "versions": library_versions(),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return TrainingResult(out_dir, metrics)


def _score(predictor: Predictor, examples: Sequence[Example]) -> Scores:
    predicted = predictor.predict_tags([e.tokens for e in examples])
    return score_tags([e.tags for e in examples], predicted)


def evaluate_model(model_dir: Path | Predictor, examples: Sequence[Example]) -> Scores:
    """Word-level scores of a saved version (or a loaded Predictor) on gold examples."""
    predictor = model_dir if isinstance(model_dir, Predictor) else Predictor.load(model_dir)
    return _score(predictor, examples)
