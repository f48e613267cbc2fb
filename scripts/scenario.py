"""Steps against a live Label Studio + ML backend: create the project, import tasks, connect, train, measure.

Shared by the demo (`scripts/demo.py`), the latency measurement (`scripts/measure_latency.py`) and the e2e test.
"""
from __future__ import annotations

import json
import os
import threading
from collections import Counter
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from scripts.stack import REPO_ROOT, get_json, post_json

RESTAURANT_CONFIG = REPO_ROOT / "label_config" / "restaurant.xml"
IMPORT_BATCH = 500  # tasks per import request: keeps each request well under Label Studio's size limits


def examples_to_tasks(examples: Iterable, label_config: str, as_: str = "annotations") -> list[dict]:
    """Label Studio tasks (with annotations) for word-level examples, via the project's conversion core."""
    from backend.data.schema import parse_label_config
    from backend.data.tasks import example_to_task

    schema = parse_label_config(label_config)
    return [example_to_task(example, schema, as_=as_) for example in examples]


def text_tasks(texts: Iterable[str], data_key: str = "text") -> list[dict]:
    """Unlabelled tasks, one per text."""
    return [{"data": {data_key: text}} for text in texts]


def create_project(ls, title: str, label_config: str, instruction: str = "") -> int:
    project = ls.projects.create(
        title=title, label_config=label_config, expert_instruction=instruction, show_instruction=bool(instruction)
    )
    return int(project.id)


def import_tasks(ls, project_id: int, tasks: Sequence[dict]) -> list[int]:
    """Import `tasks` (annotations inside each task are imported too); returns the new task ids in order."""
    task_ids: list[int] = []
    for start in range(0, len(tasks), IMPORT_BATCH):
        answer = ls.projects.import_tasks(id=project_id, request=list(tasks[start:start + IMPORT_BATCH]),
                                          return_task_ids=True)
        task_ids.extend(int(task_id) for task_id in answer.task_ids or [])
    if len(task_ids) != len(tasks):
        raise RuntimeError(f"Label Studio imported {len(task_ids)} of {len(tasks)} tasks into project {project_id}")
    return task_ids


def connect_backend(ls, project_id: int, backend_url: str, title: str = "NER backend") -> int:
    """Register the ML backend with the project (interactive pre-annotation on); returns the ML record id."""
    record = ls.ml.create(url=backend_url, project=project_id, is_interactive=True, title=title)
    return int(record.id)


def start_training(ls, ml_id: int) -> None:
    """What the "Start Training" button does: Label Studio sends START_TRAINING to the backend's /webhook."""
    ls.ml.train(id=ml_id)


def retrieve_predictions(ls, project_id: int, task_ids: Sequence[int] | None = None) -> None:
    """The data manager's "Retrieve Predictions" action, for `task_ids` or all tasks of the project."""
    selected = {"all": True, "excluded": []} if task_ids is None else {"all": False, "included": list(task_ids)}
    ls.actions.create(id="retrieve_tasks_predictions", project=project_id, selected_items=selected)


def project_key(ls, project_id: int) -> str:
    """The `"<id>.<created epoch>"` string Label Studio sends as `project` to an ML backend."""
    created = ls.projects.get(id=project_id).created_at
    return f"{project_id}.{int(created.timestamp()) if created else 0}"


@dataclass
class ProjectStatus:
    """One project's entry of the backend's `GET /status` (`{"projects": {"<id>": {...}}}`, see backend/serving/service.py)."""

    current_version: str | None
    running: bool
    pending: bool
    runs_started: int
    runs_finished: int
    last_error: str | None
    progress: dict
    raw: dict


def backend_status(backend_url: str, project_id: int) -> ProjectStatus:
    body = get_json(f"{backend_url}/status?project={project_id}", timeout=10.0)
    entry = (body.get("projects") or {}).get(str(project_id)) or {}
    return ProjectStatus(
        current_version=entry.get("current_version"),
        running=bool(entry.get("training")),
        pending=bool(entry.get("pending")),
        runs_started=int(entry.get("runs_started") or 0),
        runs_finished=int(entry.get("runs_finished") or 0),
        last_error=entry.get("last_error"),
        progress=entry.get("progress") or {},
        raw=entry,
    )


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.5) -> float:
    """Poll `condition` until true; returns the seconds it took, raises TimeoutError naming `what`. With
    TEST_WAIT_LOG set, each wait's `what` and seconds are appended to that file (tests/helpers/waits.py)."""
    started = time.monotonic()
    while True:
        if condition():
            _record_wait(what, time.monotonic() - started)
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            _record_wait(what, time.monotonic() - started, happened=False)
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def _record_wait(what: str, seconds: float, happened: bool = True) -> None:
    path = os.environ.get("TEST_WAIT_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"event": what, "seconds": round(seconds, 3), "happened": happened,
                                  "test": os.environ.get("PYTEST_CURRENT_TEST", "")}) + "\n")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q`-th percentile (nearest rank) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


@dataclass
class LatencySamples:
    """Latencies (ms) per endpoint, and the failures, seen by a `LatencyProbe`."""

    ms: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float | int | None]]:
        return {
            endpoint: {"n": len(values), "p50_ms": _round(percentile(values, 50)),
                       "p95_ms": _round(percentile(values, 95)), "max_ms": _round(max(values) if values else None),
                       "over_1s": sum(1 for value in values if value > 1000), "errors": self.errors.get(endpoint, 0)}
            for endpoint, values in self.ms.items()
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class LatencyProbe:
    """Calls the backend's /setup, /webhook (an ignored action) and /predict in turn from a thread, timing each.

    The bodies are the shapes Label Studio sends (../shared/label-studio.md); /predict gets one task per call (what
    opening a task in the labelling UI sends), cycling through `texts`; the webhook is PROJECT_UPDATED so that
    probing never counts as new annotations.
    """

    def __init__(self, backend_url: str, project: str, label_config: str, texts: Sequence[str],
                 ls_url: str = "", token: str = "", pause_s: float = 0.05,
                 endpoints: Sequence[str] = ("setup", "webhook", "predict")):
        project_id = int(project.split(".")[0])
        self.backend_url = backend_url
        self.project = project
        self.label_config = label_config
        self.texts = list(texts) or ["a cheap thai place near me"]
        self.pause_s = pause_s
        self.endpoints = tuple(endpoints)
        self.setup_body = {"project": project, "schema": label_config, "hostname": ls_url, "access_token": token,
                           "extra_params": None}
        self.webhook_body = {"action": "PROJECT_UPDATED", "project": {"id": project_id, "label_config": label_config}}
        self.samples = LatencySamples()
        self._calls = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def body(self, endpoint: str) -> dict:
        if endpoint == "setup":
            return self.setup_body
        if endpoint == "webhook":
            return self.webhook_body
        self._calls += 1
        text = self.texts[self._calls % len(self.texts)]
        return {"tasks": [{"id": 10_000_000 + self._calls, "data": {"text": text}, "annotations": [], "predictions": []}],
                "project": self.project, "label_config": self.label_config,
                "params": {"login": None, "password": None, "context": None}}

    def predicted_version(self) -> str | None:
        """The model_version of a /predict answer now (untimed): the version that really serves."""
        results = post_json(f"{self.backend_url}/predict", self.body("predict"), timeout=120.0).get("results") or [{}]
        return results[0].get("model_version")

    def call(self, endpoint: str) -> float:
        """One timed call; returns its latency in ms (recorded too)."""
        body = self.body(endpoint)
        started = time.perf_counter()
        try:
            post_json(f"{self.backend_url}/{endpoint}", body, timeout=60.0)
        except (urllib.error.URLError, OSError, ValueError):
            self.samples.errors[endpoint] = self.samples.errors.get(endpoint, 0) + 1
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.samples.ms.setdefault(endpoint, []).append(elapsed_ms)
        return elapsed_ms

    def sample(self, rounds: int) -> LatencySamples:
        """`rounds` calls of each endpoint, in the foreground."""
        for _ in range(rounds):
            for endpoint in self.endpoints:
                self.call(endpoint)
                time.sleep(self.pause_s)
        return self.samples

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="latency-probe", daemon=True)
        self._thread.start()

    def stop(self) -> LatencySamples:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        return self.samples

    def _loop(self) -> None:
        while not self._stop.is_set():
            for endpoint in self.endpoints:
                if self._stop.is_set():
                    break
                self.call(endpoint)
                self._stop.wait(self.pause_s)


# --- the Data Manager's saved view: which columns show, in which order ------------------------------------------
# Column ids as label_studio/data_manager/functions.py names them (the frontend prefixes the target "tasks:").
ID = "tasks:id"
TOTAL_PREDICTIONS = "tasks:total_predictions"  # header "Predictions" (drawn as an icon)
PREDICTION_SCORE = "tasks:predictions_score"  # header "Prediction score", hidden by default
PREDICTION_MODEL_VERSIONS = "tasks:predictions_model_versions"  # "Prediction model versions", hidden by default
PREDICTION_COLUMNS = (TOTAL_PREDICTIONS, PREDICTION_SCORE, PREDICTION_MODEL_VERSIONS)
DOUBT_FIRST = [PREDICTION_SCORE]  # ascending: the lowest score (the most doubt) first


def ls_api(url: str, token: str, method: str = "GET", body: dict | None = None) -> object:
    data = json.dumps(body).encode("utf-8") if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = response.read().decode("utf-8")
    return json.loads(payload) if payload.strip() else {}


def _default_hidden(ls_url: str, token: str, project_id: int) -> dict[str, list[str]]:
    """What the frontend hides in a new view: every column whose visibility_defaults say so (store.js fetchColumns)."""
    columns = ls_api(f"{ls_url}/api/dm/columns?project={project_id}", token)["columns"]
    by_id = {column["id"]: column for column in columns}

    def path(column: dict) -> str:
        parent = by_id.get(column.get("parent")) if column.get("parent") else None
        return f"{path(parent)}.{column['id']}" if parent else column["id"]

    hidden: dict[str, list[str]] = {"explore": [], "labeling": []}
    for column in columns:
        for mode, visible in (column.get("visibility_defaults") or {}).items():
            if not visible:
                hidden.setdefault(mode, []).append(f"{column['target']}:{path(column)}")
    return hidden


def show_columns(ls_url: str, token: str, project_id: int, columns: Iterable[str] = PREDICTION_COLUMNS,
                 ordering: Sequence[str] = ()) -> list[int]:
    """Un-hide ``columns`` (Data Manager column ids) in every saved view of the project; returns the view ids.

    A project whose Data Manager was never opened has no view yet: one is created, with the defaults the frontend
    would give it minus ``columns``. ``ordering`` (e.g. ``["-tasks:id"]``) sets the table's sort order.
    """
    wanted = set(columns)
    views = ls_api(f"{ls_url}/api/dm/views?project={project_id}", token)
    if not views:
        views = [ls_api(f"{ls_url}/api/dm/views", token, "POST", {
            "project": project_id,
            "data": {"title": "Default", "type": "list", "target": "tasks",
                     "hiddenColumns": _default_hidden(ls_url, token, project_id),
                     "filters": {"conjunction": "and", "items": []}},
        })]
    ids = []
    for view in views:
        data = dict(view.get("data") or {})
        hidden = data.get("hiddenColumns") or {}
        data["hiddenColumns"] = {mode: [c for c in cols if c not in wanted] for mode, cols in hidden.items()}
        if ordering:
            data["ordering"] = list(ordering)
        data.setdefault("filters", {"conjunction": "and", "items": []})
        ls_api(f"{ls_url}/api/dm/views/{view['id']}", token, "PATCH", {"project": project_id, "data": data})
        ids.append(int(view["id"]))
    return ids



def versions_per_task(ls, project_id: int) -> dict[int, Counter]:
    """Each task's predictions in Label Studio, counted per model version: a count above 1 is a task holding a
    version twice."""
    held: dict[int, Counter] = {}
    for prediction in ls.predictions.list(project=project_id):
        held.setdefault(int(prediction.task), Counter())[prediction.model_version] += 1
    return held


def read_label_config(path: Path = RESTAURANT_CONFIG) -> str:
    return Path(path).read_text(encoding="utf-8")
