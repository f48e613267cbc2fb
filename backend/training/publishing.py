"""Publishing: a promoted version's predictions written into Label Studio for the tasks nobody annotated, then the
version announced (``/setup`` and ``/predict`` name it) and made the project's model version, so the labeling
stream, an opened task and the Data Manager's "Prediction score" column all show it without anyone asking.

Never two predictions of one version on a task, whoever asks:
- While a promoted version is written, Label Studio is still told the previous one (the store's announced version),
  so neither "Retrieve Predictions" nor the labeling stream asks for, or stores, the version being written.
- Tasks imported while it writes are read at its end (again, until none is new) before it announces.
- Once announced, a version reaches newer tasks through Label Studio's own "Retrieve Predictions" for those tasks:
  its check (skip the tasks that hold the version ``/setup`` names) is then the one gate, and ``/predict`` leaves out
  a task that already holds the version it answers with.

The truth is on disk: the pointer says what is promoted and what is announced, ``published.json`` how far the
writing got. A publishing stopped by a restart, a killed worker, a full disk or Label Studio going away resumes
from the next ``/setup``, the queue's watchdog, or the next Start Training, and writes only the tasks still missing.

Runs in the training child after a promotion, or as a job of its own; never in the HTTP server.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from backend.data.schema import parse_label_config
from backend.data.tasks import spans_to_results, task_text
from backend.model.device import set_threads
from backend.model.predict import Predictor
from backend.shared.report import unfit_message
from backend.shared.settings import Settings
from backend.shared.store import ModelStore, fits, model_labels, utc_now
from backend.training.jobs import ProgressCallback

log = logging.getLogger(__name__)

BATCH = 100  # tasks predicted at a time (and the step of the progress shown)
IMPORT_BATCH = 500  # predictions written per request: each import request costs Label Studio ~0.4 s on its own
RETRIEVE_BATCH = 200  # tasks per "Retrieve Predictions" request: Label Studio stores them inside the request
THREADS = 1  # the publisher's CPU threads: the other cores stay free for the annotators' /predict requests
ROUNDS = 5  # reads of the unlabelled tasks at most: the first, then again for tasks imported meanwhile


class Unfit(RuntimeError):
    """The version predicts labels the project's label config no longer has; the message says which."""


def publish(settings: Settings, project: str, version: str, model_dir: Path, client: Any, store: ModelStore,
            progress: ProgressCallback, load: Callable[[Path], Any] | None = None) -> dict[str, Any]:
    """Make ``version`` (the promoted one) reach every unannotated task of ``project`` once (at most
    PUBLISH_MAX_TASKS, lowest task id first: Label Studio's own order), then announce it. A version that does not fit
    the label config is withdrawn instead (``Unfit``). Returns what was done; a failure is raised after what was
    written so far is recorded, and the next publishing writes only the tasks still missing."""
    number = int(project)
    progress("publishing", step=0, total_steps=0, message="publishing: reading the label config")
    schema = parse_label_config(client.label_config(number))
    missing_labels = sorted(set(model_labels(model_dir)) - set(schema.labels))
    if missing_labels or not fits(model_labels(model_dir), schema):
        withdraw(project, version, missing_labels, client, store)
        raise Unfit(unfit_message(version, missing_labels))
    if store.announced(project) == version:
        return _retrieve_for_new_tasks(settings, project, version, schema, client, store, progress)

    record = {"version": version, "state": "publishing", "started_at": utc_now(), "written": 0, "total": 0}
    store.record_publishing(project, record)
    predictor = None
    written, had_it, over_the_cap, after = 0, None, 0, 0
    seconds = {"read_s": 0.0, "predict_s": 0.0, "write_s": 0.0}  # Label Studio's reads, the model, its writes
    for _ in range(ROUNDS):
        progress("publishing", message=f"publishing {written}/{record['total'] or '?'}: reading the unlabelled tasks")
        started = time.monotonic()
        # a later round reads only the tasks after the last one the round before read: later tasks have higher ids
        todo, had, over_the_cap, after = _missing(settings, number, version, client, written, after)
        seconds["read_s"] += time.monotonic() - started
        had_it = had if had_it is None else had_it  # as found at the start: later rounds find what this one wrote
        if not todo:
            break
        record["total"] = written + len(todo)
        store.record_publishing(project, {**record, "written": written})
        predictor = predictor or (load or Predictor.load)(model_dir)
        set_threads(THREADS)
        waiting: list[dict] = []
        for start in range(0, len(todo), BATCH):
            batch = todo[start:start + BATCH]
            started = time.monotonic()
            predictions = predictor.predict([task_text(task, schema.data_key) for task in batch])
            seconds["predict_s"] += time.monotonic() - started
            waiting += [{"task": task["id"], "result": spans_to_results(prediction.spans, schema),
                         "score": prediction.shown_score, "model_version": version}
                        for task, prediction in zip(batch, predictions)]
            if len(waiting) >= IMPORT_BATCH or start + len(batch) == len(todo):
                started = time.monotonic()
                client.import_predictions(number, waiting)
                seconds["write_s"] += time.monotonic() - started
                written += len(waiting)
                waiting = []
                store.record_publishing(project, {**record, "written": written})
            progress("publishing", step=written + len(waiting), total_steps=record["total"],
                     message=f"publishing {written + len(waiting)}/{record['total']}")
    # Label Studio's model version first: were the announcement lost (a full disk), /setup still names the previous
    # version, so nothing asks for this one, and the next publishing announces it
    client.set_model_version(number, version)
    store.announce(project, version)
    outcome = {"version": version, "published": written, "already_had_it": had_it or 0, "over_the_cap": over_the_cap,
               **{key: round(value, 1) for key, value in seconds.items()}}
    store.record_publishing(project, {**record, **outcome, "written": written, "total": written, "state": "published",
                                      "finished_at": utc_now()})
    log.info("project %s: published %s for %d task(s) and announced it", project, version, written)
    return outcome


def _missing(settings: Settings, number: int, version: str, client: Any, written: int,
             after: int = 0) -> tuple[list[dict], int, int, int]:
    """The unannotated tasks (with an id above ``after``) without a prediction of ``version``, lowest id first, as
    many as the cap leaves after ``written``; with the number read that had it, the number over the cap (the
    unannotated tasks left unread once the cap was reached count as over it, whether or not they have it) and the
    id of the last task read.

    Label Studio's pages of unannotated tasks are read only until the cap is reached: each brings a task's id, data
    and the model versions of its predictions, so no prediction and no annotated task is read."""
    room = max(0, settings.publish_max_tasks - written)
    pages = client.unlabelled_tasks(number, version, after)
    missing: list[dict] = []
    had = read = 0
    for task in pages:
        if version in (task.get("model_versions") or []):
            had += 1
        elif len(missing) < room:
            missing.append(task)
        else:
            break
        read += 1
        after = max(after, task["id"])
    total = pages.total if pages.total is not None else read
    return missing, had, max(0, total - read), after


def _retrieve_for_new_tasks(settings: Settings, project: str, version: str, schema: Any, client: Any,
                            store: ModelStore, progress: ProgressCallback) -> dict[str, Any]:
    """The announced version for tasks that came after it (imported later): Label Studio's own "Retrieve
    Predictions" for them, so its check, not a list read earlier, decides which task still lacks the version."""
    todo, had_it, over_the_cap, _ = _missing(settings, int(project), version, client, 0)
    asked = 0
    for start in range(0, len(todo), RETRIEVE_BATCH):
        ids = [task["id"] for task in todo[start:start + RETRIEVE_BATCH]]
        client.retrieve_predictions(int(project), ids)
        asked += len(ids)
        progress("publishing", step=asked, total_steps=len(todo), message=f"publishing {asked}/{len(todo)}")
    outcome = {"version": version, "published": asked, "already_had_it": had_it, "over_the_cap": over_the_cap}
    if asked:
        log.info("project %s: asked Label Studio to retrieve %s for %d new task(s)", project, version, asked)
    return outcome


def withdraw(project: str, version: str, missing_labels: list[str], client: Any, store: ModelStore) -> None:
    """Stop showing ``version``'s predictions (it predicts labels the config lost): the project's model version
    points at none, and the record says why, for /status and the card."""
    client.set_model_version(int(project), "")
    store.record_publishing(project, {"version": version, "state": "unfit", "missing_labels": missing_labels,
                                      "message": unfit_message(version, missing_labels), "finished_at": utc_now()})
    log.warning("project %s: %s", project, unfit_message(version, missing_labels))
