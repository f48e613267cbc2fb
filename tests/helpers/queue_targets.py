"""Stand-ins for the training run, run by real RQ workers in tests/training/test_queue.py (a worker imports them by name).

Each has the training run's signature ``(settings, project, payload, progress)`` and logs what it does to
``payload["log"]``: ``<project>:<tag>:start:<time>`` and ``...:end:<time>``.
"""
import os
import time
from pathlib import Path

from backend.shared.store import ModelStore

WAIT_S = 120


def _log(payload, project, what):
    with open(payload["log"], "a") as log:
        log.write(f"{project}:{payload.get('tag', '')}:{what}:{time.time():.3f}\n")


def recorded_run(settings, project, payload, progress):
    """Report progress; then wait for the payload's ``release`` file, or sleep ``seconds``, and report progress
    again. Returns the payload's tag, and its action if it has one."""
    _log(payload, project, "start")
    progress("training", step=3, total_steps=10, epoch=1)
    if "seconds" in payload:
        time.sleep(payload["seconds"])
    else:
        deadline = time.monotonic() + WAIT_S
        while not Path(payload["release"]).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    progress("evaluating")  # a new stage is always recorded: after the wait, maybe while Redis is down
    _log(payload, project, "end")
    return {"tag": payload.get("tag"), **({"action": payload["action"]} if "action" in payload else {})}


def other_run(settings, project, payload, progress):
    """A run of another target than ``recorded_run``: logs ``other`` instead of ``start`` and ``end``."""
    _log(payload, project, "other")
    return {"other": payload.get("tag")}


def half_writing_run(settings, project, payload, progress):
    """Start writing a version the way training does (a temporary folder in the store), say where and in which
    process, and never finish: the test kills the worker meanwhile."""
    folder = ModelStore(settings.model_dir).new_temporary_dir(project)
    (folder / "model.safetensors").write_bytes(b"half a model")
    progress("training", step=1, total_steps=100)
    Path(payload["started"]).write_text(f"{os.getpid()} {folder}")
    time.sleep(WAIT_S)
    raise RuntimeError("the test should have killed this worker")
