"""The backend's settings, read once from environment variables into one frozen object.

Names follow Label Studio's own ML backends (LABEL_STUDIO_URL, MODEL_DIR, BASIC_AUTH_USER, ...); docs/settings.md lists them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from backend.model.config import (
    BOOLEAN, DEFAULT_BASE_MODEL, FRACTION, NOT_NEGATIVE, NOT_NEGATIVE_NUMBER, POSITIVE, RATE, Check, KnobError,
    RecipeOverrides, TrainingConfig, from_environment,
)


class SettingsError(ValueError):
    """An environment variable holds a value the backend cannot use; the message names the variable."""


def _text(environ: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    value = environ.get(name)
    if value is None or not value.strip():
        return default
    return value.strip()


def _parse(environ: Mapping[str, str], name: str, check: Check, default: Any) -> Any:
    value = _text(environ, name)
    if value is None:
        return default
    try:
        return check.parse(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name}={value!r} is not valid: expected {check.expects}") from None


def _port(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 65535:
        raise ValueError(value)
    return number


def _url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(value)
    return value.rstrip("/")


def _redis_url(value: str) -> str:
    if not value.startswith(("redis://", "rediss://", "unix://")) or len(value) <= len("redis://"):
        raise ValueError(value)
    return value


def _queue_name(value: str) -> str:
    if not all(c.isascii() and (c.isalnum() or c in "-_.") for c in value):
        raise ValueError(value)
    return value


def _gate(value: str) -> str:
    if value.lower() not in ("bootstrap", "strict"):
        raise ValueError(value)
    return value.lower()


def _growth(value: str) -> float:
    number = float(value)
    if not (number == 0 or number > 1):  # NaN too
        raise ValueError(value)
    return number


def _folds(value: str) -> int:
    number = int(value)
    if number < 2:
        raise ValueError(value)
    return number


def _keep(value: str) -> int | None:
    return None if value.lower() == "all" else POSITIVE.parse(value)


PORT = Check(_port, "a port number (1-65535)")
KEEP = Check(_keep, "a whole number >= 1, or all")
REDIS_URL = Check(_redis_url, "a Redis address such as redis://127.0.0.1:6379/0 (or rediss://, unix://)")
GATE = Check(_gate, "bootstrap or strict")
GROWTH = Check(_growth, "a number > 1, or 0 (never)")
QUEUE_NAME = Check(_queue_name, "a queue name of ASCII letters, digits, '-', '_' and '.'")
RESERVED_THREADS = 4  # server threads that waiting predictions leave free by default
URL = Check(_url, "an http(s):// URL")


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


@dataclass(frozen=True)
class Settings:
    """Everything the backend is configured with. Build it with ``Settings.from_env(os.environ)``.

    Secrets (API key, basic-auth password) are kept out of ``repr`` so that logging the settings is safe.
    """

    label_studio_url: str | None = None
    label_studio_api_key: str | None = field(default=None, repr=False)
    model_dir: Path = Path("models")
    base_model: str = DEFAULT_BASE_MODEL
    start_model: Path | None = None
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 9090
    threads: int = 64  # most of them wait on shared prediction passes; control routes keep the rest
    predict_max_requests: int = 60  # /predict requests waiting at once; more get 503 (below THREADS: see from_env)
    predict_max_wait_ms: float = 5.0  # how long a pass waits for other requests to join it
    predict_max_subwords: int = 4096  # subwords per shared pass at most
    backend_url: str | None = None
    train_every_n: int = 10
    promote_if_not_worse: bool = True
    promotion_gate: str = "bootstrap"  # bootstrap: keep the serving version only when the new one is worse beyond
    # noise (90% paired bootstrap interval of the F1 difference below 0); strict: when its F1 is lower at all
    warm_start: bool = True  # continue from the serving version when its labels are the project's
    # a warm start's schedule (bench/README, "Warm starts"): at least this many epochs, more on small data until
    # this many optimizer steps, at this peak learning rate (the recipe's own 3e-4 undoes part of what was learned)
    warm_start_epochs: int = 1
    warm_start_min_steps: int = 50
    warm_start_lr: float = 1e-4
    # a line of warm starts goes back to the base model once its training set has grown this many times since the
    # line last trained from it (the longer a warm start continues, the worse it generalises: bench/README, "The
    # annotation loop"; Ash & Adams, NeurIPS 2020); 0: never
    warm_start_rebase_growth: float = 2.0
    report_to_label_studio: bool = True
    validation_fraction: float = 0.2  # the project's validation tasks (by task id), on which versions are compared
    max_request_bytes: int = 64 * 1024 * 1024
    train_nice: int = 10
    publish_predictions: bool = True  # write each promoted version's predictions into Label Studio
    publish_max_tasks: int = 10_000  # unannotated tasks a promotion publishes at most (lowest task id first)
    keep_versions: int | None = 3  # promoted versions kept besides the serving one and the newest run; None: all
    train_concurrency: int = 1  # trainings at once over all projects, without a queue (each waits in order)
    training_queue: str | None = None  # redis://host:port/db: trainings run on RQ workers (backend.training.queue)
    training_queue_name: str = "ner-training"  # the RQ queue's name (a worker's --queue)
    workers: int = 1  # serving processes of `serve` (more than 1 needs the training queue)
    training: RecipeOverrides = RecipeOverrides()  # TRAIN_<KNOB> for every TrainingConfig knob
    # REVIEW_FOLDS: the review's folds (docs/review.md): each annotated task is scored by a model trained on the
    # other folds, so a review trains this many models; small projects get fewer (about 5 tasks a fold, 2 at least)
    review_folds: int = 5
    # REVIEW_EPOCHS: the epochs of each fold's model; 0: the training recipe's own (TRAIN_EPOCHS or its default)
    review_epochs: int = 0
    # REVIEW_SHOW: the flagged tasks (with a finding, most likely wrong first) shown in the Instructions block and
    # the Data Manager tab "Review: likely label errors"; /review and the report page list every scored task
    review_show: int = 30

    @property
    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user)

    def training_config(self) -> TrainingConfig:
        """The recipe a training run uses: BASE_MODEL and the TRAIN_* knobs that are set, over the defaults."""
        return self.training.config(self.base_model)

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
        try:
            training = from_environment(env)
        except KnobError as error:
            raise SettingsError(str(error)) from None
        threads = _parse(env, "THREADS", POSITIVE, cls.threads)
        # waiting predictions never hold every thread: /setup, /webhook and /status always find one
        default_requests = max(1, min(cls.predict_max_requests, threads - RESERVED_THREADS, threads - 1))
        predict_max_requests = _parse(env, "PREDICT_MAX_REQUESTS", POSITIVE, default_requests)
        if _text(env, "PREDICT_MAX_REQUESTS") is not None and predict_max_requests >= threads:
            raise SettingsError(
                f"PREDICT_MAX_REQUESTS={predict_max_requests} must be below THREADS={threads}, so that /setup, "
                "/webhook and /status always find a free thread: raise THREADS or lower PREDICT_MAX_REQUESTS")
        training_queue = _parse(env, "TRAINING_QUEUE", REDIS_URL, None)
        workers = _parse(env, "WORKERS", POSITIVE, cls.workers)
        if workers > 1 and training_queue is None:
            raise SettingsError(
                f"WORKERS={workers} needs TRAINING_QUEUE (redis://host:port/db): without a queue each serving process "
                "would run its own trainings on the same MODEL_DIR; see docs/deploy.md")
        return cls(
            label_studio_url=_parse(env, "LABEL_STUDIO_URL", URL, None),
            label_studio_api_key=_text(env, "LABEL_STUDIO_API_KEY"),
            model_dir=model_dir,
            base_model=_text(env, "BASE_MODEL", cls.base_model),
            start_model=Path(start_model) if start_model else None,
            basic_auth_user=user,
            basic_auth_pass=password,
            host=_text(env, "HOST", cls.host),
            port=_parse(env, "PORT", PORT, cls.port),
            threads=threads,
            predict_max_requests=predict_max_requests,
            predict_max_wait_ms=_parse(env, "PREDICT_MAX_WAIT_MS", Check(NOT_NEGATIVE_NUMBER.parse, "a number of ms >= 0"),
                                       cls.predict_max_wait_ms),
            predict_max_subwords=_parse(env, "PREDICT_MAX_SUBWORDS", POSITIVE, cls.predict_max_subwords),
            backend_url=_parse(env, "BACKEND_URL", URL, None),
            train_every_n=_parse(env, "TRAIN_EVERY_N", Check(NOT_NEGATIVE.parse, "a whole number >= 0 (0 = off)"),
                                 cls.train_every_n),
            promote_if_not_worse=_parse(env, "PROMOTE_IF_NOT_WORSE", BOOLEAN, cls.promote_if_not_worse),
            promotion_gate=_parse(env, "PROMOTION_GATE", GATE, cls.promotion_gate),
            warm_start=_parse(env, "WARM_START", BOOLEAN, cls.warm_start),
            warm_start_epochs=_parse(env, "WARM_START_EPOCHS", POSITIVE, cls.warm_start_epochs),
            warm_start_lr=_parse(env, "WARM_START_LR", RATE, cls.warm_start_lr),
            warm_start_min_steps=_parse(env, "WARM_START_MIN_STEPS", NOT_NEGATIVE, cls.warm_start_min_steps),
            warm_start_rebase_growth=_parse(env, "WARM_START_REBASE_GROWTH", GROWTH, cls.warm_start_rebase_growth),
            report_to_label_studio=_parse(env, "REPORT_TO_LABEL_STUDIO", BOOLEAN, cls.report_to_label_studio),
            validation_fraction=_parse(env, "VALIDATION_FRACTION", FRACTION, cls.validation_fraction),
            max_request_bytes=_parse(env, "MAX_REQUEST_BYTES", Check(POSITIVE.parse, "a number of bytes >= 1"),
                                     cls.max_request_bytes),
            train_nice=_parse(env, "TRAIN_NICE", NOT_NEGATIVE, cls.train_nice),
            keep_versions=_parse(env, "KEEP_VERSIONS", KEEP, cls.keep_versions),
            publish_predictions=_parse(env, "PUBLISH_PREDICTIONS", BOOLEAN, cls.publish_predictions),
            publish_max_tasks=_parse(env, "PUBLISH_MAX_TASKS", NOT_NEGATIVE, cls.publish_max_tasks),
            train_concurrency=_parse(env, "TRAIN_CONCURRENCY", POSITIVE, cls.train_concurrency),
            training_queue=training_queue,
            training_queue_name=_parse(env, "TRAINING_QUEUE_NAME", QUEUE_NAME, cls.training_queue_name),
            workers=workers,
            training=training,
            review_folds=_parse(env, "REVIEW_FOLDS", Check(_folds, "a whole number >= 2"), cls.review_folds),
            review_epochs=_parse(env, "REVIEW_EPOCHS", Check(NOT_NEGATIVE.parse, "a whole number >= 0 (0 = the recipe's)"),
                                 cls.review_epochs),
            review_show=_parse(env, "REVIEW_SHOW", POSITIVE, cls.review_show),
        )
