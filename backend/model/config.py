"""The training recipe as one typed config: every knob is declared once, as a ``TrainingConfig`` field whose
metadata carries its help text, its check and its environment name; the CLI flags and the TRAIN_* settings are
generated from these declarations (``add_arguments``, ``from_arguments``, ``from_environment``).

No torch here: the settings and the CLI read the recipe without loading it.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Callable, Mapping

from backend.model.device import TRAINING_PRECISIONS

DEFAULT_BASE_MODEL = "distilbert-base-uncased"


@dataclass(frozen=True)
class Check:
    """How one knob's text (an environment value or a flag) becomes its value: ``parse``, and ``expects`` for the
    message when it does not."""

    parse: Callable[[str], Any]
    expects: str


def _at_least(minimum: int | float, kind: type) -> Check:
    def parse(text: str):
        value = kind(text)
        if not value >= minimum:  # NaN too
            raise ValueError(text)
        return value

    return Check(parse, f"{'a whole number' if kind is int else 'a number'} >= {minimum}")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise ValueError(text)
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _one_of(*choices: str) -> Check:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(text)
        return text

    return Check(parse, ", ".join(choices))


def _device(text: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", text):
        raise ValueError(text)
    return text


WHOLE = Check(int, "a whole number")
POSITIVE = _at_least(1, int)
NOT_NEGATIVE = _at_least(0, int)
NOT_NEGATIVE_NUMBER = _at_least(0, float)
RATE = Check(_at_least(1e-12, float).parse, "a number > 0")
FRACTION = Check(_fraction, "a number in [0, 1)")
BOOLEAN = Check(_boolean, "true or false")
TEXT = Check(str, "a text")
DEVICE = Check(_device, "auto, cpu, cuda or cuda:N")
PRECISION = _one_of(*TRAINING_PRECISIONS)


def knob(default: Any, help: str, check: Check, env: bool = True) -> Any:
    """A ``TrainingConfig`` field: its default, what it means (the flag's help), how a text becomes it, and whether
    the environment sets it (as ``TRAIN_<NAME>``)."""
    return field(default=default, metadata={"help": help, "check": check, "env": env})


@dataclass(frozen=True)
class TrainingConfig:
    """The training recipe. Defaults are the project's default recipe (see bench/README.md for the evidence)."""

    base_model: str = knob(DEFAULT_BASE_MODEL, "hub id or local folder to fine-tune from (from_pretrained)", TEXT,
                           env=False)  # the settings' BASE_MODEL
    epochs: int | None = knob(None, "epochs to train (default: 5, more on small data: at least min_steps optimizer "
                                    "steps, at most max_epochs)", POSITIVE)
    lr: float = knob(3e-4, "peak learning rate of the linear warm-up / linear decay schedule", RATE)
    batch_size: int | None = knob(None, "sentences per optimizer step (default: 32, or small_data_batch_size below "
                                        "small_data_size training windows)", POSITIVE)
    small_data_batch_size: int = knob(16, "the default batch size on small data", POSITIVE)
    max_batch_tokens: int | None = knob(768, "cap on a batch's padded size (texts x longest subwords): bounds a "
                                             "step's memory", POSITIVE)
    small_data_size: int = knob(2000, "below this many training windows the data counts as small", POSITIVE)
    max_length: int = knob(128, "subwords per window, special tokens included; longer texts become overlapping "
                                "windows", _at_least(8, int))
    seed: int = knob(42, "random seed, set before the classifier head is created, so a run is reproducible", WHOLE)
    device: str = knob("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:N", DEVICE)
    precision: str = knob("auto", "auto: bf16 autocast on CUDA, bf32 (fp32 with bf16 matrix multiplies) on CPUs "
                                  "with AMX / AVX-512 BF16, else fp32", PRECISION)
    carve_fraction: float = knob(0.0, "share of the training examples carved off to pick the best epoch, when no "
                                      "validation set is given (default 0: train on every example and keep the "
                                      "last epoch)", FRACTION)
    early_stopping_patience: int = knob(3, "stop after this many epochs without a better F1 (0: never), once past "
                                           "min_steps; only with a validation set (given or carved)", NOT_NEGATIVE)
    threads: int | None = knob(None, "torch intra-op CPU threads of each training process (default: PyTorch's, all "
                                     "cores; with several processes on a CPU, the cores shared among them)", POSITIVE)
    processes: int = knob(1, "processes one training runs as: one per GPU (GPUs 0..N-1), or N over a CPU's cores; "
                             "the recipe means the same for any N (sentences per optimizer step, epochs, schedule, "
                             "data order)", POSITIVE)
    weight_decay: float = knob(0.01, "AdamW weight decay (not on biases and normalisation weights)",
                               NOT_NEGATIVE_NUMBER)
    warmup_ratio: float = knob(0.1, "share of the steps with a rising learning rate", FRACTION)
    default_epochs: int = knob(5, "epochs when data is not small", POSITIVE)
    min_steps: int = knob(300, "small data needs many optimizer steps to learn at all (../shared/baseline.md)",
                          NOT_NEGATIVE)
    max_epochs: int = knob(40, "upper bound of the automatic epoch count on tiny data", POSITIVE)
    freeze_embeddings: bool = knob(True, "keep the embedding block fixed: no dense update of the vocabulary matrix "
                                         "(train it for randomly initialised models)", BOOLEAN)
    dropout: float | None = knob(None, "probability of every dropout of the model (default: the model's own)",
                                 FRACTION)
    # The lowest layer fixed on large data: ~10% more samples/s at full-data F1 within the seeds' spread; on small
    # data it costs F1, and 2 of 6 cost it on both (docs/tuning-history.md, the tuning log).
    frozen_layers: int | None = knob(None, "keep the lowest N transformer layers fixed: no backward pass through "
                                           "them; faster, usually a little less accurate (default: 1 from "
                                           "small_data_size training windows on, else 0)", NOT_NEGATIVE)
    head_lr: float | None = knob(None, "learning rate of the new classifier head (default: lr)", RATE)
    eval_batch_size: int = knob(64, "texts per forward pass when scoring an epoch", POSITIVE)


def knobs() -> tuple[Field, ...]:
    return fields(TrainingConfig)


def environment_name(knob_field: Field) -> str | None:
    """``TRAIN_<NAME>``, or None for a knob the environment does not set."""
    return f"TRAIN_{knob_field.name.upper()}" if knob_field.metadata["env"] else None


def flag_name(knob_field: Field) -> str:
    return "--" + knob_field.name.replace("_", "-")


def _default(knob_field: Field) -> Any:
    return knob_field.default if knob_field.default is not MISSING else None


class KnobError(ValueError):
    """A knob's text is not a value it can take; the message names the variable or flag and what it expects."""


def parse_knob(knob_field: Field, text: str, where: str) -> Any:
    check: Check = knob_field.metadata["check"]
    try:
        return check.parse(text.strip())
    except (TypeError, ValueError):
        raise KnobError(f"{where}={text!r} is not valid: expected {check.expects}") from None


@dataclass(frozen=True)
class RecipeOverrides:
    """The knobs the environment sets (``TRAIN_<NAME>``), over the recipe's defaults."""

    values: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, **values: Any) -> "RecipeOverrides":
        unknown = sorted(set(values) - {f.name for f in knobs()})
        if unknown:
            raise TypeError(f"not TrainingConfig knobs: {', '.join(unknown)}")
        return cls(tuple(values.items()))

    def overrides(self) -> dict[str, Any]:
        return dict(self.values)

    def config(self, base_model: str) -> TrainingConfig:
        return TrainingConfig(base_model=base_model, **self.overrides())


def from_environment(environ: Mapping[str, str]) -> RecipeOverrides:
    """Every knob whose environment variable is set (and not blank) in ``environ``; ``KnobError`` names a bad one."""
    values = []
    for knob_field in knobs():
        name = environment_name(knob_field)
        text = environ.get(name) if name else None
        if text is not None and text.strip():
            values.append((knob_field.name, parse_knob(knob_field, text, name)))
    return RecipeOverrides(tuple(values))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per knob (``--base-model``, ``--epochs``, ...), help and default from its declaration; a flag left
    out keeps the recipe's default."""
    group = parser.add_argument_group("training recipe (backend.model.config.TrainingConfig)")
    for knob_field in knobs():
        check: Check = knob_field.metadata["check"]
        default = _default(knob_field)
        help_text = knob_field.metadata["help"] + ("" if default is None else f" (default: {default})")
        help_text = help_text.replace("%", "%%")
        if check is BOOLEAN:
            group.add_argument(flag_name(knob_field), dest=knob_field.name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
            continue

        def parse(text: str, check: Check = check) -> Any:
            try:
                return check.parse(text)
            except (TypeError, ValueError):
                raise argparse.ArgumentTypeError(f"{text!r} is not {check.expects}") from None

        parse.__name__ = check.expects  # argparse names the type in its error
        group.add_argument(flag_name(knob_field), dest=knob_field.name, type=parse, default=None, metavar=None,
                           help=help_text)


def from_arguments(args: argparse.Namespace) -> TrainingConfig:
    """The recipe with every knob given on the command line (see ``add_arguments``)."""
    return TrainingConfig(**{f.name: getattr(args, f.name) for f in knobs() if getattr(args, f.name, None) is not None})
