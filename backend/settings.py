"""The backend's settings, read once from environment variables into one frozen object.

Names follow Label Studio's own ML backends (LABEL_STUDIO_URL, MODEL_DIR, BASIC_AUTH_USER, ...); the README lists them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from backend.device import TRAINING_PRECISIONS

T = TypeVar("T")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """An environment variable holds a value the backend cannot use; the message names the variable."""


def _text(environ: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip()


def _parse(environ: Mapping[str, str], name: str, convert: Callable[[str], T], what: str, default: T) -> T:
    value = _text(environ, name)
    if value is None:
        return default
    try:
        return convert(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name}={value!r} is not valid: expected {what}") from None


def _boolean(value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(value)


def _at_least(minimum: int | float, convert: Callable[[str], T]) -> Callable[[str], T]:
    def check(value: str) -> T:
        number = convert(value)
        if number < minimum:  # type: ignore[operator]
            raise ValueError(value)
        return number

    return check


def _fraction(value: str) -> float:
    number = float(value)
    if not 0 <= number < 1:
        raise ValueError(value)
    return number


def _port(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 65535:
        raise ValueError(value)
    return number


def _device(value: str) -> str:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
        raise ValueError(value)
    return value


def _precision(value: str) -> str:
    if value not in TRAINING_PRECISIONS:
        raise ValueError(value)
    return value


def _unwritable_folder(path: Path) -> str | None:
    """Why ``path`` cannot hold model versions (None when it can), without creating anything: it must be a
    writable folder, or be creatable inside the nearest existing one."""
    if path.exists():
        if not path.is_dir():
            return "is not a folder"
        return None if os.access(path, os.W_OK | os.X_OK) else "is a folder this process cannot write to"
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is not a folder"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"cannot be created: {parent} is not writable"


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(value)
    return value.rstrip("/")


@dataclass(frozen=True)
class TrainingKnobs:
    """Optional overrides of the training recipe (``None`` = the recipe's own default); names are
    ``backend.train.TrainingConfig`` fields."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    max_length: int | None = None
    seed: int | None = None
    device: str | None = None
    precision: str | None = None
    threads: int | None = None
    freeze_embeddings: bool | None = None
    frozen_layers: int | None = None

    def overrides(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class Settings:
    """Everything the backend is configured with. Build it with ``Settings.from_env(os.environ)``.

    Secrets (API key, basic-auth password) are kept out of ``repr`` so that logging the settings is safe.
    """

    label_studio_url: str | None = None
    label_studio_api_key: str | None = field(default=None, repr=False)
    model_dir: Path = Path("models")
    base_model: str = "distilbert-base-uncased"
    start_model: Path | None = None
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 9090
    threads: int = 8
    backend_url: str | None = None
    train_every_n: int = 10
    promote_if_not_worse: bool = True
    report_to_label_studio: bool = True
    validation_fraction: float = 0.2
    max_request_bytes: int = 64 * 1024 * 1024
    train_nice: int = 10
    training: TrainingKnobs = field(default_factory=TrainingKnobs)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        """Read the settings; an unusable value raises ``SettingsError`` naming the variable and what it expects."""
        env = os.environ if environ is None else environ
        user, password = _text(env, "BASIC_AUTH_USER"), _text(env, "BASIC_AUTH_PASS")
        if bool(user) != bool(password):
            raise SettingsError("BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together (or neither)")
        start_model = _text(env, "START_MODEL")
        if start_model is not None and not Path(start_model).is_dir():
            raise SettingsError(f"START_MODEL={start_model!r} is not a folder; give a saved model version folder or unset it")
        model_dir = Path(_text(env, "MODEL_DIR", "models"))
        problem = _unwritable_folder(model_dir)
        if problem:
            raise SettingsError(f"MODEL_DIR={str(model_dir)!r} {problem}; model versions are stored there")
        positive = _at_least(1, int)
        return cls(
            label_studio_url=_parse(env, "LABEL_STUDIO_URL", _url, "an http(s):// URL", None),
            label_studio_api_key=_text(env, "LABEL_STUDIO_API_KEY"),
            model_dir=model_dir,
            base_model=_text(env, "BASE_MODEL", cls.base_model),
            start_model=Path(start_model) if start_model else None,
            basic_auth_user=user,
            basic_auth_pass=password,
            host=_text(env, "HOST", cls.host),
            port=_parse(env, "PORT", _port, "a port number (1-65535)", cls.port),
            threads=_parse(env, "THREADS", positive, "a whole number >= 1", cls.threads),
            backend_url=_parse(env, "BACKEND_URL", _url, "an http(s):// URL", None),
            train_every_n=_parse(env, "TRAIN_EVERY_N", _at_least(0, int), "a whole number >= 0 (0 = off)", cls.train_every_n),
            promote_if_not_worse=_parse(env, "PROMOTE_IF_NOT_WORSE", _boolean, "true or false", cls.promote_if_not_worse),
            report_to_label_studio=_parse(env, "REPORT_TO_LABEL_STUDIO", _boolean, "true or false", cls.report_to_label_studio),
            validation_fraction=_parse(env, "VALIDATION_FRACTION", _fraction, "a number in [0, 1)", cls.validation_fraction),
            max_request_bytes=_parse(env, "MAX_REQUEST_BYTES", positive, "a number of bytes >= 1", cls.max_request_bytes),
            train_nice=_parse(env, "TRAIN_NICE", _at_least(0, int), "a whole number >= 0", cls.train_nice),
            training=TrainingKnobs(
                epochs=_parse(env, "TRAIN_EPOCHS", positive, "a whole number >= 1", None),
                lr=_parse(env, "TRAIN_LR", _at_least(1e-12, float), "a number > 0", None),
                batch_size=_parse(env, "TRAIN_BATCH_SIZE", positive, "a whole number >= 1", None),
                max_length=_parse(env, "TRAIN_MAX_LENGTH", _at_least(8, int), "a whole number >= 8", None),
                seed=_parse(env, "TRAIN_SEED", int, "a whole number", None),
                device=_parse(env, "TRAIN_DEVICE", _device, "auto, cpu, cuda or cuda:N", None),
                precision=_parse(env, "TRAIN_PRECISION", _precision, ", ".join(TRAINING_PRECISIONS), None),
                threads=_parse(env, "TRAIN_THREADS", positive, "a whole number >= 1", None),
                freeze_embeddings=_parse(env, "TRAIN_FREEZE_EMBEDDINGS", _boolean, "true or false", None),
                frozen_layers=_parse(env, "TRAIN_FROZEN_LAYERS", _at_least(0, int), "a whole number >= 0", None),
            ),
        )
