"""Settings come from environment variables under Label Studio's names; bad values name the variable."""
from pathlib import Path

import pytest

from backend.shared.settings import Settings, SettingsError


def test_an_empty_environment_gives_safe_defaults():
    settings = Settings.from_env({})
    assert settings.label_studio_url is None and settings.label_studio_api_key is None
    assert settings.model_dir == Path("models")
    assert settings.base_model == "distilbert-base-uncased"
    assert (settings.host, settings.port) == ("127.0.0.1", 9090)
    assert settings.train_every_n == 10
    assert settings.promote_if_not_worse and settings.report_to_label_studio
    assert not settings.auth_enabled
    assert settings.training.overrides() == {}


def test_every_variable_is_read(tmp_path):
    start = tmp_path / "start"
    start.mkdir()
    settings = Settings.from_env({
        "LABEL_STUDIO_URL": "http://ls:8080/", "LABEL_STUDIO_API_KEY": "k" * 40, "MODEL_DIR": str(tmp_path),
        "BASE_MODEL": "some/model", "START_MODEL": str(start), "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p",
        "HOST": "0.0.0.0", "PORT": "9999", "THREADS": "3", "BACKEND_URL": "http://backend:9090",
        "TRAIN_EVERY_N": "0", "PROMOTE_IF_NOT_WORSE": "false", "REPORT_TO_LABEL_STUDIO": "no",
        "VALIDATION_FRACTION": "0.3", "MAX_REQUEST_BYTES": "1000", "TRAIN_NICE": "0",
        "TRAIN_EPOCHS": "4", "TRAIN_LR": "3e-5", "TRAIN_BATCH_SIZE": "8", "TRAIN_SEED": "7", "TRAIN_THREADS": "2",
        "TRAIN_FROZEN_LAYERS": "0", "TRAIN_PRECISION": "bf32", "WARM_START_REBASE_GROWTH": "1.5",
    })
    assert settings.label_studio_url == "http://ls:8080"
    assert settings.model_dir == tmp_path and settings.start_model == start
    assert (settings.host, settings.port, settings.threads) == ("0.0.0.0", 9999, 3)
    assert settings.auth_enabled and settings.basic_auth_pass == "p"
    assert settings.train_every_n == 0 and not settings.promote_if_not_worse and not settings.report_to_label_studio
    assert settings.validation_fraction == 0.3 and settings.max_request_bytes == 1000
    assert settings.warm_start_rebase_growth == 1.5
    assert settings.training.overrides() == {"epochs": 4, "lr": 3e-5, "batch_size": 8, "seed": 7, "threads": 2,
                                             "frozen_layers": 0, "precision": "bf32"}


@pytest.mark.parametrize("name, value", [
    ("PORT", "http"), ("PORT", "70000"), ("TRAIN_EVERY_N", "-1"), ("PROMOTE_IF_NOT_WORSE", "maybe"),
    ("VALIDATION_FRACTION", "1.5"), ("MAX_REQUEST_BYTES", "0"), ("LABEL_STUDIO_URL", "localhost:8080"),
    ("TRAIN_EPOCHS", "three"), ("THREADS", "0"), ("TRAIN_FROZEN_LAYERS", "-1"),
    ("TRAIN_PRECISION", "int8"), ("TRAIN_CONCURRENCY", "0"), ("TRAINING_QUEUE", "localhost:6379"),
    ("TRAINING_QUEUE", "redis://"), ("TRAINING_QUEUE_NAME", "ner training"), ("WORKERS", "0"),
    ("WARM_START_REBASE_GROWTH", "1"), ("WARM_START_REBASE_GROWTH", "-2"), ("WARM_START_REBASE_GROWTH", "nan"),
])
def test_an_invalid_value_is_an_error_naming_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_basic_auth_needs_both_user_and_password():
    with pytest.raises(SettingsError, match="BASIC_AUTH_PASS"):
        Settings.from_env({"BASIC_AUTH_USER": "admin"})


def test_start_model_must_be_an_existing_folder(tmp_path):
    with pytest.raises(SettingsError, match="START_MODEL"):
        Settings.from_env({"START_MODEL": str(tmp_path / "missing")})


def test_the_printed_settings_never_show_secrets():
    settings = Settings.from_env({"LABEL_STUDIO_API_KEY": "secret-key-123", "BASIC_AUTH_USER": "u",
                                  "BASIC_AUTH_PASS": "secret-pass-456"})
    assert "secret-key-123" not in repr(settings) and "secret-pass-456" not in repr(settings)


def test_model_dir_must_be_a_writable_folder_or_creatable_but_is_not_created(tmp_path):
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    for bad in (in_the_way, in_the_way / "models"):
        with pytest.raises(SettingsError, match="MODEL_DIR"):
            Settings.from_env({"MODEL_DIR": str(bad)})
    fresh = tmp_path / "new" / "models"
    assert Settings.from_env({"MODEL_DIR": str(fresh)}).model_dir == fresh
    assert not fresh.exists()


def test_several_serving_processes_need_the_training_queue():
    with pytest.raises(SettingsError, match="WORKERS=2 needs TRAINING_QUEUE"):
        Settings.from_env({"WORKERS": "2"})
    settings = Settings.from_env({"WORKERS": "2", "TRAINING_QUEUE": "redis://10.0.0.5:6379/1",
                                  "TRAINING_QUEUE_NAME": "gpu-a100", "TRAIN_CONCURRENCY": "3"})
    assert (settings.workers, settings.training_queue, settings.training_queue_name, settings.train_concurrency) == (
        2, "redis://10.0.0.5:6379/1", "gpu-a100", 3)


def test_several_serving_processes_on_one_host_share_its_cores(monkeypatch):
    import os

    from backend.serving.server import _share_the_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    _share_the_cores(1)
    assert "OMP_NUM_THREADS" not in os.environ  # one process: PyTorch's default, one thread per core
    _share_the_cores(2)
    assert os.environ["OMP_NUM_THREADS"] == str(max(1, len(os.sched_getaffinity(0)) // 2))
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    _share_the_cores(2)
    assert os.environ["OMP_NUM_THREADS"] == "3"  # what the operator set wins
