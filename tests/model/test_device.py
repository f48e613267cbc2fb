"""Hardware choices: fp32 is the CPU fallback, bf16 only where the CPU computes it natively, int8 only for CPU
inference, bf32 (fp32 training with bf16 matrix multiplies) only for CPU training on native bf16."""
import os

import pytest
import torch

from backend.model import device


def test_cpu_training_is_fp32_without_native_bf16_and_bf32_with_it(monkeypatch):
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx2", "fma"})
    assert device.training_placement("cpu").precision == "fp32"
    for flag in ("amx_bf16", "avx512_bf16"):
        monkeypatch.setattr(device, "cpu_flags", lambda: {"avx2", flag})
        placement = device.training_placement("cpu")
        assert placement.precision == "bf32" and placement.dtype == torch.float32  # the tensors stay fp32


def test_bf32_is_refused_where_it_would_silently_be_fp32_and_for_prediction(monkeypatch):
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx2"})
    with pytest.raises(ValueError, match="AMX"):
        device.training_placement("cpu", "bf32")
    with pytest.raises(ValueError, match="training precision"):
        device.inference_placement("cpu", "bf32")


def test_bf32_turns_on_bf16_matrix_multiplies_only_inside_the_block():
    matmul = torch.backends.mkldnn.matmul
    before = matmul.fp32_precision
    with device.matmul_precision(device.Placement(torch.device("cpu"), "bf32", "test")):
        assert matmul.fp32_precision == "bf16"
    assert matmul.fp32_precision == before
    with device.matmul_precision(device.Placement(torch.device("cpu"), "fp32", "test")):
        assert matmul.fp32_precision == before
    with pytest.raises(RuntimeError), device.matmul_precision(device.Placement(torch.device("cpu"), "bf32", "test")):
        raise RuntimeError("a failed step")
    assert matmul.fp32_precision == before


def test_reading_the_precision_names_does_not_load_torch():
    import subprocess
    import sys

    from pathlib import Path

    code = "import sys, backend.shared.settings, backend.model.device; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == "False"


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


def test_a_small_pass_runs_on_one_thread_and_a_large_one_on_all_of_them():
    before = torch.get_num_threads()
    try:
        device.threads_for_pass(device.SMALL_PASS_SUBWORDS)
        assert torch.get_num_threads() == 1
        device.threads_for_pass(device.SMALL_PASS_SUBWORDS + 1)
        assert torch.get_num_threads() == device._default_threads()  # what PyTorch had before the first change
    finally:
        torch.set_num_threads(before)


def test_a_training_process_bounds_the_onednn_caches_unless_the_environment_sets_them(monkeypatch):
    names = device.ONEDNN_CACHE_VARIABLES
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(names[0], "1024")
    device.bound_onednn_caches()
    assert [os.environ[name] for name in names] == ["1024"] + [str(device.ONEDNN_CACHE_CAPACITY)] * (len(names) - 1)


def test_the_server_process_keeps_the_libraries_onednn_caches_for_prediction():
    import subprocess
    import sys
    from pathlib import Path

    names = device.ONEDNN_CACHE_VARIABLES
    code = (f"import os, backend.serving.server, backend.model.predict, backend.model.train; "
            f"print([os.environ.get(name) for name in {names!r}])")
    clean = {k: v for k, v in os.environ.items() if k not in names}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[2], env=clean)
    assert done.stdout.strip() == str([None] * len(names))
