"""The ML backend's domain logic without HTTP: per-project state, predictions, webhooks, versions and status.

``NerService`` is what the Flask routes call. It holds a ``ModelCache`` (which model answers) and the training
loop's queue (``backend.training.jobs.job_queue``), whose jobs run the training run by name in a child process, or
on an RQ worker with TRAINING_QUEUE: this process never imports the training code.
"""
from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from backend.data.schema import LabelConfigError, LabelSchema, parse_label_config
from backend.data.tasks import spans_to_results, task_text
from backend.serving.batching import Admission
from backend.serving.model_cache import UNTRAINED, BatchLimits, ModelCache, load_predictor
from backend.shared.card import report_failed_run
from backend.shared.labelstudio import confirm_project_exists
from backend.shared.report import publish_resumes, report_page, review_section, unfit_message
from backend.shared.settings import Settings
from backend.shared.store import LOW_DISK_MB, ModelStore, free_megabytes
from backend.training.jobs import PUBLISH, REVIEW, JobQueue, job_queue

log = logging.getLogger(__name__)

MODEL_CLASS = "NerBackend"
# Label Studio 1.23 names the delete event ANNOTATIONS_DELETED (tasks/api.py); the singular is kept for older ones
TRAIN_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "ANNOTATION_DELETED"}
START_TRAINING = "START_TRAINING"
TASKS_CREATED = "TASKS_CREATED"  # new tasks: the serving version's predictions are published for them
PROJECT_UPDATED = "PROJECT_UPDATED"  # a changed label config may withdraw the serving version
# Label Studio stores a /predict answer only after the whole request (~60 s for 1,000 tasks, measured): within this
# window a second request for a task answered with the same version gets no prediction for it (RecentAnswers)
ANSWERED_WINDOW_S = 180.0
RESUME_AFTER_S = 60.0  # a due publishing is asked for again by /setup at most this often (per project and process)


class RequestError(ValueError):
    """A request body the backend cannot use; the message says what is wrong (answered with HTTP 400)."""


MAX_PROJECT_DIGITS = 18  # a Django AutoField/BigAutoField id fits; a longer "id" is no project
_PROJECT_KEY = re.compile(r"([0-9]{1,%d})(?:\.[0-9]{1,32})?" % MAX_PROJECT_DIGITS)


def project_id(value: Any) -> str:
    """The Label Studio project id from ``"<id>.<created epoch>"`` (as /setup and /predict send it), a positive
    integer, or a webhook's project object; anything else is a ``RequestError`` naming the field.

    Only ASCII digits count (``"²"`` is a digit to ``str.isdigit``, not an id), and at most 18 of them.

    >>> project_id("12.1718000000"), project_id(12), project_id({"id": 12, "title": "x"})
    ('12', '12', '12')
    """
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or value is None:
        raise RequestError("project: missing; expected \"<id>.<timestamp>\", a positive integer, or an object with \"id\"")
    text = str(value).strip() if isinstance(value, (int, str)) else ""
    match = _PROJECT_KEY.fullmatch(text)
    if match is None or int(match.group(1)) < 1:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise RequestError(f"project: {shown!r} is not a Label Studio project id (a positive whole number of at most "
                           f"{MAX_PROJECT_DIGITS} digits, or \"<id>.<timestamp>\" as in \"12.1718000000\")")
    return str(int(match.group(1)))


def _holds(task: Any, version: str) -> bool:
    """Whether a task of a /predict body already holds a prediction of ``version`` (Label Studio sends them)."""
    predictions = task.get("predictions") if isinstance(task, dict) else None
    return isinstance(predictions, list) and any(
        isinstance(p, dict) and p.get("model_version") == version for p in predictions)


def data_key_warning(key: str, fields: tuple[str, ...]) -> str:
    had = ", ".join(repr(f) for f in fields[:5]) or "no fields"
    return (f"tasks Label Studio asked predictions for have no field {key!r}, which the label config reads "
            f"(value=\"${key}\"); they hold {had}: their suggestions are empty. Make the config's <Text> read the "
            "tasks' field, or import tasks with that field")


@functools.lru_cache(maxsize=64)
def _schema_of(label_config: str) -> LabelSchema:
    return parse_label_config(label_config)


@dataclass
class ProjectState:
    """What the server remembers about a project between requests (in memory; /setup refills it)."""

    label_config: str | None = None
    hostname: str | None = None
    access_token: str | None = field(default=None, repr=False)
    annotations_since_training: int = 0
    # the last /predict whose tasks lacked the field the label config reads: (that field, the fields they had)
    missing_data_key: tuple[str, tuple[str, ...]] | None = None


class RecentAnswers:
    """The tasks this process answered with a version lately, so that two of Label Studio's requests for one task
    at once (Retrieve Predictions beside the labeling stream, both past Label Studio's check before either stored
    its answer) store the version once: the later one gets no prediction for that task."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._lock = threading.Lock()
        self._when: dict[tuple[str, str, Any], float] = {}
        self._order: deque[tuple[float, tuple[str, str, Any]]] = deque()

    def claim(self, project: str, version: str, task_ids: list[Any]) -> list[bool]:
        """For each task id: True when it is this request's to answer (not answered with ``version`` within the
        window; None ids always are), recording it as answered now."""
        now = time.monotonic()
        claimed = []
        with self._lock:
            while self._order and now - self._order[0][0] > self.window_s:
                when, key = self._order.popleft()
                if self._when.get(key) == when:
                    del self._when[key]
            for task_id in task_ids:
                key = (project, version, task_id)
                fresh = task_id is None or now - self._when.get(key, -self.window_s - 1) > self.window_s
                claimed.append(fresh)
                if fresh and task_id is not None:
                    self._when[key] = now
                    self._order.append((now, key))
        return claimed


@dataclass(frozen=True)
class WebhookOutcome:
    action: str
    project: str | None
    decision: str


class NerService:
    """Per-project predictions, training triggers, versions and status for the HTTP layer.

    ``store``, ``jobs`` and ``load_predictor`` may be replaced (tests); by default they come from ``settings``.
    """

    def __init__(
        self,
        settings: Settings,
        store: ModelStore | None = None,
        jobs: JobQueue | None = None,
        load_predictor: Callable[[Path], Any] = load_predictor,
        confirm_project: Callable[[str], bool] | None = None,
    ):
        self.settings = settings
        self.store = store or ModelStore(settings.model_dir)
        self.jobs = jobs or job_queue(settings, self.store.root / ".jobs", self._on_abandoned)
        self.models = ModelCache(self.store, settings.start_model, load_predictor,
                                 BatchLimits(settings.predict_max_wait_ms, settings.predict_max_subwords))
        self._admission = Admission(settings.predict_max_requests)
        self._answered = RecentAnswers(ANSWERED_WINDOW_S)
        self._confirm = confirm_project or functools.partial(confirm_project_exists, settings)
        self._lock = threading.Lock()
        self._projects: dict[str, ProjectState] = {}
        self._warned: set[str] = set()
        self._publish_asked: dict[tuple[str, str], float] = {}  # (project, version) -> when /setup last asked
        if not settings.training_queue:  # with a queue, replicas never write the store: workers clean it
            removed = self.store.clean_temporary()
            if removed:
                log.info("removed %d unfinished training folder(s) left by an earlier run", len(removed))
            for project, answer in self.jobs.resume().items():
                log.info("project %s: the run an earlier server owed it: %s", project, answer)

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
        self.models.prefetch(project)
        self._resume_publishing(project, state)
        return {"model_version": self.models.version_name(project, self._schema(project, None))}

    def _resume_publishing(self, project: str, state: ProjectState) -> None:
        """Start the publishing of a promoted version that is not announced yet (interrupted by a restart, a killed
        worker, a full disk or Label Studio going away, or never started here), or the withdrawal of one that no
        longer fits the label config. Label Studio calls /setup before every prediction: asked at most once per
        RESUME_AFTER_S, and never while a run goes (it publishes at its end)."""
        current = self.store.current(project)
        if current is None or not self.settings.publish_predictions:
            return
        unfit = self._unfit_labels(project, current)
        published = self.store.publishing(project)
        done = "unfit" if unfit else "published"
        if published.get("version") == current and published.get("state") == done and (
                unfit or self.store.announced(project) == current):
            return  # withdrawn, or written and announced, already
        if self.jobs.status(project).running:
            return
        now = time.monotonic()
        with self._lock:
            asked = self._publish_asked.get((project, current))
            if asked is not None and now - asked < RESUME_AFTER_S:
                return
            self._publish_asked[(project, current)] = now
        decision = self._publish(project, state)
        log.info("project %s: %s of %s: %s", project, "withdrawal" if unfit else "publishing", current, decision)

    def _unfit_labels(self, project: str, version: str) -> list[str]:
        """The labels ``version`` predicts that the project's label config (as last seen) lacks; [] when it fits or
        the config is not known here."""
        schema = self._schema(project, None)
        if schema is None:
            return []
        labels = self.models.version_labels(project, version)
        return sorted(set(labels) - set(schema.labels)) if labels else []

    def _on_abandoned(self, project: str, payload: dict, message: str) -> None:
        """The queue's watchdog found a run whose worker died: tell Label Studio, and resume the publishing it may
        have left half done."""
        report_failed_run(self.settings, project, payload, message, review=payload.get("action") == REVIEW)
        if self.jobs.status(project).running:
            return  # a job was queued meanwhile (a /setup resumed it already): it publishes
        if self.settings.publish_predictions and self.store.announcement_due(project) is not None:
            log.info("project %s: resuming the publishing of %s: %s", project, self.store.current(project),
                     self.jobs.trigger(project, {**payload, "action": PUBLISH}))

    def predict(self, body: dict) -> list[dict | list]:
        """/predict: one ``{"result", "score", "model_version"}`` per task, in the order of ``body["tasks"]``; an
        empty list (Label Studio stores nothing for it) for a task that already holds the version answered, or, as
        Label Studio sends a task to store its answer, that another such request got it for moments ago: so no task
        holds a version twice."""
        if not isinstance(body, dict):
            raise RequestError("the /predict body must be a JSON object with \"tasks\" and \"project\"")
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise RequestError("the /predict body needs \"tasks\": a list of task objects")
        project = project_id(body.get("project"))
        label_config = body.get("label_config") if isinstance(body.get("label_config"), str) else None
        schema = self._schema(project, label_config)
        model = self.models.serving(project, schema) if schema is not None else None
        if model is None:  # no suggestions: still at most one answer of that name per task
            version = self.models.version_name(project, schema) if schema is not None else UNTRAINED
            return [{"result": [], "score": 0.0, "model_version": version} if ok else []
                    for ok in self._to_answer(project, version, body, tasks)]
        self._check_data_key(project, schema, tasks)
        answer = self._to_answer(project, model.version, body, tasks)
        texts = [task_text(task, schema.data_key) for task, ok in zip(tasks, answer) if ok]
        with self._admission:  # Overloaded (503) when too many wait: they must not hold every server thread
            predictions = model.predict(texts) if texts else []
        if len(predictions) != len(texts):
            raise RuntimeError(f"the predictor returned {len(predictions)} predictions for {len(texts)} tasks")
        answers = iter(predictions)
        results: list[dict | list] = []
        for ok in answer:
            if not ok:
                results.append([])
                continue
            prediction = next(answers)
            results.append({"result": spans_to_results(prediction.spans, schema), "score": prediction.shown_score,
                            "model_version": model.version})
        return results

    def _to_answer(self, project: str, version: str, body: dict, tasks: list) -> list[bool]:
        """For each task, whether /predict answers it with ``version``: not when it holds that version already, nor
        when another of Label Studio's requests got it moments ago (only tasks as Label Studio sends them to store
        the answer, with their "predictions"; never an interactive request, which carries a context and stores
        nothing)."""
        answer = [not _holds(task, version) for task in tasks]
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        stored = [ok and not params.get("context") and isinstance(task, dict)
                  and isinstance(task.get("predictions"), list) for task, ok in zip(tasks, answer)]
        claimed = self._answered.claim(project, version,
                                       [task.get("id") if keep else None for task, keep in zip(tasks, stored)])
        return [ok and fresh for ok, fresh in zip(answer, claimed)]

    def _check_data_key(self, project: str, schema: LabelSchema, tasks: list) -> None:
        """Name it (log, /status) when the tasks lack the field the label config reads (``$text`` changed to
        ``$review``, say): their suggestions are empty, and that must never be silent."""
        datas = [task.get("data") for task in tasks if isinstance(task, dict) and isinstance(task.get("data"), dict)]
        lacking = [data for data in datas if schema.data_key not in data]
        state = self._state(project)
        if not lacking:
            if datas:
                state.missing_data_key = None
            return
        fields = tuple(sorted({key for data in lacking for key in data}))
        state.missing_data_key = (schema.data_key, fields)
        self._warn_once(f"data-key-{project}-{schema.data_key}", "project %s: %s", project,
                        data_key_warning(schema.data_key, fields))

    def handle_webhook(self, body: Any) -> WebhookOutcome:
        """/webhook: decide whether to start training; never raises and never does slow work."""
        if not isinstance(body, dict):
            return WebhookOutcome("", None, "ignored: the body is not a JSON object")
        action = str(body.get("action") or "")
        if action not in (START_TRAINING, TASKS_CREATED, PROJECT_UPDATED) and action not in TRAIN_ACTIONS:
            return WebhookOutcome(action, None, "ignored")
        try:
            project = project_id(body.get("project"))
        except RequestError:
            return WebhookOutcome(action, None, "ignored: no project id")
        if not self._known(project):
            # state and training runs are made only for projects this backend serves (/setup, a version, a run) or
            # that Label Studio confirms exist: an unauthenticated webhook must not grow state or start work
            return WebhookOutcome(action, project, "ignored: unknown project (Label Studio has not called /setup "
                                                   "for it, and it could not be confirmed with LABEL_STUDIO_URL)")
        state = self._state(project)
        if action == START_TRAINING:
            return WebhookOutcome(action, project, self._start_training(project, state))
        if action == TASKS_CREATED:
            return WebhookOutcome(action, project, self._publish(project, state))
        if action == PROJECT_UPDATED:
            return WebhookOutcome(action, project, self._config_changed(project, state, body.get("project")))
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
        # the address and token Label Studio gave in /setup travel to the run (a pipe to the child, or the job in
        # Redis); the run prefers LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY from the settings
        return self.jobs.trigger(project, self._run_payload(state))

    def _run_payload(self, state: ProjectState) -> dict:
        """What a run needs from /setup: Label Studio's address and token, the token only when LABEL_STUDIO_API_KEY
        is not set (the run prefers the key; a payload may sit in Redis)."""
        token = None if self.settings.label_studio_api_key else state.access_token
        return {"hostname": state.hostname, "access_token": token}

    def _publish(self, project: str, state: ProjectState) -> str:
        """Publish the promoted version's predictions in a job of its own (never in this process), unless
        publishing is off or no version serves. During a run it is one more job after it (a training press kept
        meanwhile stays a training: ``jobs.merge_payloads``), so tasks imported meanwhile are not missed."""
        if not self.settings.publish_predictions:
            return "ignored: PUBLISH_PREDICTIONS is off"
        if self.store.current(project) is None:
            return "ignored: no version serves yet"
        payload = {**self._run_payload(state), "action": PUBLISH}
        return f"publishing: {self.jobs.trigger(project, payload)}"

    def _config_changed(self, project: str, state: ProjectState, found: Any) -> str:
        """PROJECT_UPDATED: follow the project's label config; when the promoted version no longer fits it, a job
        withdraws its predictions (the project's model version stops naming them). The body is a hint: the job
        reads the config from Label Studio itself."""
        config = found.get("label_config") if isinstance(found, dict) else None
        if not isinstance(config, str) or not config.strip():
            return "ignored: no label config in the body"
        before = self._schema(project, None)
        state.label_config = config
        if self._schema(project, None) == before:  # the same labels and field (however the XML is written)
            return "ignored: the label config is unchanged"
        current = self.store.current(project)
        unfit = self._unfit_labels(project, current) if current else []
        if not unfit:
            return "label config followed"
        if not self.settings.publish_predictions:
            return f"label config followed; {current} does not fit it (publishing is off: nothing to withdraw)"
        return f"label config followed; {current} does not fit it: withdrawing: {self._publish(project, state)}"

    def _known(self, project: str) -> bool:
        """Whether ``project`` was set up here, has a version or a training run, or Label Studio confirms it."""
        with self._lock:
            if project in self._projects:
                return True
        if self.store.has_project(project) or project in self.jobs.projects():
            return True
        return self._confirm(project)

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
        running = job.pop("running")
        return {
            "current_version": self.store.current(project),
            "training": running,
            "annotations_since_training": self._annotations_since_training(project),
            "disk_mb": round(self.store.disk_bytes(project) / 2**20, 1) if self.store.has_project(project) else 0.0,
            "announced_version": self.store.announced(project),
            "publishing": self.store.publishing(project) if self.store.has_project(project) else {},
            # a job that only waits in the queue publishes nothing yet: its warnings stay
            "warnings": self._warnings(project, job.get("last_result"), running and job.get("queued") is None),
            **job,
        }

    def _warnings(self, project: str, last_result: Any, running: bool = False) -> list[str]:
        """What a lead should know and act on: an unreadable store, a report that did not reach Label Studio, a
        publishing that stopped (and when it resumes), a version that no longer fits the labels, tasks without the
        field the config reads, a disk about to fill up."""
        warnings = self.store.problems(project)
        result = last_result if isinstance(last_result, dict) else {}
        # a review's summary (a review job's result, or the "review" of a training's that a review followed)
        review = result if "version" not in result else result.get("review")
        if result.get("report_error") and review is not result:
            warnings.append(f"the scores of {result.get('version')} could not be written into Label Studio "
                            f"({result['report_error']}); the version is kept, and the next run reports again")
        if isinstance(review, dict) and review.get("report_error"):
            warnings.append(f"the review could not be written into Label Studio ({review['report_error']}): the "
                            "Data Manager tab and the Instructions do not show it; GET /review and the report page "
                            "do, and the next review writes it again")
        warnings += self._publishing_warnings(project, running)
        with self._lock:
            state = self._projects.get(project)
        if state is not None and state.missing_data_key is not None:
            warnings.append(data_key_warning(*state.missing_data_key))
        free = free_megabytes(self.store.root)
        if free is not None and free < LOW_DISK_MB:
            warnings.append(f"only {free:.0f} MB free on the disk of MODEL_DIR: training needs room for a new "
                            "version; free space or lower KEEP_VERSIONS")
        return warnings

    def _publishing_warnings(self, project: str, running: bool) -> list[str]:
        if not self.settings.publish_predictions or not self.store.has_project(project):
            return []
        current, record = self.store.current(project), self.store.publishing(project)
        unfit = self._unfit_labels(project, current) if current else []
        if unfit or (record.get("state") == "unfit" and record.get("version") == current):
            return [unfit_message(current, unfit or record.get("missing_labels") or [])]
        due = self.store.announcement_due(project)
        mine = record.get("version") == due
        at = f" at {record.get('written', 0)}/{record.get('total', 0)}" if mine and record.get("total") else ""
        if due is not None and not running:
            if mine and record.get("state") == "failed":
                return [f"publishing {due} stopped{at} ({record.get('error')}); {publish_resumes(due)}"]
            return [f"publishing {due} interrupted{at}; {publish_resumes(due)}" if mine else
                    f"{due} is promoted but its predictions are not published yet; {publish_resumes(due)}"]
        if due is None and current is not None and record.get("version") == current and record.get("state") == "failed":
            return [f"the predictions of {current} for newly imported tasks could not be written into Label Studio "
                    f"({record.get('error')}); asked again at the next /setup (at most once a minute)"]
        return []

    def status(self, project: str | None = None) -> dict[str, Any]:
        """/status: per project, the current version, whether training runs, its progress, the last error."""
        projects = [project_id(project)] if project is not None else self.projects()
        return {
            "train_every_n": self.settings.train_every_n,
            "training_queue": {"queue": self.settings.training_queue_name, "problems": self.jobs.problems()}
            if self.settings.training_queue else None,
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
        status = self.project_status(project)
        review = review_section(self.store.review(project), status.get("training", False), self._label_studio(project),
                                project)
        return report_page(project, manifests, self.store.current(project), status, self.store.promoted(project),
                           review)

    def _label_studio(self, project: str) -> str:
        """Label Studio's address for links: LABEL_STUDIO_URL, else the hostname /setup sent."""
        with self._lock:
            state = self._projects.get(project)
        return self.settings.label_studio_url or (state.hostname if state is not None else None) or ""

    def start_review(self, project: str) -> dict[str, Any]:
        """POST /review: queue a review of the project's annotations (a job of the training loop, never run here)."""
        project = project_id(project)
        if not self._known(project):
            raise RequestError(f"project {project} is unknown here: Label Studio has not called /setup for it, and "
                               "LABEL_STUDIO_URL could not confirm it")
        answer = self.jobs.trigger(project, {**self._run_payload(self._state(project)), "action": REVIEW})
        return {"project": project, "review": answer}

    def review(self, project: str) -> dict[str, Any]:
        """GET /review: the last review's record, tasks most likely wrong first, with the state of the project's run
        (a review asked or going shows there as ``running``, its progress as in /status; a training alone does not)."""
        project = project_id(project)
        record = self.store.review(project)
        job = self.jobs.status(project)
        asked = job.review
        progress = job.progress.__dict__ if asked and job.progress is not None else None
        # the last run asked a review and failed, and the record is not that run's (a review that ran although the
        # training before it failed is): "failed", not the last review's state, with the run's error
        failed = bool(not job.running and job.last_review and job.last_error
                      and str(record.get("finished_at") or "") < str(job.last_started_at or ""))
        state = "running" if asked else "failed" if failed else record.get("state", "none")
        return {"project": project, "state": state, "progress": progress,
                "last_error": job.last_error if failed else None,
                "tasks": record.get("tasks", []), "unaligned": record.get("unaligned", []),
                "agreement": record.get("agreement", {}),
                **{key: record.get(key) for key in ("message", "folds", "reviewed", "annotated", "seconds",
                                                     "started_at", "finished_at", "report_error") if key in record}}

    def health(self) -> dict[str, Any]:
        return {"status": "UP", "model_class": MODEL_CLASS}

    def shutdown(self) -> None:
        self.jobs.shutdown()
