"""Hardware detection: which device and numeric precision training and prediction use, decided at run time.

fp32 on the CPU is the fallback everywhere; bf16 is chosen only where the hardware computes it natively.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # torch is imported where it is used: settings and the CLI read the names below without it
    import torch

# int8: dynamic int8 linear layers, CPU inference only. bf32: fp32 tensors whose matrix multiplies run on the CPU's
# bf16 units (oneDNN's "fpmath" mode), CPU training only.
TRAINING_PRECISIONS = ("auto", "fp32", "bf32", "bf16", "fp16")
INFERENCE_PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
PRECISIONS = tuple(dict.fromkeys(TRAINING_PRECISIONS + INFERENCE_PRECISIONS))


# oneDNN, which runs the bf16 matrix multiplies (bf32 training, bf16 prediction) on CPUs with AMX / AVX-512 BF16,
# keeps each compiled primitive in two LRU caches, its own and that of PyTorch's ideep layer, 1024 entries each by
# default. Every batch shape gets its own primitives (in training: the forward and both backward products), and a
# training one keeps megabytes of buffers: on an AMX CPU a full-data training run grew to 1364 MB peak RSS, against
# 818-821 MB with both caches at 16 entries, for 3-17% fewer samples/s (349 -> 289-339; the tutorial's fp32
# recipe: ~1100 MB, ~93 samples/s); 64 entries gave 900 MB at the speed of 16, 256 gave 1266 MB (bench/README.md).
# Prediction wants the full caches: with 16, one text's p50 rose from 6.5 to 10.5 ms (a new primitive per length).
# The server predicts and never trains (training runs in a child process or a queue worker), so only training
# processes bound them. Other CPUs run fp32 through other kernels, which these caches do not hold.
ONEDNN_CACHE_CAPACITY = 16
ONEDNN_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def bound_onednn_caches(capacity: int = ONEDNN_CACHE_CAPACITY) -> None:
    """Cap both oneDNN primitive caches of this process at ``capacity`` entries, unless the environment sets them.

    The libraries read these variables once, when their cache is first used: in a process that already ran a bf16
    matrix multiply this changes nothing. ``train_model`` calls it first thing.
    """
    for name in ONEDNN_CACHE_VARIABLES:
        os.environ.setdefault(name, str(capacity))


@dataclass(frozen=True)
class Placement:
    """Where a model runs and in which precision, with the reason for the choice (it goes into metrics.json)."""

    device: torch.device
    precision: str  # "fp32" | "bf32" | "bf16" | "fp16" | "int8"
    reason: str

    @property
    def dtype(self) -> torch.dtype:
        import torch

        # int8 keeps fp32 activations; only the linear layers' weights are quantized (see backend.model.predict).
        # bf32 keeps fp32 tensors; only the matrix multiplies round their inputs to bf16 (see matmul_precision).
        return {"fp32": torch.float32, "bf32": torch.float32, "int8": torch.float32, "bf16": torch.bfloat16,
                "fp16": torch.float16}[self.precision]

    @property
    def inference_attention(self) -> str | None:
        """The attention code a predictor loads: plain matmul + softmax ("eager") on the CPU, the library's default
        (fused ``scaled_dot_product_attention``) elsewhere.

        On the CPU the fused kernel costs about 3x the plain one on sentence-length inputs (64 x 12 heads x 14
        positions: 3.5 vs 1.2 ms per layer, measured here): a sixth of a prediction pass. Training keeps the fused
        kernel, whose backward is the faster one.
        """
        return "eager" if self.device.type == "cpu" else None


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where that file does not exist, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf32_supported() -> bool:
    """True when this PyTorch can run fp32 matrix multiplies on bf16 units (``torch.backends.mkldnn.matmul``'s
    ``fp32_precision``, PyTorch 2.9 and later) and the CPU has such units."""
    import torch

    return hasattr(torch.backends.mkldnn, "matmul") and cpu_has_native_bf16()


@contextlib.contextmanager
def matmul_precision(placement: Placement) -> Iterator[None]:
    """Inside the block, fp32 matrix multiplies on the CPU take bf16 inputs (fp32 sums) when ``placement`` is bf32;
    PyTorch's setting is restored afterwards. Other placements leave everything as it is."""
    if placement.precision != "bf32":
        yield
        return
    import torch

    settings = torch.backends.mkldnn.matmul
    before = settings.fp32_precision
    settings.fp32_precision = "bf16"
    try:
        yield
    finally:
        settings.fp32_precision = before


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 matrix units (AMX) or bf16 dot products (AVX-512 BF16).

    Without them PyTorch emulates bf16 and it is slower than fp32, so it must not be chosen.
    """
    flags = cpu_flags()
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA GPU when present, else the CPU; anything else is passed to torch.device."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} asked for, but no CUDA GPU is available; use --device cpu or auto")
    return device


def _check(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")


def training_placement(device: str = "auto", precision: str = "auto") -> Placement:
    """Device and precision for training. On CUDA ``auto`` is bf16 autocast (fp16 on GPUs without bf16).

    On a CPU with native bf16 (AMX / AVX-512 BF16) ``auto`` is bf32: the tensors stay fp32 and only the matrix
    multiplies, most of a step, run on the bf16 units. bf16 autocast is not chosen there: measured at the stand-in
    model's size it gave no gain even with AMX, its casts cost what the faster matmuls save
    (../shared/baseline.md). Other CPUs train in fp32.
    """
    _check(precision)
    if precision not in TRAINING_PRECISIONS:
        raise ValueError(f"{precision} is for CPU inference only; train in one of {', '.join(TRAINING_PRECISIONS)}")
    where = resolve_device(device)
    if precision == "bf32" and (where.type != "cpu" or not bf32_supported()):
        raise ValueError("bf32 (fp32 training with bf16 matrix multiplies) needs a CPU with AMX or AVX-512 BF16 and "
                         "PyTorch 2.9 or later; this one has not: use fp32, or auto")
    if precision != "auto":
        return Placement(where, precision, "asked for")
    import torch

    if where.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Placement(where, "bf16", "CUDA GPU with bf16")
        return Placement(where, "fp16", "CUDA GPU without bf16")
    if bf32_supported():
        return Placement(where, "bf32", "CPU with native bf16: fp32 training, matrix multiplies on the bf16 units")
    return Placement(where, "fp32", "CPU without native bf16")


def inference_placement(device: str = "auto", precision: str = "auto") -> Placement:
    """Device and precision for prediction: ``auto`` casts the model to bf16 on CUDA and on CPUs with native
    bf16 (AMX / AVX-512 BF16), and keeps fp32 elsewhere."""
    _check(precision)
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"{precision} is a training precision; predict in one of {', '.join(INFERENCE_PRECISIONS)}")
    where = resolve_device(device)
    if precision == "int8" and where.type != "cpu":
        raise ValueError("int8 prediction runs on the CPU only; use --device cpu or another precision")
    if precision != "auto":
        return Placement(where, precision, "asked for")
    if where.type == "cuda":
        import torch

        return Placement(where, "bf16" if torch.cuda.is_bf16_supported() else "fp16", "CUDA GPU")
    if cpu_has_native_bf16():
        return Placement(where, "bf16", "CPU with native bf16 (AMX or AVX-512 BF16)")
    return Placement(where, "fp32", "CPU without native bf16")


def set_threads(threads: int | None) -> None:
    """Limit PyTorch's intra-op threads (None leaves PyTorch's default: one per core)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


SMALL_PASS_SUBWORDS = 64  # an annotator's one-task request (MIT sentences: ~12 subwords); 4 or 5 of them


def threads_for_pass(subwords: int, small: int = SMALL_PASS_SUBWORDS) -> None:
    """Run the next forward pass on one CPU thread when it is small (at most ``small`` subwords), else on
    PyTorch's default (one per core).

    A small pass gains nothing from a second thread, and waits on the busiest core with one: measured on 2 cores
    with one sentence, 14.5 ms on one thread and 14.0 ms on two when idle; with another process busy on one core,
    p95 21 ms on one thread against 174 ms on two (each of the pass's parallel steps waits for the thread that
    shares its core). An annotator's one-task request is such a pass; a batch of many is not.
    """
    import torch

    default = _default_threads()  # read before the first change
    wanted = 1 if subwords <= small else default
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


@functools.cache
def _default_threads() -> int:
    import torch

    return torch.get_num_threads()
