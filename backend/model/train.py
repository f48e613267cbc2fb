"""Fine-tuning a token-classification model on word-level examples: one function the CLI, the HTTP backend and
the benchmarks all call, writing one self-contained model version (weights, tokenizer, label map, metrics.json).

``train_model`` reads as its phases: the data (train set and the part that picks the epoch), the windows, the
model, the step plan, the epochs, the save. The recipe is ``backend.model.config.TrainingConfig``.
"""
from __future__ import annotations

import json
import logging
import math
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import torch

from backend.model.base_model import (BaseModelError, check_base_model, freeze, head_modules, load_token_classifier,
                                      load_tokenizer, same_subwords, window_limit)
from backend.model.config import TrainingConfig
from backend.model.device import (Placement, bound_onednn_caches, matmul_precision, set_threads,
                                  training_placement)
from backend.model.ranks import run_ranks
from backend.model.dropout import use_fast_dropout
from backend.model.encoding import encode_word_lists, label_batch, length_grouped_batches, pad_batch
from backend.model.metrics import Scores, score_tags
from backend.model.predict import Predictor
from backend.data.spans import Example, has_entities
from backend.data.splits import split_examples

log = logging.getLogger(__name__)

@dataclass
class TrainingProgress:
    """Where a running training is: optimizer ``step`` of ``total_steps``, 1-based ``epoch``, seconds so far."""

    step: int
    total_steps: int
    epoch: int
    elapsed_s: float


@dataclass
class TrainingResult:
    """What a training run made: the saved version's folder, the scores that picked its epoch, and how the run
    went. ``record()`` is what is written there as metrics.json.

    ``selection_scores`` are the best epoch's scores on the part that chose it (``scored_on`` says which; None when
    nothing could be scored). A version in the model store is judged by its manifest's scores instead, on the
    project's validation tasks.

    What the run made of its base model (backend/model/base_model.py): ``head`` ("new", "kept", "replaced") and
    ``head_note``; ``tokenization`` (the tokenizer, its word-start marker, whether it lower-cases);
    ``window_length`` (``config.max_length``, or less where the base's positions end sooner); ``notes``: every
    adaptation to the base and every knob that could not apply as asked, as logged.
    """

    model_dir: Path
    selection_scores: Scores | None
    scored_on: str
    train_size: int
    validation_size: int
    train_windows: int
    epochs_planned: int
    epochs_run: int
    best_epoch: int
    optimizer_steps: int
    batch_size: int
    frozen_layers: int  # the lowest transformer layers kept fixed (the recipe's, or its default for this data,
    # at most the base's layer count; 0 where the base's structure has no layer stack: ``notes`` says so)
    train_time_s: float
    total_time_s: float
    samples_per_s: float | None  # windows per second of training wall time, per-epoch validation included
    history: list[dict]
    config: TrainingConfig
    device: str
    precision: str
    precision_reason: str
    threads: int
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str = ""
    window_length: int = 0
    head: str = "new"
    head_note: str = ""
    tokenization: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """The JSON of metrics.json."""
        record = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "model_dir"}
        record["selection_scores"] = self.selection_scores.to_dict() if self.selection_scores else None
        record["config"] = asdict(self.config)
        return record


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


def default_frozen_layers(config: TrainingConfig, n_windows: int) -> int:
    """``config.frozen_layers`` when set; otherwise the lowest layer fixed from ``small_data_size`` windows on.

    >>> default_frozen_layers(TrainingConfig(), 500), default_frozen_layers(TrainingConfig(), 7000)
    (0, 1)
    """
    if config.frozen_layers is not None:
        return config.frozen_layers
    return 0 if n_windows < config.small_data_size else 1


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


def _set_dropout(model, probability: float | None) -> None:
    """Give every dropout of the model (hidden, attention, classifier) the probability ``probability``."""
    if probability is None:
        return
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = probability


def _optimizer(model, config: TrainingConfig, placement: Placement) -> torch.optim.Optimizer:
    head = {id(p) for _, module in head_modules(model) for p in module.parameters()}
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


@dataclass
class _Data:
    """The examples a run trains on, the ones that pick its best epoch (maybe none), and which those are."""

    train_set: list[Example]
    validation: list[Example]
    scored_on: str


@dataclass
class _Plan:
    """Every epoch's batches, drawn before the first step, so the step count (and with it the learning-rate
    schedule and the progress total) is exact, batches split by the token cap included."""

    batch_size: int
    epoch_batches: list[list[list[int]]]

    @property
    def total_steps(self) -> int:
        return sum(len(batches) for batches in self.epoch_batches)


@dataclass
class _Fit:
    """How the epochs went: per-epoch records, the best epoch and its scores, steps and windows seen."""

    model: torch.nn.Module  # the trained model itself (not accelerate's wrapper), holding the best epoch's weights
    history: list[dict]
    best_epoch: int
    best_scores: Scores | None
    steps: int
    windows_seen: int
    train_time: float


def train_model(
    examples: Sequence[Example],
    bio_labels: Sequence[str],
    config: TrainingConfig,
    out_dir: Path,
    validation: Sequence[Example] | None = None,
    progress: Callable[[TrainingProgress], None] | None = None,
) -> TrainingResult:
    """Fine-tune ``config.base_model`` on ``examples`` and save the last epoch, or the best one by F1 on
    ``validation`` (or on the ``config.carve_fraction`` of ``examples`` held out for it), in ``out_dir``.

    ``bio_labels`` is the label list (``O`` first, then ``B-x``/``I-x``); every tag of every example must be in
    it. Only ``out_dir`` is written: model.safetensors, config.json (id2label), tokenizer files and metrics.json.

    Any base with a token-classification head in transformers and a fast tokenizer trains (backend/model/
    base_model.py): its tokenizer reads pre-split words as running text, a head of other labels is replaced, the
    fixed parts are found in its structure, windows fit its positions; each adaptation is logged and kept in
    ``notes``. A base that cannot train is a ``BaseModelError`` naming what is wrong.

    With ``config.processes`` N > 1 the training runs as N processes (one per GPU, or over the CPU's cores, gloo),
    which this one starts and watches (``ranks.run_ranks``): the main one reports ``progress`` and saves; a process
    that dies stops the others, and the error says which (``ranks.RankDied``). The recipe means the same for any N.
    """
    if config.processes > 1:
        # N processes, one per GPU or over the CPU's cores; this one watches them (backend/model/ranks.py).
        return run_ranks(config.processes, _train, (examples, bio_labels, config, out_dir, validation), progress)
    return _train(examples, bio_labels, config, out_dir, validation, progress)


def _train(examples: Sequence[Example], bio_labels: Sequence[str], config: TrainingConfig, out_dir: Path,
           validation: Sequence[Example] | None, progress: Callable[[TrainingProgress], None] | None
           ) -> TrainingResult | None:
    """One process's part of ``train_model``: all of it with one process; with several, every rank prepares the
    same data, windows and step plan, trains on its share of each step's sentences, and the main process (rank 0)
    scores, reports progress, saves and returns the result (the others return None)."""
    started = time.perf_counter()
    bound_onednn_caches()  # a training process's memory (backend/model/device.py)
    placement = training_placement(config.device, config.precision)
    accelerator = _accelerator(placement, config)
    try:
        placement = Placement(accelerator.device, placement.precision, placement.reason)  # this process's device
        return _train_with(accelerator, placement, examples, bio_labels, config, out_dir, validation, progress,
                           started)
    finally:
        _release(accelerator)


def _train_with(accelerator, placement: Placement, examples, bio_labels, config: TrainingConfig, out_dir: Path,
                validation, progress, started: float) -> TrainingResult | None:
    set_threads(config.threads)
    main = accelerator.is_main_process
    if not main:  # the main process says what the run does and what the libraries report on loading the base
        logging.getLogger("backend.model").setLevel(logging.ERROR)
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
    bio_labels = list(bio_labels)
    data = _choose_data(examples, validation, config)
    train_labels = _label_ids(data.train_set, bio_labels)
    base_config = check_base_model(config.base_model)
    tokenizer, tokenization = load_tokenizer(config.base_model)
    notes: list[str] = []
    if tokenization.marker == "added":
        _note(notes, "the tokenizer marks the start of every pre-split word (add_prefix_space), as it marks a word "
                     "after a space in running text; the version is saved with it")
    elif tokenization.marker == "missing":
        _note(notes, "the tokenizer reads pre-split words unlike running text and has no switch for it "
                     "(add_prefix_space): trained as it reads them", warn=True)
    model, head = _build_model(config, base_config, bio_labels, placement)
    if head.outcome != "new":
        _note(notes, head.note)
    window_length = _window_length(model, config, notes)
    windows = encode_word_lists(tokenizer, [e.tokens for e in data.train_set], window_length)
    window_labels = [train_labels[w.sentence] for w in windows]
    frozen_layers, not_applied = freeze(model, config.freeze_embeddings, default_frozen_layers(config, len(windows)))
    for text in not_applied:
        _note(notes, text, warn=True)
    plan = _plan(config, windows)
    fit = _fit(accelerator, model, tokenizer, windows, window_labels, data.validation, plan, config, placement,
               progress if main else None, started, window_length)
    if not main:
        return None
    _save(fit.model, tokenizer, window_length, out_dir, [e.tokens for e in data.train_set[:50]])
    result = TrainingResult(
        model_dir=Path(out_dir),
        selection_scores=fit.best_scores,
        scored_on=data.scored_on,
        train_size=len(data.train_set),
        validation_size=len(data.validation),
        train_windows=len(windows),
        epochs_planned=len(plan.epoch_batches),
        epochs_run=len(fit.history),
        best_epoch=fit.best_epoch,
        optimizer_steps=fit.steps,
        batch_size=plan.batch_size,
        frozen_layers=frozen_layers,
        train_time_s=round(fit.train_time, 3),
        total_time_s=round(time.perf_counter() - started, 3),
        samples_per_s=round(fit.windows_seen / fit.train_time, 3) if fit.train_time > 0 else None,
        history=fit.history,
        config=config,
        device=str(placement.device),
        precision=placement.precision,
        precision_reason=placement.reason,
        threads=torch.get_num_threads(),  # of each process
        versions=library_versions(),
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        window_length=window_length,
        head=head.outcome,
        head_note=head.note,
        tokenization=tokenization.to_dict(),
        notes=notes,
    )
    (Path(out_dir) / "metrics.json").write_text(json.dumps(result.record(), indent=2) + "\n")
    return result


def _choose_data(examples: Sequence[Example], validation: Sequence[Example] | None, config: TrainingConfig) -> _Data:
    """The training set and the examples that pick the best epoch: ``validation`` when given, else a part carved
    from ``examples``. A part without entities picks nothing (every epoch would score 0 on it, so "the best" would
    be the first, barely trained one): the last epoch is kept, and a carved part goes back into training (its texts
    still teach what is not an entity)."""
    given = validation is not None
    if given:
        train_set, validation = list(examples), list(validation)
    else:
        train_set, validation = carve_validation(examples, config.carve_fraction)
    scored_on = "the given validation set" if given else "validation carved from the training data"
    if not validation:
        scored_on = "nothing: there is no validation set, so the last epoch is kept"
    elif not has_entities(validation):
        scored_on = ("nothing: the given validation set has no entities, so the last epoch is kept" if given
                     else "nothing: the carved validation part had no entities, so it was trained on and the last "
                          "epoch is kept")
        if not given:
            train_set = list(examples)
        validation = []
    train_set = [e for e in train_set if e.words]
    if not train_set:
        raise ValueError("no training examples with words: annotate some texts first")
    return _Data(train_set, validation, scored_on)


def _note(notes: list[str], text: str, warn: bool = False) -> None:
    """Log what the run did to fit its base model (or could not do), and keep it for the result."""
    notes.append(text)
    (log.warning if warn else log.info)("base model: %s", text)


def _build_model(config: TrainingConfig, base_config, bio_labels: list[str], placement: Placement):
    """The base model with a classifier head over ``bio_labels`` (its own when it predicts exactly those, else a new
    one) and what became of its head, placed; the fixed parts are frozen by the caller."""
    # The seed goes first: from_pretrained draws the new classifier head from torch's generator.
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    model, head = load_token_classifier(config.base_model, base_config, bio_labels)  # accelerate places it
    _set_dropout(model, config.dropout)
    if placement.device.type == "cpu":
        use_fast_dropout(model)  # PyTorch's CPU dropout is a sizeable share of a step (backend/model/dropout.py)
    return model, head


def _window_length(model, config: TrainingConfig, notes: list[str]) -> int:
    """``config.max_length``, or the base's position limit when that is shorter (backend/model/base_model.py)."""
    limit = window_limit(model)
    if limit is None or limit >= config.max_length:
        return config.max_length
    _note(notes, f"max_length {config.max_length} is longer than the {limit} positions the model has: windows of "
                 f"{limit} subwords", warn=True)
    return limit


def _plan(config: TrainingConfig, windows: Sequence) -> _Plan:
    batch_size = config.batch_size or default_batch_size(config, len(windows))
    rng = random.Random(config.seed)
    lengths = [len(w.input_ids) for w in windows]
    epoch_batches = [length_grouped_batches(lengths, batch_size, rng, max_tokens=config.max_batch_tokens)]
    epochs = planned_epochs(config, len(epoch_batches[0]))
    epoch_batches += [length_grouped_batches(lengths, batch_size, rng, max_tokens=config.max_batch_tokens)
                      for _ in range(1, epochs)]
    return _Plan(batch_size, epoch_batches)


# accelerate's names of the precisions it runs itself (autocast, and for fp16 a loss scaler); bf32 and fp32 are
# fp32 to it, bf32's bf16 matrix multiplies are this project's (device.matmul_precision), which it cannot express.
MIXED_PRECISION = {"bf16": "bf16", "fp16": "fp16", "bf32": "no", "fp32": "no"}


def _accelerator(placement: Placement, config: TrainingConfig):
    """accelerate's ``Accelerator`` for this process: it places the model and the batches, runs the precision's
    autocast (and fp16's loss scaler), joins the processes of one training (the environment ``ranks.run_ranks``
    gives them) and synchronises their gradients. ``split_batches``: a step's sentences are the recipe's batch,
    shared among the processes, so the learning-rate schedule steps once per optimizer step whatever their number
    (without it, accelerate steps it once per process).
    """
    import warnings

    from accelerate import Accelerator, DataLoaderConfiguration

    if placement.device.type == "cuda" and placement.device.index is not None:
        if config.processes > 1:
            raise ValueError(f"device {config.device} names one GPU; {config.processes} processes use GPUs 0.."
                             f"{config.processes - 1} (CUDA_VISIBLE_DEVICES chooses them): use --device cuda or auto")
        torch.cuda.set_device(placement.device)  # accelerate's one process uses the current GPU
    if placement.device.type == "cuda" and config.processes > torch.cuda.device_count():
        raise ValueError(f"{config.processes} training processes, one per GPU, but {torch.cuda.device_count()} GPU(s) "
                         "are visible")
    with warnings.catch_warnings():
        # several processes on a CPU: accelerate shares the cores among them, and says so as a warning each time
        warnings.filterwarnings("ignore", message="OMP_NUM_THREADS/MKL_NUM_THREADS unset")
        return Accelerator(cpu=placement.device.type == "cpu", mixed_precision=MIXED_PRECISION[placement.precision],
                           dataloader_config=DataLoaderConfiguration(split_batches=True))


def _release(accelerator) -> None:
    """Leave no process group nor accelerate state behind: the next training in this process (tests, benchmarks)
    may use another precision or device, which accelerate's process-wide state would refuse."""
    from accelerate.state import AcceleratorState, GradientState

    if accelerator.num_processes > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def labelled_positions(window) -> int:
    """The positions of ``window`` the loss counts: each word's first subword (``encoding.label_batch``)."""
    return sum(1 for position in window.word_positions if position >= 0)


def shard(batch_indices: list[int], rank: int, processes: int) -> list[int]:
    """The part of one step's sentences that process ``rank`` of ``processes`` computes: every ``processes``-th of
    the length-grouped batch, so the shards are alike in length and together are the batch.

    >>> shard([7, 3, 9, 4, 1], 0, 2), shard([7, 3, 9, 4, 1], 1, 2), shard([5], 1, 2)
    ([7, 9, 1], [3, 4], [])
    """
    return batch_indices[rank::processes]


def _fit(accelerator, model, tokenizer, windows, window_labels, validation: list[Example], plan: _Plan,
         config: TrainingConfig, placement: Placement, progress: Callable[[TrainingProgress], None] | None,
         started: float, window_length: int) -> _Fit:
    """The epochs: optimizer steps over the planned batches, each epoch scored on ``validation`` (when there is
    one) and the best epoch's weights kept in memory and loaded back at the end; early stopping once past
    ``min_steps``.

    Each process computes its ``shard`` of every planned batch; its loss is its share of the batch's mean over the
    labelled positions of the whole batch, times the number of processes, since accelerate's gradient
    synchronisation averages over them: the gradient is the batch's mean, as one process computes it. The main
    process scores the epochs and tells the others whether to go on.
    """
    from accelerate.utils import broadcast_object_list

    total_steps = plan.total_steps
    optimizer = _optimizer(model, config, placement)
    scheduler = _schedule(optimizer, total_steps, config.warmup_ratio)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    trained = accelerator.unwrap_model(model)  # the model itself, still running the precision's autocast
    rank, processes = accelerator.process_index, accelerator.num_processes
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    counted = [labelled_positions(w) for w in windows]

    history: list[dict] = []
    best_f1, best_epoch, best_state, best_scores, stale = -1.0, 0, None, None, 0
    step, windows_seen = 0, 0
    train_started = time.perf_counter()
    with matmul_precision(placement):  # bf32: the matrix multiplies on the CPU's bf16 units
        for epoch, batches in enumerate(plan.epoch_batches, start=1):
            model.train()
            loss_sum = 0.0
            for batch_indices in batches:
                mine = shard(batch_indices, rank, processes)
                # A batch smaller than the number of processes leaves a process without sentences; it still takes
                # part in the step (every process's gradients are summed) with a loss of weight 0.
                batch = [windows[i] for i in mine or batch_indices[:1]]
                ids, mask = pad_batch(batch, pad_id)
                labels = label_batch(batch, [window_labels[i] for i in mine or batch_indices[:1]], ids.shape[1])
                ids, mask, labels = (t.to(accelerator.device) for t in (ids, mask, labels))
                logits = model(input_ids=ids, attention_mask=mask).logits
                summed = torch.nn.functional.cross_entropy(
                    logits.float().view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100, reduction="sum"
                )
                share = summed / max(sum(counted[i] for i in batch_indices), 1) * (1 if mine else 0)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(share * processes)
                optimizer.step()
                scheduler.step()
                step += 1
                windows_seen += len(batch_indices)
                loss_sum += share.item()
                if progress is not None:
                    progress(TrainingProgress(step, total_steps, epoch, time.perf_counter() - started))

            loss = accelerator.reduce(torch.tensor(loss_sum, device=accelerator.device), "sum").item()
            record = {"epoch": epoch, "loss": loss / max(len(batches), 1), "elapsed_s": time.perf_counter() - started}
            stop = False
            if validation and accelerator.is_main_process:
                predictor = Predictor(trained, tokenizer, placement, batch_size=config.eval_batch_size,
                                      max_length=window_length)
                scores = _score(predictor, validation)
                record["f1"] = scores.overall.f1
                if scores.overall.f1 > best_f1:
                    best_f1, best_epoch, best_scores, stale = scores.overall.f1, epoch, scores, 0
                    # Keep the best weights in memory instead of saving every epoch; frozen ones never change.
                    best_state = {k: v.detach().clone() for k, v in trained.named_parameters() if v.requires_grad}
                else:
                    stale += 1
                # Never stop before the minimum number of steps: on small data the early epochs are noisy, not done.
                patience_over = config.early_stopping_patience and stale >= config.early_stopping_patience
                stop = bool(patience_over and step >= config.min_steps)
            history.append(record)
            if validation:
                stop = broadcast_object_list([stop])[0]  # every process stops after the same epoch
            if stop:
                break
    train_time = time.perf_counter() - train_started

    if best_state is not None:
        trained.load_state_dict(best_state, strict=False)
    else:
        best_epoch = len(history)
    return _Fit(accelerator.unwrap_model(model, keep_fp32_wrapper=False), history, best_epoch, best_scores, step, windows_seen, train_time)


def _save(model, tokenizer, window_length: int, out_dir: Path, sample: Sequence[Sequence[str]]) -> None:
    """Weights (fp32, on the CPU), config.json with the label map, and the tokenizer, into ``out_dir``; the saved
    tokenizer must give the words of ``sample`` the subwords training gave them, or the version is not kept."""
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(torch.device("cpu"), dtype=torch.float32)
    model.save_pretrained(out_dir)
    # The version predicts with the windows it was trained and scored on: a model fine-tuned on 128-subword windows
    # labels long texts worse in 512-subword ones (30-sentence documents: F1 0.59 vs 0.65 in 128).
    tokenizer.model_max_length = window_length
    tokenizer.save_pretrained(out_dir)
    if not same_subwords(tokenizer, AutoTokenizer.from_pretrained(out_dir), sample):
        raise BaseModelError(f"the tokenizer saved in {out_dir} reads words unlike the one the model was trained "
                             "with; the version would predict on other subwords than it learnt")


def _score(predictor: Predictor, examples: Sequence[Example]) -> Scores:
    predicted = predictor.predict_tags([e.tokens for e in examples])
    return score_tags([e.tags for e in examples], predicted)


def evaluate_model(
    model_dir: Path | Predictor,
    examples: Sequence[Example],
    chunk: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Scores:
    """Word-level scores of a saved version (or a loaded Predictor) on gold examples.

    With ``chunk``, the examples are predicted ``chunk`` at a time and ``progress(done, total)`` is called after
    each (the CLI's progress bar); without, in one call.
    """
    predictor = model_dir if isinstance(model_dir, Predictor) else Predictor.load(model_dir)
    if chunk is None:
        return _score(predictor, examples)
    predicted: list[list[str]] = []
    for at in range(0, len(examples), chunk):
        predicted.extend(predictor.predict_tags([e.tokens for e in examples[at:at + chunk]]))
        if progress is not None:
            progress(len(predicted), len(examples))
    return score_tags([e.tags for e in examples], predicted)
