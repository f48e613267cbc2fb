"""``python -m backend worker [--queue NAME] [--burst]``: an RQ worker that runs the training jobs of TRAINING_QUEUE.

One job at a time per worker. For several GPUs, start one worker per GPU, each with its own
``CUDA_VISIBLE_DEVICES``; workers on other hosts need the same MODEL_DIR (a shared volume) and Label Studio
credentials (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY). See docs/deploy.md.

A worker outlives a Redis outage (a restart, a failover): a running job goes on and records its outcome once Redis
answers (``backend.training.queue``), the worker keeps trying the job's heartbeat meanwhile, and when RQ's work loop
quits on a Redis error anyway, the worker waits for Redis and works again.
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from typing import Any, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Worker

from backend.training.queue import ABANDON_GRACE_S, HEARTBEAT_S
from backend.shared.settings import Settings, SettingsError
from backend.shared.store import ModelStore

log = logging.getLogger(__name__)

HEARTBEAT_RETRY_MAX_S = 2.0  # a job's heartbeat is tried again this often at least while Redis does not answer
RECONNECT_FIRST_S, RECONNECT_MAX_S = 1.0, 30.0  # back-off of a worker whose work loop quit, until Redis answers


class TrainingWorker(Worker):
    """RQ's forking worker, with a heartbeat that lets a dead worker's job be found abandoned within
    ``HEARTBEAT_S + ABANDON_GRACE_S`` seconds instead of RQ's ``interval + 60``, and that waits out a Redis outage
    instead of quitting mid-job (RQ's would end the worker, and the kernel the job with it)."""

    stop_requested = False  # a stop signal came (RQ remembers one only when it comes during a job)
    store: ModelStore | None = None  # the MODEL_DIR whose unfinished folders a killed work horse leaves

    def handle_work_horse_killed(self, job: Any, retpid: int, ret_val: int, rusage: Any) -> None:
        """A work horse killed mid-job (out of memory, by hand): what it left half-written in the store goes now,
        not at the worker's next start (the worker may run for weeks)."""
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        if self.store is None:
            return
        try:
            removed = self.store.clean_temporary()  # only folders of processes that are gone
        except OSError as error:
            log.warning("could not remove the unfinished folders of the killed job %s: %s", job.id, error)
            return
        if removed:
            log.info("removed %d unfinished folder(s) of the killed job %s", len(removed), job.id)

    def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = min(interval, job.timeout - working_time)
        return int(interval) + ABANDON_GRACE_S

    def maintain_heartbeats(self, job: Any, execution: Any) -> None:
        """RQ's heartbeat of a running job, tried again every ``HEARTBEAT_RETRY_MAX_S`` at most while Redis does
        not answer: the job goes on meanwhile, and its heartbeat is renewed within seconds of Redis answering, well
        before a replica's watchdog would find the job abandoned (``ABANDON_GRACE_S``)."""
        delay, failed_at = 0.5, None
        while True:
            try:
                super().maintain_heartbeats(job, execution)
            except (RedisConnectionError, RedisTimeoutError) as error:
                if failed_at is None:
                    failed_at = time.monotonic()
                    log.warning("Redis unreachable during job %s (%s): the job goes on, and the worker renews its "
                                "heartbeat once Redis answers", job.id, error)
                time.sleep(delay)
                delay = min(delay * 2, HEARTBEAT_RETRY_MAX_S)
                continue
            if failed_at is not None:
                log.info("Redis answers again after %.0f s: the heartbeat of job %s is renewed", time.monotonic()
                         - failed_at, job.id)
            return

    def request_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested = True
        super().request_stop(signum, frame)


def work_until_stopped(connection: Any, make_worker: Callable[[], TrainingWorker], burst: bool, where: str) -> None:
    """RQ's work loop, and again after it ended by itself, until a stop signal (or the queue is empty, in burst
    mode). RQ's ``work()`` logs and quits on any error it does not handle, Redis unreachable between two jobs or at
    a job's end among them: rather than leave the queue unserved until someone restarts the worker, it waits until
    Redis answers (with back-off) and works again, as a new RQ worker (the old one may still look alive in Redis).
    """
    delay = RECONNECT_FIRST_S
    while True:
        worker, untidy, started = None, None, time.monotonic()
        try:
            worker = make_worker()  # RQ asks Redis for this client's address: it must answer
            worker.work(burst=burst, with_scheduler=False, logging_level="INFO")
            failure = "RQ's work loop quit on an error, logged above"
        except RedisError as error:  # RQ's clean-up at the end of work() also met the outage
            if burst:
                raise
            failure, untidy = f"Redis unreachable: {error}", worker
        if burst or (worker is not None and worker.stop_requested):
            return
        # no job runs between two rounds (see below): a stop signal ends the process at once
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if worker is not None and worker.horse_pid:  # one job at a time: the one RQ left running ends first
            log.warning("waiting for the job of work horse %d to end before working again", worker.horse_pid)
            worker.wait_for_horse()
        if time.monotonic() - started > RECONNECT_MAX_S:
            delay = RECONNECT_FIRST_S  # it worked a while: this is a new fault
        log.warning("the worker stopped working (%s); it works again once Redis at %s answers", failure, where)
        while True:
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
            try:
                connection.ping()
                break
            except RedisError as error:
                log.warning("Redis at %s does not answer (%s); next try in %.0f s", where, error, delay)
        if untidy is not None:  # RQ's clean-up, again: else the old worker counts as listening until it expires
            try:
                untidy.teardown()
            except RedisError as error:
                log.warning("could not unregister the old RQ worker %s (%s); it expires by itself", untidy.name,
                            error)
        log.info("Redis at %s answers: the worker works again", where)


def worker_command(args: Any) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [worker] %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not settings.training_queue:
        print("error: TRAINING_QUEUE is not set: give the Redis address the serving backend enqueues on, e.g. "
              "TRAINING_QUEUE=redis://127.0.0.1:6379/0", file=sys.stderr)
        return 2
    import redis

    store = ModelStore(settings.model_dir)
    removed = store.clean_temporary()  # this host's dead trainings only
    if removed:
        logging.getLogger(__name__).info("removed %d unfinished training folder(s) of this host", len(removed))
    connection = redis.Redis.from_url(settings.training_queue, health_check_interval=10)
    queue = args.queue or settings.training_queue_name
    where = settings.training_queue.split("://", 1)[-1].split("@")[-1]  # host:port/db, never a password

    def make_worker() -> TrainingWorker:
        worker = TrainingWorker([queue], connection=connection, job_monitoring_interval=HEARTBEAT_S)
        worker.store = store
        return worker

    work_until_stopped(connection, make_worker, args.burst, where)
    return 0
