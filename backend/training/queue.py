"""Training on a Redis queue (RQ), for several serving replicas and training workers: TRAINING_QUEUE=redis://...

``RedisJobQueue`` is the serving side, with the interface of ``jobs.JobQueue``: a trigger enqueues one RQ job per
project run, and the project's record in Redis (a hash) coalesces triggers the same way on every replica: at most
one run queued or running and one waiting per project. ``run_job`` is the worker side (``python -m backend
worker``, ``backend.training.worker``): it runs ``training_run.run_training_job`` and writes progress, result and
error into the record, so ``/status`` on any replica shows them; when it ends, the waiting trigger becomes the next
job in the same transaction.

Triggers that coalesce are joined by ``jobs.merge_payloads``: a publish-only trigger never replaces a training that
waits, in Redis or kept while Redis is down.

Faults: a trigger that cannot reach Redis is kept and sent again once it answers (``/status`` says why nothing
runs). A Redis restart mid-job costs the run nothing: its progress goes unrecorded while Redis is down, its start
and outcome are written once Redis answers again (within ``REDIS_PATIENCE_S``), and the worker waits for Redis too
(``backend.training.worker``). A worker that dies mid-job stops its heartbeat; each replica's watchdog runs RQ's
clean-up of the started jobs every few seconds, which moves such a job to the failed ones within ``HEARTBEAT_S +
ABANDON_GRACE_S``; the watchdog then records the run failed, reports it into Label Studio, and enqueues the waiting
trigger. Redis must keep its data over a restart (appendonly); one that lost it is named in ``/status``.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import asdict
from typing import Any, Callable

from backend.shared.store import utc_now
from backend.training.jobs import (PUBLISH, REVIEW, TRAINING_TARGET, JobProgress, JobStatus, ProgressTracker, asks_review,
                                   merge_payloads, progress_from, queued_progress)

log = logging.getLogger(__name__)

PREFIX = "ner"
HEARTBEAT_S = 5  # how often a worker renews a running job's heartbeat (RQ's job_monitoring_interval)
ABANDON_GRACE_S = 10  # a job whose heartbeat is this much overdue is abandoned (RQ's own default adds 60 s)
WATCH_INTERVAL_S = 2.0  # how often a replica sends kept triggers and looks for abandoned jobs
JOB_TIMEOUT_S = 24 * 3600  # the most one training may take before RQ stops it
CONNECT_TIMEOUT_S = 0.5  # a webhook must answer at once, even when Redis is down
REDIS_PATIENCE_S = 300  # how long a run's start and outcome wait for an unreachable Redis (a restart, a failover)
PROGRESS_RETRY_S = 10  # progress is not written for this long after Redis did not answer (each try takes seconds)
# RQ job states of a run whose record still names it (a run that ended by itself has cleared that), and what
# /status says of them
ENDED = {
    "failed": "abandoned: the worker stopped during this run (killed, or its machine was lost); a version it had "
              "promoted stays promoted (current_version), and a publishing it left half done resumes by itself; "
              "start training again for what it did not finish",
    "stopped": "stopped on the worker; start training again",
    "canceled": "canceled on the queue; start training again",
    "lost": "the run's job is gone from Redis; start training again",
    "finished": "the run ended without recording its outcome (Redis unreachable at its end?); see the worker's log",
}
# the same of a review of the annotations (its record, the training report and the serving version are untouched)
ENDED_REVIEW = {
    "failed": "abandoned: the worker stopped during this review (killed, or its machine was lost); the last review "
              "is kept; start the review again",
    "stopped": "stopped on the worker; start the review again",
    "canceled": "canceled on the queue; start the review again",
    "lost": "the review's job is gone from Redis; start the review again",
    "finished": ENDED["finished"],
}


class QueueUnreachable(RuntimeError):
    """Redis did not answer; the message says where and why."""


def connect(url: str) -> Any:
    """A Redis client for ``url`` that fails fast instead of hanging a request."""
    import redis

    return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=5,
                                health_check_interval=10)


def project_key(queue_name: str, project: str) -> str:
    return f"{PREFIX}:{queue_name}:project:{project}"


def projects_key(queue_name: str) -> str:
    return f"{PREFIX}:{queue_name}:projects"


def marker_key(queue_name: str) -> str:
    return f"{PREFIX}:{queue_name}:instance"


def job_description(project: str, payload: dict) -> str:
    """What RQ's dashboards and ``rq info`` call a run: what it does, by its payload's action.

    >>> job_description("3", {}), job_description("3", {"review": True}), job_description("3", {"action": "review"})
    ('train project 3', 'train project 3, then review its annotations', 'review the annotations of project 3')
    >>> job_description("3", {"action": "publish"})
    'publish the serving version of project 3'
    """
    if payload.get("action") == REVIEW:
        return f"review the annotations of project {project}"
    if payload.get("action") == PUBLISH:
        return f"publish the serving version of project {project}"
    return f"train project {project}" + (", then review its annotations" if payload.get(REVIEW) else "")


def _enqueue(redis: Any, pipe: Any, queue_name: str, project: str, job_id: str, payload: dict, target: str) -> None:
    """The RQ job of one run, inside the caller's MULTI ``pipe`` (so record and queue change together or not at
    all)."""
    from rq import Queue

    Queue(queue_name, connection=redis).enqueue_call(
        "backend.training.queue.run_job", args=(queue_name, project, job_id, payload, target), job_id=job_id,
        timeout=JOB_TIMEOUT_S, result_ttl=24 * 3600, failure_ttl=7 * 24 * 3600,
        description=job_description(project, payload), pipeline=pipe)


def _transact(redis: Any, key: str, body: Callable[[Any, dict], Any]) -> Any:
    """Run ``body(pipe, record)`` in a WATCH/MULTI transaction on ``key``, again if another client changed it;
    ``body`` reads ``record`` (the hash, decoded), calls ``pipe.multi()`` and queues its writes."""
    from redis.exceptions import WatchError

    with redis.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                record = _decoded(pipe.hgetall(key))
                answer = body(pipe, record)
                pipe.execute()
                return answer
            except WatchError:
                continue


def _decoded(record: dict) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in record.items()}


def trigger(redis: Any, queue_name: str, project: str, payload: dict, target: str = TRAINING_TARGET) -> str:
    """Enqueue a run of ``project``, or keep one more after the queued/running one (coalescing in Redis: the
    waiting trigger and this one join by ``merge_payloads``, so a publish-only trigger never replaces a training
    press, nor the target that runs it)."""
    key = project_key(queue_name, project)

    def body(pipe: Any, record: dict) -> str:
        kept = json.loads(record["pending"]) if "pending" in record else None
        pipe.multi()
        pipe.sadd(projects_key(queue_name), project)
        if "job" not in record:
            job_id = f"train-{project}-{uuid.uuid4().hex[:12]}"
            pipe.hset(key, mapping={"job": job_id, "job_state": "queued", "job_payload": json.dumps(payload),
                                    "job_target": target})
            _enqueue(redis, pipe, queue_name, project, job_id, payload, target)
            return "queued"
        pending_target = target
        if kept is not None and kept.get("action") != PUBLISH and payload.get("action") == PUBLISH:
            pending_target = record.get("pending_target", target)  # the waiting training's
        pipe.hset(key, mapping={"pending": json.dumps(merge_payloads(kept, payload)),
                                "pending_target": pending_target})
        return "already scheduled" if kept is not None else "scheduled"

    return _transact(redis, key, body)


def begin(redis: Any, queue_name: str, project: str, job_id: str) -> bool:
    """The worker takes the run: False when the record no longer names this job (it was declared abandoned)."""
    key = project_key(queue_name, project)

    def body(pipe: Any, record: dict) -> bool:
        if record.get("job") != job_id:
            pipe.multi()
            return False
        pipe.multi()
        pipe.hset(key, mapping={"job_state": "running", "last_started_at": utc_now(),
                                "progress": json.dumps(asdict(JobProgress()))})
        pipe.hincrby(key, "runs_started", 1)
        return True

    return _transact(redis, key, body)


def finish(redis: Any, queue_name: str, project: str, job_id: str, error: str | None = None,
           result: Any = None) -> dict | None:
    """Record the end of run ``job_id`` and enqueue the waiting trigger, if any; the run's payload, or None when
    the record names another job (someone else finished it already)."""
    key = project_key(queue_name, project)

    def body(pipe: Any, record: dict) -> dict | None:
        if record.get("job") != job_id:
            pipe.multi()
            return None
        progress = json.loads(record.get("progress") or "null") or asdict(JobProgress())
        progress["stage"] = "failed" if error else "done"  # as the local JobQueue says, not the last stage seen
        pipe.multi()
        pipe.hset(key, mapping={"last_finished_at": utc_now(), "last_error": json.dumps(error),
                                "progress": json.dumps(progress),
                                "last_review": json.dumps(asks_review(json.loads(record.get("job_payload") or "{}")))})
        if error is None:
            pipe.hset(key, "last_result", json.dumps(result))
        pipe.hincrby(key, "runs_finished", 1)
        if "pending" in record:
            next_id = f"train-{project}-{uuid.uuid4().hex[:12]}"
            payload = json.loads(record["pending"])
            target = record.get("pending_target", TRAINING_TARGET)
            pipe.hset(key, mapping={"job": next_id, "job_state": "queued", "job_payload": record["pending"],
                                    "job_target": target})
            pipe.hdel(key, "pending", "pending_target")
            _enqueue(redis, pipe, queue_name, project, next_id, payload, target)
        else:
            pipe.hdel(key, "job", "job_state", "job_payload", "job_target")
        return json.loads(record.get("job_payload") or "{}")

    return _transact(redis, key, body)


class RedisProgress(ProgressTracker):
    """Progress of a run on a worker, in the project's record. Progress is only shown: while Redis does not answer
    the run goes on without it (and tries again every ``PROGRESS_RETRY_S``, so as not to wait on Redis at each
    step)."""

    def __init__(self, redis: Any, key: str):
        super().__init__()
        self.redis, self.key = redis, key
        self._retry_at: float | None = None  # set while Redis does not answer

    def emit(self, state: str, progress: dict, **extra: Any) -> None:
        from redis.exceptions import ConnectionError, TimeoutError

        if self._retry_at is not None and time.monotonic() < self._retry_at:
            return
        try:
            self.redis.hset(self.key, "progress", json.dumps(progress))
        except (ConnectionError, TimeoutError) as error:
            if self._retry_at is None:
                log.warning("could not record the run's progress (Redis unreachable: %s); the run goes on, and its "
                            "progress is recorded again once Redis answers", error)
            self._retry_at = time.monotonic() + PROGRESS_RETRY_S
            return
        if self._retry_at is not None:
            log.info("Redis answers again: the run's progress is recorded again")
        self._retry_at = None


def _patiently(what: str, call: Callable[[], Any], patience_s: float = REDIS_PATIENCE_S) -> Any:
    """``call()``, tried again with back-off while Redis does not answer, for ``patience_s`` at most: a run's start
    and outcome must reach the record over a Redis restart. ``begin`` and ``finish`` may be tried again safely:
    a transaction applied whose answer was lost leaves a record that no longer matches, and the retry does
    nothing."""
    from redis.exceptions import ConnectionError, TimeoutError

    deadline = time.monotonic() + patience_s
    delay = 0.5
    while True:
        try:
            return call()
        except (ConnectionError, TimeoutError) as error:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("could not %s (Redis unreachable: %s); trying again in %.1f s, for %.0f s more at most",
                        what, error, delay, deadline - time.monotonic())
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


# --- the worker side ----------------------------------------------------------------------------------------
def run_job(queue_name: str, project: str, job_id: str, payload: dict, target: str = TRAINING_TARGET) -> Any:
    """An RQ job: one training run (or publishing) of ``project``, with its outcome in the project's record.
    ``target`` names the run's function (the training run; tests name a stand-in)."""
    import os

    from rq import get_current_job

    from backend.training.jobs import failure_message, resolve
    from backend.shared.settings import Settings

    _die_with_the_worker()
    redis = get_current_job().connection
    if not _patiently("record the start of the run", lambda: begin(redis, queue_name, project, job_id)):
        return "not run: the project's record names another run (this one was declared abandoned)"
    error, result = None, None
    try:
        settings = Settings.from_env()  # the worker's own environment: MODEL_DIR, Label Studio, the recipe
        if settings.train_nice > 0:
            os.nice(settings.train_nice)
        result = resolve(target)(settings, project, payload, RedisProgress(redis, project_key(queue_name, project)))
    except BaseException as failure:  # noqa: BLE001 - every failure must reach the record (and was reported)
        log.exception("training of project %s failed", project)
        error = failure_message(failure)
    try:
        _patiently("record the outcome of the run",
                   lambda: finish(redis, queue_name, project, job_id, error=error, result=result))
    except Exception:  # noqa: BLE001 - /status names a run that ended unrecorded (ENDED["finished"])
        log.exception("the outcome of the run of project %s could not be recorded: /status will say that the run "
                      "ended without it", project)
    return result if error is None else error


def _die_with_the_worker() -> None:
    """The job runs in RQ's work horse, which RQ puts in a process group of its own: have the kernel kill it when
    the worker that forked it dies, so a killed worker leaves no training running unwatched (Linux only)."""
    import ctypes
    import os
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the worker died before the line above
        os._exit(1)


# --- the serving side ---------------------------------------------------------------------------------------
class RedisJobQueue:
    """``JobQueue``'s interface over RQ; see the module docstring. ``report_failure(project, payload, message)``
    tells Label Studio of a run the watchdog found abandoned."""

    def __init__(self, url: str, queue_name: str, report_failure: Callable[[str, dict, str], None] | None = None,
                 watch: bool = True, target: str = TRAINING_TARGET):
        self.url, self.queue_name, self.target = url, queue_name, target
        self.redis = connect(url)
        self.report_failure = report_failure
        self._lock = threading.Lock()
        self._kept: dict[str, dict] = {}  # triggers Redis did not take, sent again when it answers
        self._problem: str | None = None  # why Redis cannot be used now
        self._lost_data: str | None = None
        self._marker: str | None = None
        self._stop = threading.Event()
        self._watchdog = threading.Thread(target=self._watch, name="queue-watchdog", daemon=True) if watch else None
        if self._watchdog is not None:
            self._watchdog.start()

    # --- JobQueue's interface ---
    def trigger(self, project: str, payload: dict | None = None) -> str:
        project, payload = str(project), dict(payload or {})
        from redis.exceptions import RedisError

        try:
            answer = trigger(self.redis, self.queue_name, project, payload, self.target)
        except RedisError as error:
            with self._lock:  # joined with the one kept before, as in Redis
                self._kept[project] = merge_payloads(self._kept.get(project), payload)
            self._set_problem(error)
            return (f"not queued yet: the training queue at {self._where()} is unreachable ({error}); the trigger "
                    "is kept and sent when it answers")
        self._set_problem(None)
        return answer

    def status(self, project: str) -> JobStatus:
        project = str(project)
        with self._lock:
            kept = project in self._kept
        try:
            record = _decoded(self.redis.hgetall(project_key(self.queue_name, project)))
            place = self._place(record)
        except Exception as error:  # noqa: BLE001
            self._set_problem(error)
            return JobStatus(project, pending=kept, last_error=None, review=asks_review(self._kept_payload(project)))
        status = JobStatus(
            project, running="job" in record, pending="pending" in record or kept,
            progress=progress_from(json.loads(record.get("progress") or "null")),
            runs_started=int(record.get("runs_started", 0)),
            runs_finished=int(record.get("runs_finished", 0)), last_started_at=record.get("last_started_at"),
            last_finished_at=record.get("last_finished_at"), last_error=json.loads(record.get("last_error", "null")),
            last_result=json.loads(record.get("last_result", "null")), queued=place,
            last_review=json.loads(record.get("last_review", "false")),
            review=asks_review(json.loads(record.get("job_payload") or "null"))
            or asks_review(json.loads(record.get("pending") or "null")) or asks_review(self._kept_payload(project)))
        if place is not None:
            status.progress = queued_progress(place)
        return status

    def _kept_payload(self, project: str) -> dict | None:
        with self._lock:
            return self._kept.get(project)

    def projects(self) -> list[str]:
        with self._lock:
            kept = set(self._kept)
        try:
            known = {p.decode() for p in self.redis.smembers(projects_key(self.queue_name))}
        except Exception as error:  # noqa: BLE001
            self._set_problem(error)
            known = set()
        return sorted(known | kept)

    def wait_idle(self, project: str, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(project)
            if not status.running and not status.pending:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stops the watchdog; queued and running jobs belong to the workers and go on."""
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.join(timeout)

    # --- what /status says of the queue itself ---
    def problems(self) -> list[str]:
        """Why trainings may not run: Redis unreachable (and the triggers kept meanwhile), data lost, no worker."""
        with self._lock:
            problem, lost, kept = self._problem, self._lost_data, sorted(self._kept)
        found = []
        if problem:
            found.append(f"the training queue at {self._where()} is unreachable ({problem}): nothing can train until "
                         "it answers" + (f"; kept triggers for project(s) {', '.join(kept)}" if kept else ""))
        if lost:
            found.append(lost)
        if not problem:
            try:
                from rq import Queue, Worker

                queue = Queue(self.queue_name, connection=self.redis)
                if queue.count and not Worker.all(queue=queue):
                    found.append(f"{queue.count} training(s) wait on queue {self.queue_name!r} and no worker listens "
                                 f"to it: start one with `python -m backend worker --queue {self.queue_name}`")
            except Exception as error:  # noqa: BLE001
                found.append(f"could not read the training queue: {error}")
        return found

    # --- internals ---
    def _where(self) -> str:
        return self.url.split("://", 1)[-1].split("@")[-1]  # host:port/db, never a password

    def _set_problem(self, error: BaseException | None) -> None:
        with self._lock:
            self._problem = None if error is None else (str(error) or type(error).__name__)

    def _place(self, record: dict) -> int | None:
        if record.get("job_state") != "queued":
            return None
        from rq import Queue

        position = Queue(self.queue_name, connection=self.redis).get_job_position(record["job"])
        return None if position is None else position + 1

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                self.watch_once()
            except Exception as error:  # noqa: BLE001 - the watchdog must outlive any fault
                self._set_problem(error)

    def watch_once(self) -> None:
        """Send the kept triggers, notice lost data, and end runs whose worker died (see the module docstring)."""
        self._check_marker()
        with self._lock:
            kept = dict(self._kept)
        for project, payload in kept.items():
            trigger(self.redis, self.queue_name, project, payload, self.target)
            with self._lock:
                if self._kept.get(project) is payload:
                    del self._kept[project]
        self._set_problem(None)
        self._end_abandoned_runs()

    def _check_marker(self) -> None:
        """A value this Redis holds while it keeps its data: gone (with a marker seen before) means Redis restarted
        without persistence, and the queued trainings went with it."""
        value = self.redis.get(marker_key(self.queue_name))
        if value is None:
            self.redis.set(marker_key(self.queue_name), uuid.uuid4().hex, nx=True)
            value = self.redis.get(marker_key(self.queue_name))
        value = value.decode() if value is not None else None
        if self._marker is not None and value != self._marker:
            with self._lock:
                self._lost_data = (f"the training queue at {self._where()} lost its data (Redis restarted without "
                                   "persistence, e.g. appendonly): queued or running trainings were dropped; press "
                                   "Start Training again")
        self._marker = value

    def _end_abandoned_runs(self) -> None:
        from rq import Queue
        from rq.exceptions import NoSuchJobError
        from rq.job import Job
        from rq.registry import StartedJobRegistry

        queue = Queue(self.queue_name, connection=self.redis)
        StartedJobRegistry(queue=queue).cleanup()  # moves the jobs of dead workers to the failed ones
        for project in self.projects():
            job_id = self.redis.hget(project_key(self.queue_name, project), "job")
            if job_id is None:
                continue
            job_id = job_id.decode()
            try:
                state = Job.fetch(job_id, connection=self.redis).get_status()
            except NoSuchJobError:
                state = "lost"
            if state not in ENDED:
                continue
            running = json.loads(self.redis.hget(project_key(self.queue_name, project), "job_payload") or "{}")
            message = (ENDED_REVIEW if running.get("action") == REVIEW else ENDED)[state]
            payload = finish(self.redis, self.queue_name, project, job_id, error=message)
            if payload is not None:
                log.error("training of project %s: %s", project, message)
                if self.report_failure is not None:
                    try:
                        self.report_failure(project, payload, message)
                    except Exception as error:  # noqa: BLE001
                        log.warning("could not report the abandoned run of project %s: %s", project, error)

