"""The annotated tasks of a project as the last training run read them, kept on disk, so that the next run asks
Label Studio only for what changed since: its cost grows with the change, not with the project.

``MODEL_DIR/<project>/annotated-tasks.json`` holds every annotated task (``labelstudio.slim_task``) with the task's
``updated_at``, the Label Studio and the label config it was read from. Label Studio sets a task's ``updated_at``
whenever one of its annotations or predictions is saved, updated or deleted (``tasks/models.py``), so a run reads:
1. the ids and ``updated_at`` of the annotated tasks updated after the newest ``updated_at`` it kept, less
   ``SLACK_S`` (an annotation's save whose transaction was still open at the last read: milliseconds, seconds on a
   busy server), in cheap pages; then in full only those that are new or whose ``updated_at`` differs from the
   kept one. The slack is short because tasks imported in bulk share their update times: a minute of slack read
   the update times of all 10,000 annotated tasks of a project imported in two minutes again (33 s);
2. the number of annotated tasks: when the kept ones and the new ones make another number, some stopped being
   annotated (an annotation deleted, a task deleted), or were committed late with an older update time (a long
   import): then the ids and ``updated_at`` of all annotated tasks tell which, and any task whose ``updated_at``
   differs from the kept one is read again.
A missing or unreadable file, another Label Studio, or a changed label config is a full read.

Runs in the training child only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from backend.shared.store import write_json_atomically

log = logging.getLogger(__name__)

CACHE_NAME = "annotated-tasks.json"
FORMAT = 2  # 2: annotations keep completed_by (the review's agreement)
SLACK_S = 10.0  # the update times of tasks this much older than the newest kept one are read again


@dataclass
class Fetched:
    """What a fetch read: the annotated tasks (lowest id first) and how it got them."""

    tasks: list[dict]
    mode: str  # "full" (why in ``reason``) or "incremental"
    reason: str = ""
    changed: int = 0  # tasks read in full this time
    removed: int = 0  # kept tasks that are no longer annotated
    listed: bool = False  # whether the ids of all annotated tasks were listed
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, "reason": self.reason, "tasks": len(self.tasks), "changed": self.changed,
                "removed": self.removed, "listed": self.listed, "seconds": round(self.seconds, 2)}


def cache_path(project_dir: Path) -> Path:
    return Path(project_dir) / CACHE_NAME


def config_hash(label_config: str) -> str:
    return hashlib.sha256((label_config or "").encode()).hexdigest()


def fetch_annotated(client: Any, project: int, label_config: str, path: Path, source: str | None = None) -> Fetched:
    """The annotated tasks of ``project``: the kept ones updated with what changed since, or all of them read
    afresh when the kept file cannot tell; the file is rewritten (atomically) with the result. ``source`` names
    the Label Studio (its URL; by default the one ``client`` reads): a file kept from another one is not trusted."""
    if source is None:
        source = getattr(getattr(client, "credentials", None), "url", "") or ""
    started = time.monotonic()
    kept, why_full = _read(path, label_config, source)
    if kept is None:
        fetched = Fetched(_by_id(client.annotated_tasks(project)), "full", why_full)
        fetched.changed = len(fetched.tasks)
    else:
        fetched = _incremental(client, project, kept)
    fetched.seconds = time.monotonic() - started
    _write(path, fetched.tasks, label_config, source)
    log.info("project %s: annotated tasks: %s", project, fetched.summary())
    return fetched


def _incremental(client: Any, project: int, kept: dict) -> Fetched:
    tasks: dict[int, dict] = {task["id"]: task for task in kept["tasks"]}
    fetched = Fetched([], "incremental")
    # the ids and update times of the tasks updated since (cheap pages), then in full only those that differ
    since = _minus(kept["newest"], SLACK_S) if kept.get("newest") else None
    stamps = client.annotated_stamps(project, changed_since=since)
    stale = [key for key, stamp in stamps.items() if key not in tasks or tasks[key].get("updated_at") != stamp]
    fetched.details["window"] = len(stamps)
    if stale:
        tasks.update({task["id"]: task for task in client.tasks_by_id(project, stale)})
        fetched.changed = len(stale)
    if len(tasks) != client.annotated_count(project):
        # some kept task is no longer annotated (an annotation or the task deleted), or an annotated task was
        # committed late with an older update time: the ids and update times of all annotated tasks say which
        stamps = client.annotated_stamps(project)
        fetched.listed = True
        fetched.removed = len([key for key in tasks if key not in stamps])
        tasks = {key: task for key, task in tasks.items() if key in stamps}
        late = [key for key, stamp in stamps.items() if key not in tasks or tasks[key].get("updated_at") != stamp]
        if late:
            tasks.update({task["id"]: task for task in client.tasks_by_id(project, late)})
            fetched.changed += len(late)
    fetched.tasks = [tasks[key] for key in sorted(tasks)]
    return fetched


def _by_id(tasks: list[dict]) -> list[dict]:
    return sorted((task for task in tasks if isinstance(task, dict) and "id" in task), key=lambda task: task["id"])


def _read(path: Path, label_config: str, source: str) -> tuple[dict | None, str]:
    """The kept file when it can be trusted, else None and why not."""
    try:
        kept = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "no tasks kept from a previous run"
    except (OSError, ValueError) as error:
        return None, f"the kept tasks could not be read ({type(error).__name__})"
    if not isinstance(kept, dict) or kept.get("format") != FORMAT or not isinstance(kept.get("tasks"), list) \
            or not all(isinstance(task, dict) and isinstance(task.get("id"), int) for task in kept["tasks"]):
        return None, "the kept tasks are not in a format this version reads"
    if kept.get("source") != source:
        return None, "the kept tasks came from another Label Studio"
    if kept.get("label_config") != config_hash(label_config):
        return None, "the label config changed"
    return kept, ""


def _write(path: Path, tasks: list[dict], label_config: str, source: str) -> None:
    stamps = [task.get("updated_at") for task in tasks if task.get("updated_at")]
    newest = max(stamps, key=_parse, default=None)
    try:
        write_json_atomically(Path(path), {"format": FORMAT, "source": source,
                                           "label_config": config_hash(label_config), "newest": newest,
                                           "tasks": tasks}, indent=None)
    except OSError as error:  # a full disk: the next run reads everything again
        log.warning("could not keep the annotated tasks in %s: %s", path, error)
        Path(path).unlink(missing_ok=True)


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def _minus(moment: str, seconds: float) -> str:
    return (_parse(moment) - timedelta(seconds=seconds)).isoformat()
