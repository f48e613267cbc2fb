"""The ML backend's domain logic without HTTP: per-project state, predictions, webhooks, and the training job.

``NerService`` is what the Flask routes call; ``train_project`` is the body of one training run (a child process).
"""
from __future__ import annotations

import functools
import json
import logging
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from backend.jobs import JobQueue, ProgressCallback
from backend.labelstudio import Credentials, LabelStudioClient, LabelStudioError, ProjectClient
from backend.report import failure_block, failure_description, instruction_block, ml_description, report_page
from backend.schema import LabelConfigError, LabelSchema, parse_label_config
from backend.settings import Settings
from backend.spans import ConversionReport, OUTSIDE, has_entities
from backend.splits import split_examples
from backend.store import Manifest, ModelStore, read_json, utc_now
from backend.tasks import choose_annotation, spans_to_results, task_to_example

log = logging.getLogger(__name__)

MODEL_CLASS = "NerBackend"
UNTRAINED = "untrained"
START_PREFIX = "start-"
UNFIT_SUFFIX = " (does not fit the label config)"  # the version name of empty answers while it does not
TRAIN_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED"}
START_TRAINING = "START_TRAINING"
MIN_TRAINING_TASKS = 2


class RequestError(ValueError):
    """A request body the backend cannot use; the message says what is wrong (answered with HTTP 400)."""


class TrainingDataError(RuntimeError):
    """The project has too little usable annotated data to train; the message says what to do."""


def project_id(value: Any) -> str:
    """The Label Studio project id from ``"<id>.<created epoch>"`` (as /setup and /predict send it), an int,
    or a webhook's project object.

    >>> project_id("12.1718000000"), project_id(12), project_id({"id": 12, "title": "x"})
    ('12', '12', '12')
    """
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or value is None:
        raise RequestError("no project id: expected \"<id>.<timestamp>\", an integer, or an object with \"id\"")
    text = str(value).strip().split(".", 1)[0]
    if not text.isdigit():
        raise RequestError(f"project {value!r} is not a Label Studio project id like \"12.1718000000\"")
    return str(int(text))


def model_entity_labels(model_dir: Path) -> tuple[str, ...]:
    """Entity types a saved model predicts, read from its config.json ``id2label`` (no model loading)."""
    config = read_json(Path(model_dir) / "config.json") or {}
    id2label = config.get("id2label") or {}
    tags = [id2label[k] for k in sorted(id2label, key=lambda k: int(k))] if isinstance(id2label, dict) else []
    labels: dict[str, None] = {}
    for tag in tags:
        if tag != OUTSIDE and isinstance(tag, str) and tag[:2] in ("B-", "I-"):
            labels.setdefault(tag[2:], None)
    return tuple(labels)


def fits(model_labels: Sequence[str], schema: LabelSchema) -> bool:
    """A model may serve a project only when every label it can predict is a label of the project's config,
    so a suggestion never carries a label the project does not have."""
    return bool(model_labels) and set(model_labels) <= set(schema.labels)


@functools.lru_cache(maxsize=64)
def _schema_of(label_config: str) -> LabelSchema:
    return parse_label_config(label_config)


@dataclass
class LoadedModel:
    """A predictor in memory with the version it serves; ``lock`` serialises calls (tokenizers are not
    thread-safe)."""

    version: str
    predictor: Any
    labels: tuple[str, ...]
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class ProjectState:
    """What the server remembers about a project between requests (in memory; /setup refills it)."""

    label_config: str | None = None
    hostname: str | None = None
    access_token: str | None = field(default=None, repr=False)
    annotations_since_training: int = 0


@dataclass
class _Served:
    stamp: tuple[int, int] | None
    model: LoadedModel | None


@dataclass(frozen=True)
class WebhookOutcome:
    action: str
    project: str | None
    decision: str


def _load_predictor(model_dir: Path) -> Any:
    from backend.predict import Predictor  # torch is imported on the first prediction, not at start-up

    return Predictor.load(model_dir)


class NerService:
    """Per-project predictions, training triggers, versions and status for the HTTP layer.

    ``store``, ``jobs`` and ``load_predictor`` may be replaced (tests); by default they come from ``settings``.
    """

    def __init__(
        self,
        settings: Settings,
        store: ModelStore | None = None,
        jobs: JobQueue | None = None,
        load_predictor: Callable[[Path], Any] = _load_predictor,
    ):
        self.settings = settings
        self.store = store or ModelStore(settings.model_dir)
        self.jobs = jobs or JobQueue(functools.partial(run_training_job, settings), self.store.root / ".jobs",
                                     nice=settings.train_nice)
        self._load = load_predictor
        self._lock = threading.Lock()
        self._projects: dict[str, ProjectState] = {}
        self._served: dict[str, _Served] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._start: LoadedModel | None = None
        self._start_labels: tuple[str, ...] | None = None
        self._warned: set[str] = set()
        self._prefetching: set[str] = set()
        removed = self.store.clean_temporary()
        if removed:
            log.info("removed %d unfinished training folder(s) left by an earlier run", len(removed))

    # --- per-project state --------------------------------------------------------------------------------
    def _state(self, project: str) -> ProjectState:
        with self._lock:
            return self._projects.setdefault(project, ProjectState())

    def _schema(self, project: str, label_config: str | None) -> LabelSchema | None:
        xml = label_config or self._state(project).label_config
        if not xml:
            return None
        try:
            return _schema_of(xml)
        except LabelConfigError as error:
            self._warn_once(f"config-{project}", "project %s: label config not usable for NER: %s", project, error)
            return None

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    # --- models -------------------------------------------------------------------------------------------
    def _project_model(self, project: str) -> LoadedModel | None:
        """The predictor of the project's current version, following the store's pointer.

        When a new version is promoted, the old predictor keeps answering while the new one loads in the
        background; then the reference is swapped. Only a project's very first load makes a request wait.
        """
        stamp = self.store.pointer_stamp(project)
        served = self._served.get(project)
        if served is not None and served.stamp == stamp:
            return served.model
        if stamp is None:
            return None
        if served is not None and served.model is not None:
            self._prefetch(project)
            return served.model
        return self._reload(project)

    def _reload(self, project: str) -> LoadedModel | None:
        """Load the project's current version unless it is already served (one loader per project at a time)."""
        with self._lock:
            loading = self._loading.setdefault(project, threading.Lock())
        with loading:
            stamp = self.store.pointer_stamp(project)
            served = self._served.get(project)
            if served is not None and served.stamp == stamp:
                return served.model
            version = self.store.current(project)
            model = served.model if served is not None else None
            if version is not None and (model is None or model.version != version):
                folder = self.store.version_dir(project, version)
                try:
                    predictor = self._load(folder)
                    model = LoadedModel(version, predictor, tuple(predictor.entity_labels))
                    log.info("project %s: serving %s", project, version)
                except Exception:  # noqa: BLE001 - keep serving what we have; the log says why
                    log.exception("project %s: could not load %s; keeping the previous model", project, version)
            self._served[project] = _Served(stamp, model)
            return model

    def _start_model_labels(self) -> tuple[str, ...]:
        if self.settings.start_model is None:
            return ()
        if self._start_labels is None:
            self._start_labels = model_entity_labels(self.settings.start_model)
        return self._start_labels

    def _start_version(self) -> str:
        return start_version(self.settings)

    def _start_model(self) -> LoadedModel | None:
        if self.settings.start_model is None:
            return None
        with self._lock:
            loading = self._loading.setdefault("<start>", threading.Lock())
        with loading:
            if self._start is None:
                try:
                    predictor = self._load(self.settings.start_model)
                    self._start = LoadedModel(self._start_version(), predictor, tuple(predictor.entity_labels))
                except Exception:  # noqa: BLE001
                    log.exception("could not load START_MODEL %s", self.settings.start_model)
                    return None
            return self._start

    def _serving_model(self, project: str, schema: LabelSchema) -> LoadedModel | None:
        """The model that answers for ``project``: its current version, else the start model, if it fits."""
        model = self._project_model(project)
        if model is None and self._start_model_fits(schema):
            model = self._start_model()
        if model is not None and not fits(model.labels, schema):
            self._warn_once(f"fit-{project}-{model.version}",
                            "project %s: model %s predicts labels %s, not all in the project's config %s; "
                            "empty suggestions until the next training", project, model.version,
                            list(model.labels), list(schema.labels))
            return None
        return model

    def _start_model_fits(self, schema: LabelSchema | None) -> bool:
        return schema is not None and fits(self._start_model_labels(), schema)

    def model_version(self, project: str, schema: LabelSchema | None = None) -> str:
        """The version name that answers for ``project`` now, without loading anything (fast, for /setup)."""
        current = self.store.current(project)
        if current is not None:
            if schema is not None and not fits(model_entity_labels(self.store.version_dir(project, current)), schema):
                # A name of its own for "no suggestions": Label Studio keeps predictions per version name, and must
                # ask again once the config fits (or a new version serves) instead of keeping the empty ones.
                return f"{current}{UNFIT_SUFFIX}"
            return current
        if self._start_model_fits(schema):
            return self._start_version()
        return UNTRAINED

    def _prefetch(self, project: str) -> None:
        """Load the project's current version in the background (after /setup, or when a new one is promoted)."""
        served = self._served.get(project)
        if served is not None and served.stamp == self.store.pointer_stamp(project):
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

    # --- protocol -----------------------------------------------------------------------------------------
    def setup(self, body: dict) -> dict:
        """/setup: remember the project's config and Label Studio address; answer its current version."""
        if not isinstance(body, dict):
            raise RequestError("the /setup body must be a JSON object")
        project = project_id(body.get("project"))
        state = self._state(project)
        if isinstance(body.get("schema"), str) and body["schema"].strip():
            state.label_config = body["schema"]
        if isinstance(body.get("hostname"), str) and body["hostname"].strip():
            state.hostname = body["hostname"].strip().rstrip("/")
        if isinstance(body.get("access_token"), str) and body["access_token"].strip():
            state.access_token = body["access_token"].strip()
        if self.store.pointer_stamp(project) is not None:
            self._prefetch(project)
        return {"model_version": self.model_version(project, self._schema(project, None))}

    def predict(self, body: dict) -> list[dict]:
        """/predict: one ``{"result", "score", "model_version"}`` per task, in the order of ``body["tasks"]``."""
        if not isinstance(body, dict):
            raise RequestError("the /predict body must be a JSON object with \"tasks\" and \"project\"")
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise RequestError("the /predict body needs \"tasks\": a list of task objects")
        project = project_id(body.get("project"))
        label_config = body.get("label_config") if isinstance(body.get("label_config"), str) else None
        schema = self._schema(project, label_config)
        model = self._serving_model(project, schema) if schema is not None else None
        if model is None:
            version = self.model_version(project, schema) if schema is not None else UNTRAINED
            return [{"result": [], "score": 0.0, "model_version": version} for _ in tasks]
        texts = [_task_text(task, schema) for task in tasks]
        with model.lock:
            predictions = model.predictor.predict(texts)
        if len(predictions) != len(tasks):
            raise RuntimeError(f"the predictor returned {len(predictions)} predictions for {len(tasks)} tasks")
        return [
            {
                "result": spans_to_results(prediction.spans, schema),
                "score": round(float(prediction.score), 4),
                "model_version": model.version,
            }
            for prediction in predictions
        ]

    def handle_webhook(self, body: Any) -> WebhookOutcome:
        """/webhook: decide whether to start training; never raises and never does slow work."""
        if not isinstance(body, dict):
            return WebhookOutcome("", None, "ignored: the body is not a JSON object")
        action = str(body.get("action") or "")
        if action != START_TRAINING and action not in TRAIN_ACTIONS:
            return WebhookOutcome(action, None, "ignored")
        try:
            project = project_id(body.get("project"))
        except RequestError:
            return WebhookOutcome(action, None, "ignored: no project id")
        state = self._state(project)
        if action == START_TRAINING:
            return WebhookOutcome(action, project, self._start_training(project, state))
        annotation = body.get("annotation")
        if action == "ANNOTATION_CREATED" and isinstance(annotation, dict) and annotation.get("was_cancelled"):
            # a skipped task: training never uses cancelled annotations, so it is no reason to train again
            return WebhookOutcome(action, project, "ignored: a skipped task (cancelled annotation)")
        with self._lock:
            state.annotations_since_training += 1
            count = state.annotations_since_training
        threshold = self.settings.train_every_n
        if threshold and count >= threshold:
            return WebhookOutcome(action, project, self._start_training(project, state))
        return WebhookOutcome(action, project, f"counted: {count} of {threshold or 'off'} new annotations")

    def _start_training(self, project: str, state: ProjectState) -> str:
        with self._lock:
            state.annotations_since_training = 0
        # Only the address and token Label Studio gave in /setup travel to the child (through a pipe, never
        # a file); the child prefers LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY from the settings.
        payload = {"hostname": state.hostname, "access_token": state.access_token}
        return self.jobs.trigger(project, payload)

    def _annotations_since_training(self, project: str) -> int:
        with self._lock:  # read only: a status query must not create a project
            state = self._projects.get(project)
        return state.annotations_since_training if state is not None else 0

    # --- reading ------------------------------------------------------------------------------------------
    def projects(self) -> list[str]:
        with self._lock:
            known = set(self._projects)
        known |= set(self.store.projects()) | set(self.jobs.projects())
        return sorted(known, key=lambda p: (len(p), p))

    def project_status(self, project: str) -> dict[str, Any]:
        job = self.jobs.status(project).to_dict()
        job.pop("project", None)
        return {
            "current_version": self.store.current(project),
            "training": job.pop("running"),
            "annotations_since_training": self._annotations_since_training(project),
            **job,
        }

    def status(self, project: str | None = None) -> dict[str, Any]:
        """/status: per project, the current version, whether training runs, its progress, the last error."""
        projects = [project_id(project)] if project is not None else self.projects()
        return {
            "train_every_n": self.settings.train_every_n,
            "projects": {p: self.project_status(p) for p in projects},
        }

    def versions(self, project: str) -> dict[str, Any]:
        """/versions: the project's version names (what Label Studio reads) and their details."""
        project = project_id(project)
        details = [info.to_dict() for info in self.store.versions(project)]
        return {
            "project": project,
            "current": self.store.current(project),
            "versions": [d["version"] for d in details],
            "details": details,
        }

    def all_versions(self) -> dict[str, Any]:
        """/versions without a project (Label Studio 1.23 asks so: its GET carries no body): every project's
        versions, named ``<project>/<version>`` when several projects have some, so no two look alike."""
        per_project = {p: self.versions(p) for p in self.store.projects()}
        with_versions = [p for p, listing in per_project.items() if listing["versions"]]
        if len(with_versions) <= 1:
            names = [v for p in with_versions for v in per_project[p]["versions"]]
        else:
            names = [f"{p}/{v}" for p in with_versions for v in per_project[p]["versions"]]
        return {"versions": names, "projects": per_project}

    def report(self, project: str) -> str:
        """/report: the project's HTML report page."""
        project = project_id(project)
        manifests = [m for name in self.store.version_names(project) if (m := self.store.manifest(project, name))]
        return report_page(project, manifests, self.store.current(project), self.project_status(project))

    def health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": MODEL_CLASS}

    def shutdown(self) -> None:
        self.jobs.shutdown()


def _task_text(task: Any, schema: LabelSchema) -> str:
    """The text a task holds under the config's data key; "" (no suggestions) when it has none."""
    data = task.get("data") if isinstance(task, dict) else None
    text = data.get(schema.data_key) if isinstance(data, dict) else None
    return text if isinstance(text, str) else ""


# --- the training job (runs in a child process) ---------------------------------------------------------------
def training_config(settings: Settings):
    """``backend.train.TrainingConfig`` from the settings: base model plus the TRAIN_* overrides that are set."""
    from backend.train import TrainingConfig

    # every TrainingKnobs field is a TrainingConfig field: a renamed one fails here, loudly
    return TrainingConfig(base_model=settings.base_model, **settings.training.overrides())


def credentials_for(settings: Settings, payload: dict) -> Credentials:
    """LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY, each falling back to what /setup sent (hostname, access_token)."""
    url = settings.label_studio_url or (payload or {}).get("hostname")
    key = settings.label_studio_api_key or (payload or {}).get("access_token")
    if not url or not key:
        raise LabelStudioError(
            "no Label Studio credentials: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY for the backend, "
            "or let Label Studio call /setup first (open the project's Model settings)"
        )
    return Credentials(url.rstrip("/"), key)


def start_version(settings: Settings) -> str:
    """The version name predictions of START_MODEL carry (``start-<folder name>``)."""
    return START_PREFIX + Path(settings.start_model or "model").name


def _previous_model(settings: Settings, store: ModelStore, project: str, schema: LabelSchema) -> tuple[str, Path] | None:
    """The model serving before this run (current version, else a fitting start model) for the comparison; None
    when there is none, or when the current version no longer fits the config (a label renamed or removed): it
    cannot serve, so it cannot hold back a candidate that can."""
    current = store.current(project)
    if current is not None:
        folder = store.version_dir(project, current)
        return (current, folder) if fits(model_entity_labels(folder), schema) else None
    if settings.start_model is not None and fits(model_entity_labels(settings.start_model), schema):
        return start_version(settings), settings.start_model
    return None


def train_project(
    settings: Settings,
    project: str,
    client: ProjectClient,
    store: ModelStore,
    progress: ProgressCallback | None = None,
    train_fn: Callable | None = None,
    evaluate_fn: Callable | None = None,
) -> dict[str, Any]:
    """One training run: fetch -> convert -> split -> train -> evaluate candidate and current -> keep the
    version, promote it if not worse -> report back. Returns a summary (JSON-able)."""
    if train_fn is None or evaluate_fn is None:
        from backend.train import evaluate_model, train_model

        train_fn, evaluate_fn = train_fn or train_model, evaluate_fn or evaluate_model
    progress = progress or (lambda *args, **kwargs: None)
    project_number = int(project)

    progress("fetching")
    schema = parse_label_config(client.label_config(project_number))
    tasks = client.annotated_tasks(project_number)
    conversion = ConversionReport()
    keyed = []
    for task in tasks:
        example = task_to_example(task, schema, conversion)
        if example is not None:
            keyed.append((task.get("id"), (task, example)))
    if conversion:
        log.info("project %s: conversion notes: %s", project, conversion.summary())
    if len(keyed) < MIN_TRAINING_TASKS:
        raise TrainingDataError(
            f"project {project} has {len(keyed)} usable annotated task(s) of {len(tasks)} fetched; at least "
            f"{MIN_TRAINING_TASKS} are needed. Annotate more tasks, then start training again."
            + (f" Conversion notes: {conversion.summary()}" if conversion else "")
        )
    train, validation = split_examples(keyed, settings.validation_fraction)
    train_examples = [example for _, example in train]
    validation_examples = [example for _, example in validation]

    progress("training", step=0, total_steps=0)
    config = training_config(settings)
    temporary = store.new_temporary_dir(project)
    committed = False
    try:
        started = time.monotonic()

        def on_progress(p) -> None:
            progress("training", step=p.step, total_steps=p.total_steps, epoch=p.epoch)

        # Training picks its best epoch on a carve of its own: the project's validation split stays unseen, so
        # the candidate and the current model are compared on equal terms.
        result = train_fn(train_examples, schema.bio_labels, config, temporary, progress=on_progress)
        seconds = time.monotonic() - started
        if Path(result.model_dir).resolve() != temporary.resolve():
            raise RuntimeError(f"training saved the model in {result.model_dir}, expected {temporary}")

        progress("evaluating")
        # Validation tasks without any entity score F1 0 for every model: no scores rather than a misleading 0.
        scorable = has_entities(validation_examples)
        scores = evaluate_fn(temporary, validation_examples).to_dict() if scorable else None
        previous = _previous_model(settings, store, project, schema)
        previous_scores = None
        if previous is not None and scorable:
            try:
                previous_scores = evaluate_fn(previous[1], validation_examples).to_dict()
            except Exception:  # noqa: BLE001 - an unreadable old model must not block a new one
                log.exception("project %s: could not evaluate %s; promoting the new version", project, previous[0])

        manifest = Manifest(
            project=project,
            base_model=settings.base_model,
            labels=list(schema.labels),
            task_ids=[task.get("id") for _, (task, _) in keyed],
            annotation_ids=[(choose_annotation(task) or {}).get("id") for _, (task, _) in keyed],
            train_size=len(train_examples),
            validation_size=len(validation_examples),
            training_seconds=round(seconds, 1),
            settings={"training": _json_safe(asdict(config)), "validation_fraction": settings.validation_fraction,
                      "promote_if_not_worse": settings.promote_if_not_worse},
            scores=scores,
            previous_version=previous[0] if previous else None,
            previous_scores=previous_scores,
        )
        current = store.current(project)
        manifest.promoted, manifest.decision = _decide(settings, manifest, current if previous is None else None)
        version = store.commit(project, temporary, manifest)
        committed = True
        if manifest.promoted:
            store.promote(project, version)
        log.info("project %s: trained %s (F1 %s); %s", project, version, manifest.f1, manifest.decision)
    finally:
        if not committed:
            shutil.rmtree(temporary, ignore_errors=True)

    if settings.report_to_label_studio:
        progress("reporting")
        _report_back(settings, client, project_number, instruction_block(manifest), ml_description(manifest))
    return {"version": version, "promoted": manifest.promoted, "f1": manifest.f1,
            "previous_version": manifest.previous_version, "previous_f1": manifest.previous_f1,
            "train_size": manifest.train_size, "validation_size": manifest.validation_size,
            "decision": manifest.decision}


def _decide(settings: Settings, manifest: Manifest, unfit_current: str | None = None) -> tuple[bool, str]:
    """Whether the new version is promoted, and why. ``unfit_current``: the serving version when it no longer fits
    the label config (it cannot serve, so it holds nothing back)."""
    if unfit_current is not None:
        return True, f"promoted: {unfit_current} does not fit the label config any more, so it cannot serve"
    if not settings.promote_if_not_worse:
        return True, "promoted (PROMOTE_IF_NOT_WORSE is off)"
    if manifest.previous_version is None:
        return True, "promoted: first model of the project"
    if manifest.f1 is None and manifest.validation_size:
        return True, (f"promoted: no validation scores to compare (the {manifest.validation_size} validation "
                      "task(s) have no entities)")
    if manifest.f1 is None or manifest.previous_f1 is None:
        return True, "promoted: no validation scores to compare"
    if manifest.f1 >= manifest.previous_f1:
        return True, f"promoted: F1 {manifest.f1:.3f} >= {manifest.previous_f1:.3f} of {manifest.previous_version}"
    return False, f"kept {manifest.previous_version}: F1 {manifest.f1:.3f} < {manifest.previous_f1:.3f}"


def _json_safe(data: dict) -> dict:
    return json.loads(json.dumps(data, default=str))


def _report_back(settings: Settings, client: ProjectClient, project: int, block: str, description: str) -> None:
    """Write the scores into the project; a failure here is logged, never fatal (the version is already kept)."""
    try:
        client.write_instruction_block(project, block)
        client.write_ml_description(project, description, settings.backend_url)
    except Exception as error:  # noqa: BLE001
        log.warning("project %s: could not write the report into Label Studio: %s", project, error)


def run_training_job(settings: Settings, project: str, payload: dict, progress: ProgressCallback) -> dict[str, Any]:
    """The training child's entry: build the Label Studio client and the store, run ``train_project``; on
    failure, report the error into the project like a result (the previous model keeps serving)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [training] %(name)s: %(message)s")
    # the SDK's client logs every request, including the 404 that ends its paging; keep only problems
    logging.getLogger("httpx").setLevel(logging.WARNING)
    store = ModelStore(settings.model_dir)
    backend_auth = (settings.basic_auth_user, settings.basic_auth_pass) if settings.auth_enabled else None
    client = LabelStudioClient(credentials_for(settings, payload), backend_auth=backend_auth)
    try:
        return train_project(settings, project, client, store, progress)
    except Exception as error:
        if settings.report_to_label_studio:
            message = f"{type(error).__name__}: {error}"
            when = utc_now()
            _report_back(settings, client, int(project), failure_block(message, store.current(project), when),
                         failure_description(message, store.current(project), when))
        raise
