"""Background training jobs: each run is a child process, one at a time per project, extra triggers coalesce.

A trigger while a project's run is going schedules exactly one more run after it, however many triggers come.
At most ``concurrency`` runs go at once over all projects (TRAIN_CONCURRENCY); the others wait in the order they
came, and ``/status`` says "queued (2nd)". The child reports progress through a small JSON file that the server
reads for ``/status``. What a project is still owed (the running run and the trigger waiting behind it) is kept
on disk, so a server stopped or restarted mid-run runs it again when it starts (``resume``): a press is kept until it
runs. A lock file per project keeps a second backend process on the same MODEL_DIR from training
the same project: it refuses, and says to configure the queue (``backend.training.queue``).
"""
from __future__ import annotations

import errno
import fcntl
import functools
import importlib
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

from backend.shared.store import ModelStore, free_megabytes, read_json, utc_now, write_json_atomically

log = logging.getLogger(__name__)

# How often the child rewrites its status file at most; stage changes are always written.
PROGRESS_INTERVAL_S = 0.5
FULL_DISK_MB = 16  # a child that died with less free than this most likely died of it
OWED_SUFFIX = ".owed"  # <project>.owed: the payload of the run a project is still owed (JSON), kept over a restart


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


PUBLISH = "publish"  # a payload's action: publish the serving version only, no training
REVIEW = "review"  # a payload's action: review the annotations only (backend/training/review.py), no training
TRAIN = "train"  # what a payload without one of these actions asks for


def _asks(payload: dict) -> set[str]:
    action = payload.get("action")
    asks = {action if action in (PUBLISH, REVIEW) else TRAIN}
    return asks | {key for key in (PUBLISH, REVIEW) if payload.get(key)}


def asks_review(payload: dict | None) -> bool:
    """Whether a run of ``payload`` reviews the annotations (a review job, or a training a review waits behind).

    >>> asks_review({"action": "review"}), asks_review({"review": True}), asks_review({}), asks_review(None)
    (True, True, False, False)
    """
    return isinstance(payload, dict) and REVIEW in _asks(payload)


def merge_payloads(kept: dict | None, new: dict | None) -> dict:
    """One payload for two triggers that coalesce into one run: a training press is never replaced by a later
    publish-only or review-only trigger (a training run publishes what is due at its end, and reviews after it when a
    review was asked: ``"review": true``); a review and a publishing join into a review that publishes after it
    (``"publish": true``); the newest address and token win.

    >>> merge_payloads({"hostname": "a"}, {"hostname": "b", "action": "publish"})
    {'hostname': 'b'}
    >>> merge_payloads({"action": "publish"}, {"action": "publish", "access_token": "t"})
    {'action': 'publish', 'access_token': 't'}
    >>> merge_payloads({"action": "publish"}, {}), merge_payloads({}, {"action": "publish"})
    ({}, {})
    >>> merge_payloads(None, {"action": "publish"})
    {'action': 'publish'}
    >>> merge_payloads({}, {"action": "review"}), merge_payloads({"action": "review"}, {"action": "publish"})
    ({'review': True}, {'action': 'review', 'publish': True})
    """
    asks = (_asks(kept) if kept is not None else set()) | _asks(new or {})
    kept, new = dict(kept or {}), dict(new or {})
    merged = {key: value for key, value in {**kept, **new}.items() if value is not None}
    for key in ("action", PUBLISH, REVIEW):
        merged.pop(key, None)
    if TRAIN in asks:
        return {**merged, REVIEW: True} if REVIEW in asks else merged
    if asks == {PUBLISH}:
        return {"action": PUBLISH, **merged}
    return {"action": REVIEW, **merged, **({PUBLISH: True} if PUBLISH in asks else {})}


# target(project, payload, progress) runs in the child; what it returns (JSON-able) becomes ``last_result``.
JobTarget = Callable[[str, dict, ProgressCallback], Any]

TRAINING_TARGET = "backend.training.training_run.run_training_job"  # target(settings, project, payload, progress)


def resolve(target: str) -> Callable:
    """The function a dotted name names, imported now: in the process that runs the job, never where it is queued."""
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class NamedTarget:
    """A ``JobTarget`` by name: the training run is imported by the child that runs it, so the serving process that
    queues it never loads the training code."""

    settings: Any
    name: str = TRAINING_TARGET

    def __call__(self, project: str, payload: dict, progress: ProgressCallback) -> Any:
        return resolve(self.name)(self.settings, project, payload, progress)


def report_abandoned(settings: Any, project: str, payload: dict, message: str) -> None:
    """Tell Label Studio of a run that ended without reporting itself (its worker or child process died): a
    training's failure (``card.report_failed_run``), or a review's, which shows on the card only."""
    from backend.shared.card import report_failed_run

    report_failed_run(settings, project, payload, message, review=payload.get("action") == REVIEW)


def job_queue(settings: Any, status_dir: Path, on_abandoned: Callable[[str, dict, str], None] | None = None) -> Any:
    """Where training runs: RQ workers through Redis with TRAINING_QUEUE, else child processes of this one.
    ``on_abandoned(project, payload, message)``: what the queue does with a run whose worker or child process died
    without reporting itself (by default it tells Label Studio, ``report_abandoned``). A child process that failed
    leaves no half-written folder behind: the store's leftovers of dead processes are removed after it."""
    on_abandoned = on_abandoned or functools.partial(report_abandoned, settings)
    if settings.training_queue:
        from backend.training.queue import RedisJobQueue

        return RedisJobQueue(settings.training_queue, settings.training_queue_name, report_failure=on_abandoned)
    return JobQueue(NamedTarget(settings), status_dir, nice=settings.train_nice, concurrency=settings.train_concurrency,
                    on_abandoned=on_abandoned, tidy=ModelStore(settings.model_dir).clean_temporary)


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
    queued: int | None = None  # the run's place among those waiting for a free training slot (1 = next)
    review: bool = False  # the run going, or the one waiting behind it, reviews the annotations (GET /review)
    last_review: bool = False  # the last run that ended asked for a review: its error may be the review's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ProgressTracker:
    """The run's side of progress: keeps a ``JobProgress`` and hands it (throttled; stage changes always) to
    ``emit(state, progress, **extra)``, which a subclass writes where the server reads it."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.progress = JobProgress()
        self._written_at = 0.0

    def __call__(self, stage=None, *, step=None, total_steps=None, epoch=None, message=None) -> None:
        changed_stage = stage is not None and stage != self.progress.stage
        for name, value in (("stage", stage), ("step", step), ("total_steps", total_steps), ("epoch", epoch),
                            ("message", message)):
            if value is not None:
                setattr(self.progress, name, value)
        now = time.monotonic()
        if changed_stage or now - self._written_at >= PROGRESS_INTERVAL_S:
            self._written_at = now
            self.write("running")

    def write(self, state: str, **extra: Any) -> None:
        self.progress.elapsed_s = round(time.monotonic() - self.started, 1)
        self.emit(state, asdict(self.progress), **extra)

    def emit(self, state: str, progress: dict, **extra: Any) -> None:
        raise NotImplementedError


class _ProgressFile(ProgressTracker):
    """Progress in the run's status file, which the server process reads."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def emit(self, state: str, progress: dict, **extra: Any) -> None:
        write_json_atomically(self.path, {"state": state, "progress": progress, **extra})


def failure_message(error: BaseException) -> str:
    """How a failed run's error reads in ``/status``: type and message, and what to do when the disk is full."""
    message = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        message += "; the disk holding MODEL_DIR is full: free space (or lower KEEP_VERSIONS), then train again"
    return f"{type(error).__name__}: {message}"


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
        progress.write("failed", error=failure_message(error))
        sys.exit(1)
    progress.progress.stage = "done"
    progress.write("succeeded", result=result)


@dataclass
class _Job:
    status: JobStatus
    running_payload: dict = field(default_factory=dict)
    pending_payload: dict = field(default_factory=dict)
    process: Any = None
    thread: threading.Thread | None = None
    idle: threading.Event = field(default_factory=threading.Event)
    lock: Any = None  # the open lock file that says "this process trains the project" to other processes


def ordinal(n: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, ... ``11th``, ``12th``, ``13th``, ``21st``.

    >>> [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 102)]
    ['1st', '2nd', '3rd', '4th', '11th', '12th', '13th', '21st', '102nd']
    """
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def queued_progress(place: int) -> JobProgress:
    return JobProgress(stage="queued", message=f"queued ({ordinal(place)})")


class JobQueue:
    """Runs ``target`` for a project in a child process when triggered; see the module docstring.

    ``status_dir`` holds one ``<project>.json`` status file per project. ``nice`` lowers the child's CPU
    priority. Children are started with ``spawn`` (a fresh interpreter): forking a threaded server that
    holds a loaded model is unsafe.

    This queue lives in the server process, which is enough for one backend. Several serving processes, or
    training on separate (GPU) machines, use ``backend.training.queue.RedisJobQueue`` (TRAINING_QUEUE) instead,
    with the same interface; serving follows the store's ``current.json`` pointer either way.
    """

    def __init__(self, target: JobTarget, status_dir: Path | str, nice: int = 0, start_method: str = "spawn",
                 concurrency: int = 1, on_abandoned: Callable[[str, dict, str], None] | None = None,
                 tidy: Callable[[], list] | None = None):
        self.target = target
        # on_abandoned(project, payload, error): a child that died without reporting itself (killed), so that
        # Label Studio's card does not show it going for ever; tidy(): after a failed child, remove what dead
        # processes left half-written (ModelStore.clean_temporary), not only at the next start
        self.on_abandoned, self.tidy = on_abandoned, tidy
        self.status_dir = Path(status_dir)
        self.nice = nice
        self.concurrency = concurrency
        self._context = multiprocessing.get_context(start_method)
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._waiting: list[str] = []  # projects waiting for a training slot, oldest first
        self._active = 0  # runs holding a slot
        self._jobs: dict[str, _Job] = {}
        self._closing = False

    def trigger(self, project: str, payload: dict | None = None) -> str:
        """Start a run for ``project``, or schedule one more after the current run. Returns immediately.

        Returns ``"started"`` (it runs now, or waits for a slot: see ``status``), ``"scheduled"`` (one more run
        will follow the current one), ``"already scheduled"`` (a run was already waiting; ``merge_payloads`` joins
        the two: a training press is never replaced by a publish-only trigger), or ``"refused: ..."`` when another
        process on this MODEL_DIR trains the project.
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
                job.pending_payload = merge_payloads(job.pending_payload if job.status.pending else None, payload)
                self._owe(project, merge_payloads(job.running_payload, job.pending_payload))
                if job.status.pending:
                    return "already scheduled"
                job.status.pending = True
                return "scheduled"
            job.lock = self._take_project_lock(project)
            if job.lock is None:
                if job.status.runs_started == 0:
                    del self._jobs[project]  # its status stays the other process's run, read from the status file
                return (f"refused: another backend process on this MODEL_DIR ({self.status_dir.parent}) is training "
                        f"project {project}; several serving processes need TRAINING_QUEUE (see docs/deploy.md)")
            job.status.running = True
            job.running_payload = payload
            self._owe(project, payload)
            job.idle.clear()
            self._waiting.append(project)  # its place in line is the trigger's, not its thread's start
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
            status.review = status.running and (asks_review(job.running_payload) or (
                status.pending and asks_review(job.pending_payload)))
            if project in self._waiting:
                status.queued = self._waiting.index(project) + 1
                status.progress = queued_progress(status.queued)
                return status
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
                           last_error=data.get("error"), last_result=data.get("result"),
                           last_review=bool(data.get("review")))
        if data["state"] == "running" and self._locked_elsewhere(project):
            status.running = True  # another backend process on this MODEL_DIR trains it now
            return status
        if data["state"] == "running":  # the server stopped while this run was going
            status.last_error = "interrupted: the server stopped during this run"
        if status.last_error:
            status.progress.stage = "failed"
        return status

    def problems(self) -> list[str]:
        """What keeps trainings from running (the Redis queue's interface): nothing a child process can't start."""
        return []

    def resume(self) -> dict[str, str]:
        """Trigger again what a stopped server still owed (call at start-up): a run it cut short and the trigger
        that waited behind it, joined into one run; a press is kept until it runs. Returns each project's answer."""
        if not self.status_dir.is_dir():
            return {}
        answers = {}
        for path in sorted(self.status_dir.glob(f"*{OWED_SUFFIX}")):
            project = path.name[:-len(OWED_SUFFIX)]
            payload = read_json(path)
            if isinstance(payload, dict) and not self._locked_elsewhere(project):
                answers[project] = self.trigger(project, payload)
        return answers

    def wait_idle(self, project: str, timeout: float | None = None) -> bool:
        """Block until ``project`` has no running or scheduled run (for tests and shutdown); False on timeout."""
        with self._lock:
            job = self._jobs.get(str(project))
        return True if job is None else job.idle.wait(timeout)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Drop scheduled runs, stop running children and wait for them (at most ``timeout`` seconds)."""
        with self._lock:
            self._closing = True
            self._slot_freed.notify_all()
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

    def _lock_path(self, project: str) -> Path:
        return self.status_dir / f"{project}.lock"

    def _owe(self, project: str, payload: dict | None) -> None:
        """Record on disk the run still owed to ``project`` (None: nothing), so a restart resumes it (``resume``)."""
        path = self.status_dir / f"{project}{OWED_SUFFIX}"
        try:
            if payload is None:
                path.unlink(missing_ok=True)
            else:
                write_json_atomically(path, payload)
        except OSError as error:  # an unwritable folder: the run goes on; only a restart would forget it
            log.warning("could not record the run owed to project %s: %s", project, error)

    def _take_project_lock(self, project: str) -> Any:
        """The project's lock file, open and locked by this process; None when another process holds it (or it
        cannot be made: then training could not write its status either, and the run reports why)."""
        try:
            self.status_dir.mkdir(parents=True, exist_ok=True)
            handle = open(self._lock_path(project), "a")  # noqa: SIM115 - held for the whole run
        except OSError:
            return _NoLock()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return None
        return handle

    def _locked_elsewhere(self, project: str) -> bool:
        if not self._lock_path(project).exists():
            return False
        handle = self._take_project_lock(project)
        if handle is None:
            return True
        handle.close()
        return False

    def _run_until_idle(self, project: str, job: _Job, payload: dict) -> None:
        try:
            while True:
                if self._wait_for_slot(project):
                    try:
                        self._run_once(project, job, payload)
                    finally:
                        self._free_slot()
                with self._lock:
                    if job.status.pending and not self._closing:
                        job.status.pending = False
                        payload, job.pending_payload = job.pending_payload, {}
                        job.running_payload = payload
                        self._owe(project, payload)
                        self._waiting.append(project)  # the run that follows waits its turn behind the others
                        continue
                    if not self._closing:  # a shutdown leaves what it cut short owed, for the next start
                        self._owe(project, None)
                    job.status.running = False
                    job.status.pending = False
                    job.lock.close()
                    job.lock = None
                    job.idle.set()
                    return
        except BaseException:
            with self._lock:
                job.status.running = job.status.pending = False
                if job.lock is not None:
                    job.lock.close()
                    job.lock = None
                job.idle.set()
            raise

    def _wait_for_slot(self, project: str) -> bool:
        """Block until fewer than ``concurrency`` runs go and every project that asked earlier (``_waiting``, where
        the project already is) has one; False when the queue shuts down first."""
        with self._lock:
            while not self._closing and (self._active >= self.concurrency or self._waiting[0] != project):
                self._slot_freed.wait()
            self._waiting.remove(project)
            if self._closing:
                self._slot_freed.notify_all()
                return False
            self._active += 1
            self._slot_freed.notify_all()  # the next in line may fit too
            return True

    def _free_slot(self) -> None:
        with self._lock:
            self._active -= 1
            self._slot_freed.notify_all()

    def _run_once(self, project: str, job: _Job, payload: dict) -> None:
        path = self._status_path(project)
        with self._lock:
            job.status.runs_started += 1
            job.status.last_started_at = utc_now()
            job.status.progress = JobProgress()
        error, result, silent = None, None, False
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
                silent = not outcome.get("error")  # it died without saying why: killed, or out of memory
                error = outcome.get("error") or _exit_message(process.exitcode, self._closing, self.status_dir,
                                                              "review" if payload.get("action") == REVIEW else "training")
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
            job.status.last_review = asks_review(payload)
            job.status.progress = _recorded_progress(read_json(path)) or job.status.progress
            if error and job.status.progress is not None:
                job.status.progress.stage = "failed"  # not the stage it was in when it failed (see last_error)
            record = {"state": "failed" if error else "succeeded", "error": error, "result": result,
                      "progress": asdict(job.status.progress) if job.status.progress else None,
                      "started_at": job.status.last_started_at, "finished_at": job.status.last_finished_at,
                      "review": job.status.last_review}
        try:  # the run's record, complete (a killed child wrote no error), for /status after a restart
            write_json_atomically(path, record)
        except OSError as failure:
            log.warning("could not record the end of the training run of project %s: %s", project, failure)
        if error and not self._closing:  # a shutdown leaves both to the next start
            self._after_failure(project, payload, error, silent)

    def _after_failure(self, project: str, payload: dict, error: str, silent: bool) -> None:
        """What a failed child leaves: folders half-written by dead processes (``tidy``), and, when it died without
        reporting itself, a card in Label Studio that still shows it going (``on_abandoned``)."""
        if self.tidy is not None:
            try:
                removed = self.tidy()
                if removed:
                    log.info("project %s: removed %d unfinished folder(s) of the failed run", project, len(removed))
            except Exception as failure:  # noqa: BLE001 - the next start removes them
                log.warning("project %s: could not remove the failed run's unfinished folders: %s", project, failure)
        if silent and self.on_abandoned is not None:
            try:
                self.on_abandoned(project, payload, error)
            except Exception as failure:  # noqa: BLE001
                log.warning("project %s: could not report the run that died: %s", project, failure)


class _NoLock:
    """Stands for a lock file that could not be made (an unwritable folder): nothing to hold or release."""

    def close(self) -> None:
        pass


def _recorded_progress(data: Any) -> JobProgress | None:
    """The ``progress`` of a status file's content, if it has one."""
    return progress_from(data.get("progress") if isinstance(data, dict) else None)


def progress_from(data: Any) -> JobProgress | None:
    """A ``JobProgress`` from its JSON object (unknown keys are ignored); None when it is not one."""
    if not isinstance(data, dict):
        return None
    return JobProgress(**{k: v for k, v in data.items() if k in JobProgress.__dataclass_fields__})


def _exit_message(exitcode: int | None, closing: bool, status_dir: Path, what: str = "training") -> str:
    """Why a child ended without writing its outcome, as far as the parent can tell; ``what`` the child ran
    (``training``, or ``review`` for a review of the annotations)."""
    again = "start the review again" if what == "review" else "start training again"
    if closing:
        return f"stopped: the server shut down during the {what}"
    free = free_megabytes(status_dir)
    if free is not None and free < FULL_DISK_MB:
        return (f"the disk holding MODEL_DIR is full ({free:.0f} MB free): the {what} could not write its "
                f"results; free space (or lower KEEP_VERSIONS), then {again}")
    if exitcode is not None and exitcode < 0:
        return f"the {what} process was killed by signal {-exitcode} (out of memory, or stopped by hand?); {again}"
    return f"the {what} process ended with exit code {exitcode} without a result; see the server log"
