"""Background training jobs: each run is a child process, one at a time per project, extra triggers coalesce.

A trigger while a project's run is going schedules exactly one more run after it, however many triggers come.
The child reports progress through a small JSON file that the server reads for ``/status``.
"""
from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from backend.serving.store import free_megabytes, read_json, utc_now, write_json_atomically

log = logging.getLogger(__name__)

# How often the child rewrites its status file at most; stage changes are always written.
PROGRESS_INTERVAL_S = 0.5
FULL_DISK_MB = 16  # a child that died with less free than this most likely died of it


@dataclass
class JobProgress:
    """Where a run is: ``stage`` (fetching, training, evaluating, ...), training ``step``/``total_steps``,
    ``epoch`` and seconds since the run started."""

    stage: str = "starting"
    step: int = 0
    total_steps: int = 0
    epoch: float = 0.0
    elapsed_s: float = 0.0
    message: str = ""


class ProgressCallback(Protocol):
    def __call__(self, stage: str | None = None, *, step: int | None = None, total_steps: int | None = None,
                 epoch: float | None = None, message: str | None = None) -> None: ...


# target(project, payload, progress) runs in the child; what it returns (JSON-able) becomes ``last_result``.
JobTarget = Callable[[str, dict, ProgressCallback], Any]


@dataclass
class JobStatus:
    """What ``/status`` shows about one project's training runs."""

    project: str
    running: bool = False
    pending: bool = False
    progress: JobProgress | None = None
    runs_started: int = 0
    runs_finished: int = 0
    last_started_at: str | None = None
    last_finished_at: str | None = None
    last_error: str | None = None
    last_result: Any = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _ProgressFile:
    """The child's side: keeps a ``JobProgress`` and writes it (throttled) to the status file."""

    def __init__(self, path: Path):
        self.path = path
        self.started = time.monotonic()
        self.progress = JobProgress()
        self._written_at = 0.0

    def __call__(self, stage=None, *, step=None, total_steps=None, epoch=None, message=None) -> None:
        changed_stage = stage is not None and stage != self.progress.stage
        for name, value in (("stage", stage), ("step", step), ("total_steps", total_steps), ("epoch", epoch),
                            ("message", message)):
            if value is not None:
                setattr(self.progress, name, value)
        self.progress.elapsed_s = round(time.monotonic() - self.started, 1)
        now = time.monotonic()
        if changed_stage or now - self._written_at >= PROGRESS_INTERVAL_S:
            self._written_at = now
            self.write("running")

    def write(self, state: str, **extra: Any) -> None:
        self.progress.elapsed_s = round(time.monotonic() - self.started, 1)
        write_json_atomically(self.path, {"state": state, "progress": asdict(self.progress), **extra})


def _child_main(target: JobTarget, project: str, payload: dict, status_path: str, nice: int) -> None:
    """Entry point of the training child process."""
    if nice > 0:
        try:
            # training yields the CPU to the server process, so /predict stays responsive during a run
            os.nice(nice)
        except OSError:
            pass
    progress = _ProgressFile(Path(status_path))
    progress.write("running")
    try:
        result = target(project, payload, progress)
    except BaseException as error:  # noqa: BLE001 - every failure must reach the status file
        traceback.print_exc()
        message = str(error) or type(error).__name__
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            message += "; the disk holding MODEL_DIR is full: free space (or lower KEEP_VERSIONS), then train again"
        progress.write("failed", error=f"{type(error).__name__}: {message}")
        sys.exit(1)
    progress.progress.stage = "done"
    progress.write("succeeded", result=result)


@dataclass
class _Job:
    status: JobStatus
    pending_payload: dict = field(default_factory=dict)
    process: Any = None
    thread: threading.Thread | None = None
    idle: threading.Event = field(default_factory=threading.Event)


class JobQueue:
    """Runs ``target`` for a project in a child process when triggered; see the module docstring.

    ``status_dir`` holds one ``<project>.json`` status file per project. ``nice`` lowers the child's CPU
    priority. Children are started with ``spawn`` (a fresh interpreter): forking a threaded server that
    holds a loaded model is unsafe.

    This queue lives in the server process, which is enough for one backend. To train on separate (GPU)
    machines, put the same ``target`` behind a Redis queue (RQ) with one worker per GPU and a shared
    ``MODEL_DIR``; serving needs no change, as it follows the store's ``current.json`` pointer.
    """

    def __init__(self, target: JobTarget, status_dir: Path | str, nice: int = 0, start_method: str = "spawn"):
        self.target = target
        self.status_dir = Path(status_dir)
        self.nice = nice
        self._context = multiprocessing.get_context(start_method)
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._closing = False

    def trigger(self, project: str, payload: dict | None = None) -> str:
        """Start a run for ``project``, or schedule one more after the current run. Returns immediately.

        Returns ``"started"``, ``"scheduled"`` (one more run will follow the current one) or
        ``"already scheduled"`` (a run was already waiting; the newest ``payload`` replaces its payload).
        """
        project = str(project)
        payload = dict(payload or {})
        with self._lock:
            if self._closing:
                return "shutting down"
            job = self._jobs.get(project)
            if job is None:
                job = self._jobs[project] = _Job(JobStatus(project))
                job.idle.set()
            if job.status.running:
                job.pending_payload = payload
                if job.status.pending:
                    return "already scheduled"
                job.status.pending = True
                return "scheduled"
            job.status.running = True
            job.idle.clear()
            job.thread = threading.Thread(target=self._run_until_idle, args=(project, job, payload),
                                          name=f"training-{project}", daemon=True)
            job.thread.start()
            return "started"

    def status(self, project: str) -> JobStatus:
        """A copy of the project's job status, with the live progress of a running child."""
        project = str(project)
        with self._lock:
            job = self._jobs.get(project)
            if job is None:
                return self._status_before_start(project)
            status = JobStatus(**{k: v for k, v in vars(job.status).items()})
        if status.running:
            status.progress = _recorded_progress(read_json(self._status_path(project))) or status.progress
        return status

    def projects(self) -> list[str]:
        """Projects with a run since this queue started, or a run record from before (a restarted server)."""
        with self._lock:
            known = set(self._jobs)
        if self.status_dir.is_dir():
            known |= {path.stem for path in self.status_dir.glob("*.json")}
        return sorted(known)

    def _status_before_start(self, project: str) -> JobStatus:
        """The last run recorded in the status folder by an earlier server process, if any (no runs counted)."""
        data = read_json(self._status_path(project))
        if not isinstance(data, dict) or data.get("state") not in ("succeeded", "failed", "running"):
            return JobStatus(project)
        status = JobStatus(project, progress=_recorded_progress(data) or JobProgress(),
                           last_started_at=data.get("started_at"), last_finished_at=data.get("finished_at"),
                           last_error=data.get("error"), last_result=data.get("result"))
        if data["state"] == "running":  # the server stopped while this run was going
            status.last_error = "interrupted: the server stopped during this run"
        if status.last_error:
            status.progress.stage = "failed"
        return status

    def wait_idle(self, project: str, timeout: float | None = None) -> bool:
        """Block until ``project`` has no running or scheduled run (for tests and shutdown); False on timeout."""
        with self._lock:
            job = self._jobs.get(str(project))
        return True if job is None else job.idle.wait(timeout)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Drop scheduled runs, stop running children and wait for them (at most ``timeout`` seconds)."""
        with self._lock:
            self._closing = True
            jobs = list(self._jobs.values())
            for job in jobs:
                job.status.pending = False
            processes = [job.process for job in jobs if job.process is not None]
        for process in processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + timeout
        for job in jobs:
            if job.thread is not None:
                job.thread.join(max(0.0, deadline - time.monotonic()))

    # --- internals ----------------------------------------------------------------------------------------
    def _status_path(self, project: str) -> Path:
        return self.status_dir / f"{project}.json"

    def _run_until_idle(self, project: str, job: _Job, payload: dict) -> None:
        while True:
            self._run_once(project, job, payload)
            with self._lock:
                if job.status.pending and not self._closing:
                    job.status.pending = False
                    payload, job.pending_payload = job.pending_payload, {}
                    continue
                job.status.running = False
                job.status.pending = False
                job.idle.set()
                return

    def _run_once(self, project: str, job: _Job, payload: dict) -> None:
        path = self._status_path(project)
        with self._lock:
            job.status.runs_started += 1
            job.status.last_started_at = utc_now()
            job.status.progress = JobProgress()
        error, result = None, None
        try:
            path.unlink(missing_ok=True)
            self.status_dir.mkdir(parents=True, exist_ok=True)
            process = self._context.Process(target=_child_main, name=f"training-{project}",
                                            args=(self.target, project, payload, str(path), self.nice))
            process.start()
            with self._lock:
                job.process = process
                closing = self._closing
            if closing:  # shutdown() came while the child was starting and could not see it yet
                process.terminate()
            process.join()
            outcome = read_json(path) or {}
            if process.exitcode == 0 and outcome.get("state") == "succeeded":
                result = outcome.get("result")
            else:
                error = outcome.get("error") or _exit_message(process.exitcode, self._closing, self.status_dir)
            with self._lock:
                job.process = None
            process.close()  # release its pipe now, not at garbage collection: a server runs many trainings
        except Exception as failure:  # noqa: BLE001 - e.g. an unwritable status folder, a target that cannot be
            # pickled: report it in the status, and never leave the project marked as training
            error = f"could not run the training process: {type(failure).__name__}: {failure}"
        if error:
            log.error("training of project %s failed: %s", project, error)
        with self._lock:
            job.process = None
            job.status.runs_finished += 1
            job.status.last_finished_at = utc_now()
            job.status.last_error = error
            job.status.last_result = result if error is None else job.status.last_result
            job.status.progress = _recorded_progress(read_json(path)) or job.status.progress
            if error and job.status.progress is not None:
                job.status.progress.stage = "failed"  # not the stage it was in when it failed (see last_error)
            record = {"state": "failed" if error else "succeeded", "error": error, "result": result,
                      "progress": asdict(job.status.progress) if job.status.progress else None,
                      "started_at": job.status.last_started_at, "finished_at": job.status.last_finished_at}
        try:  # the run's record, complete (a killed child wrote no error), for /status after a restart
            write_json_atomically(path, record)
        except OSError as failure:
            log.warning("could not record the end of the training run of project %s: %s", project, failure)


def _recorded_progress(data: Any) -> JobProgress | None:
    """The ``progress`` of a status file's content, if it has one (unknown keys are ignored)."""
    progress = data.get("progress") if isinstance(data, dict) else None
    if not isinstance(progress, dict):
        return None
    return JobProgress(**{k: v for k, v in progress.items() if k in JobProgress.__dataclass_fields__})


def _exit_message(exitcode: int | None, closing: bool, status_dir: Path) -> str:
    """Why a child ended without writing its outcome, as far as the parent can tell."""
    if closing:
        return "stopped: the server shut down during training"
    free = free_megabytes(status_dir)
    if free is not None and free < FULL_DISK_MB:
        return (f"the disk holding MODEL_DIR is full ({free:.0f} MB free): the training could not write its "
                "results; free space (or lower KEEP_VERSIONS), then start training again")
    if exitcode is not None and exitcode < 0:
        return f"the training process was killed by signal {-exitcode} (out of memory, or stopped by hand?)"
    return f"the training process ended with exit code {exitcode} without a result; see the server log"
