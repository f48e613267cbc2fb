"""Hardware choices: fp32 is the CPU fallback, bf16 only where the CPU computes it natively, int8 only for CPU
inference."""
import pytest
import torch

from backend import device


def test_cpu_training_defaults_to_fp32():
    assert device.training_placement("cpu").precision == "fp32"


def test_cpu_inference_uses_bf16_only_with_native_support(monkeypatch):
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert device.inference_placement("cpu").precision == "bf16"
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx2"})
    assert device.inference_placement("cpu").precision == "fp32"


def test_an_explicit_precision_wins_and_unknown_ones_are_refused():
    assert device.inference_placement("cpu", "int8").dtype == torch.float32
    with pytest.raises(ValueError, match="int8"):
        device.training_placement("cpu", "int8")
    with pytest.raises(ValueError, match="choose one of"):
        device.inference_placement("cpu", "fp8")


def test_cpu_inference_loads_the_plain_attention_and_cuda_keeps_the_library_default():
    assert device.inference_placement("cpu").inference_attention == "eager"
    cuda = device.Placement(torch.device("cuda"), "bf16", "test")
    assert cuda.inference_attention is None


def test_asking_for_cuda_without_a_gpu_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        device.resolve_device("cuda")
    assert device.resolve_device("auto").type == "cpu"
