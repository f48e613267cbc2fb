"""Publishing: a promoted version's predictions written into Label Studio for the tasks nobody annotated, and the
version made the project's model version, so the labeling stream, an opened task and the Data Manager's
"Prediction score" column all show the new version without anyone asking for predictions.

Runs in the training child after a promotion (or as a job of its own: a project that connects with a serving
version, new tasks imported), never in the HTTP server. Each task gets a version's prediction once; older
versions' predictions stay.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from backend.data.schema import parse_label_config
from backend.data.tasks import spans_to_results, task_text
from backend.model.device import set_threads
from backend.serving.jobs import ProgressCallback
from backend.serving.model_cache import load_predictor
from backend.serving.settings import Settings
from backend.serving.store import ModelStore, utc_now

log = logging.getLogger(__name__)

BATCH = 100  # tasks predicted at a time (and the step of the progress shown)
IMPORT_BATCH = 500  # predictions written per request: each import request costs Label Studio ~0.4 s on its own
THREADS = 1  # the publisher's CPU threads: the other cores stay free for the annotators' /predict requests


def publish(settings: Settings, project: str, version: str, model_dir: Path, client: Any, store: ModelStore,
            progress: ProgressCallback, load: Callable[[Path], Any] = load_predictor) -> dict[str, Any]:
    """Write ``version``'s predictions for every unannotated task of ``project`` that has none of it yet (at most
    PUBLISH_MAX_TASKS, lowest task id first: Label Studio's own order), then make it the project's model version.
    Returns what was done; a failure is raised (the caller reports it) after being recorded in the store."""
    number = int(project)
    store.record_publishing(project, {"version": version, "state": "publishing", "started_at": utc_now()})
    progress("publishing", step=0, total_steps=0, message="publishing: reading the unlabelled tasks")
    schema = parse_label_config(client.label_config(number))
    tasks = client.unlabelled_tasks(number)
    has_it = {p.get("task") for p in client.predictions(number) if p.get("model_version") == version}
    missing = sorted((task for task in tasks if task.get("id") not in has_it), key=lambda task: task.get("id", 0))
    todo = missing[:settings.publish_max_tasks]
    predictor = load(model_dir) if todo else None
    set_threads(THREADS)
    waiting: list[dict] = []
    for start in range(0, len(todo), BATCH):
        batch = todo[start:start + BATCH]
        predictions = predictor.predict([task_text(task, schema.data_key) for task in batch])
        waiting += [{"task": task["id"], "result": spans_to_results(prediction.spans, schema),
                     "score": prediction.shown_score, "model_version": version}
                    for task, prediction in zip(batch, predictions)]
        done = start + len(batch)
        if len(waiting) >= IMPORT_BATCH or done == len(todo):
            client.import_predictions(number, waiting)
            waiting = []
        progress("publishing", step=done, total_steps=len(todo), message=f"publishing {done}/{len(todo)}")
    client.set_model_version(number, version)
    outcome = {"version": version, "published": len(todo), "already_had_it": len(tasks) - len(missing),
               "over_the_cap": len(missing) - len(todo)}
    store.record_publishing(project, {**outcome, "state": "published", "finished_at": utc_now()})
    log.info("project %s: published %s for %d task(s)", project, version, len(todo))
    return outcome
