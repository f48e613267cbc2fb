"""The models in memory of one serving process: each project's announced version (following the store's pointer),
the start model, and loading in the background.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from backend.data.schema import LabelSchema
from backend.serving.batching import Batcher
from backend.shared.store import ModelStore, fits, model_labels, start_version

log = logging.getLogger(__name__)

UNTRAINED = "untrained"
UNFIT_SUFFIX = " (does not fit the label config)"  # the version name of empty answers while it does not


def load_predictor(model_dir: Path) -> Any:
    from backend.model.predict import Predictor  # torch is imported on the first prediction, not at start-up

    return Predictor.load(model_dir)


@dataclass(frozen=True)
class BatchLimits:
    """How concurrent predictions are gathered into shared passes (see ``backend.serving.batching``)."""

    max_wait_ms: float = 5.0
    max_subwords: int = 4096


def _subwords(predictor: Any, texts: list[str]) -> int:
    count = getattr(predictor, "count_subwords", None)
    return count(texts) if count is not None else sum(len(text) // 4 + 2 for text in texts)


@dataclass
class LoadedModel:
    """A predictor in memory with the version it serves; its ``batcher`` is the only caller of
    ``predictor.predict`` (tokenizers are not thread-safe), gathering concurrent requests into shared passes."""

    version: str
    predictor: Any
    limits: BatchLimits = BatchLimits()
    batcher: Batcher = field(init=False)

    def __post_init__(self) -> None:
        from backend.model.device import threads_for_pass  # torch is loaded with the model by now

        self.batcher = Batcher(self.predictor.predict, lambda texts: _subwords(self.predictor, texts),
                               self.limits.max_wait_ms, self.limits.max_subwords, name=f"predict-{self.version}",
                               prepare=threads_for_pass)

    def predict(self, texts: list[str]) -> list:
        return self.batcher.submit(texts)


@dataclass
class _Served:
    stamp: tuple[int, int] | None
    model: LoadedModel | None


class ModelCache:
    """Which model answers for a project, loaded once per process.

    When a new version is promoted, the old predictor keeps answering while the new one loads in the background;
    then the reference is swapped. Only a project's very first load makes a request wait.
    """

    def __init__(self, store: ModelStore, start_model: Path | None = None,
                 load: Callable[[Path], Any] = load_predictor, limits: BatchLimits = BatchLimits()):
        self.store = store
        self.start_model = start_model
        self._load = load
        self.limits = limits
        self._lock = threading.Lock()
        self._served: dict[str, _Served] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._labels: dict[tuple[str, str], tuple[str, ...]] = {}
        self._start: LoadedModel | None = None
        self._start_labels: tuple[str, ...] | None = None
        self._warned: set[str] = set()
        self._prefetching: set[str] = set()

    # --- fit ----------------------------------------------------------------------------------------------
    def version_labels(self, project: str, version: str) -> tuple[str, ...]:
        """The labels ``version`` predicts (its manifest's; a committed version never changes, so read once)."""
        key = (project, version)
        if key not in self._labels:
            self._labels[key] = model_labels(self.store.version_dir(project, version))
        return self._labels[key]

    def start_labels(self) -> tuple[str, ...]:
        if self.start_model is None:
            return ()
        if self._start_labels is None:
            self._start_labels = model_labels(self.start_model)
        return self._start_labels

    def start_fits(self, schema: LabelSchema | None) -> bool:
        return schema is not None and fits(self.start_labels(), schema)

    def version_name(self, project: str, schema: LabelSchema | None = None) -> str:
        """The version name that answers for ``project`` now, without loading anything (fast, for /setup): the
        store's announced version (a promoted one is announced once its predictions are published)."""
        announced = self.store.announced(project)
        if announced is not None:
            if schema is not None and not fits(self.version_labels(project, announced), schema):
                # A name of its own for "no suggestions": Label Studio keeps predictions per version name, and must
                # ask again once the config fits (or a new version serves) instead of keeping the empty ones.
                return f"{announced}{UNFIT_SUFFIX}"
            return announced
        if self.start_fits(schema):
            return start_version(self.start_model)
        return UNTRAINED

    # --- serving ------------------------------------------------------------------------------------------
    def serving(self, project: str, schema: LabelSchema) -> LoadedModel | None:
        """The model that answers for ``project``: its announced version, else the start model, if it fits."""
        model = self._project_model(project)
        if model is None:
            return self._start_model() if self.start_fits(schema) else None
        labels = self.version_labels(project, model.version)
        if not fits(labels, schema):
            self._warn_once(f"fit-{project}-{model.version}",
                            "project %s: model %s predicts labels %s, not all in the project's config %s; "
                            "empty suggestions until the next training", project, model.version,
                            list(labels), list(schema.labels))
            return None
        return model

    def _project_model(self, project: str) -> LoadedModel | None:
        """The predictor of the project's announced version, following the store's pointer."""
        stamp = self.store.pointer_stamp(project)
        served = self._served.get(project)
        if served is not None and served.stamp == stamp:
            return served.model
        if stamp is None:
            return None
        if served is not None and served.model is not None:
            self.prefetch(project)
            return served.model
        return self._reload(project)

    def _reload(self, project: str) -> LoadedModel | None:
        """Load the project's announced version unless it is already served (one loader per project at a time)."""
        with self._lock:
            loading = self._loading.setdefault(project, threading.Lock())
        with loading:
            stamp = self.store.pointer_stamp(project)
            served = self._served.get(project)
            if served is not None and served.stamp == stamp:
                return served.model
            version = self.store.announced(project)
            model = served.model if served is not None else None
            if version is not None and (model is None or model.version != version):
                try:
                    model = LoadedModel(version, self._load(self.store.version_dir(project, version)), self.limits)
                    log.info("project %s: serving %s", project, version)
                except Exception:  # noqa: BLE001 - keep serving what we have; the log says why
                    log.exception("project %s: could not load %s; keeping the previous model", project, version)
            self._served[project] = _Served(stamp, model)
            return model

    def _start_model(self) -> LoadedModel | None:
        if self.start_model is None:
            return None
        with self._lock:
            loading = self._loading.setdefault("<start>", threading.Lock())
        with loading:
            if self._start is None:
                try:
                    self._start = LoadedModel(start_version(self.start_model), self._load(self.start_model),
                                              self.limits)
                except Exception:  # noqa: BLE001
                    log.exception("could not load START_MODEL %s", self.start_model)
                    return None
            return self._start

    def prefetch(self, project: str) -> None:
        """Load the project's announced version in the background (after /setup, or when a new one is announced)."""
        stamp = self.store.pointer_stamp(project)
        served = self._served.get(project)
        if stamp is None or (served is not None and served.stamp == stamp):
            return
        with self._lock:
            # Label Studio calls /setup before every prediction: one loading thread per project is enough
            if project in self._prefetching:
                return
            self._prefetching.add(project)

        def load() -> None:
            try:
                self._reload(project)
            finally:
                with self._lock:
                    self._prefetching.discard(project)

        threading.Thread(target=load, name=f"load-{project}", daemon=True).start()

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)
