"""``python -m backend worker [--queue NAME] [--burst]``: an RQ worker that runs the training jobs of TRAINING_QUEUE.

One job at a time per worker. For several GPUs, start one worker per GPU, each with its own
``CUDA_VISIBLE_DEVICES``; workers on other hosts need the same MODEL_DIR (a shared volume) and Label Studio
credentials (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY). See docs/deploy.md.
"""
from __future__ import annotations

import logging
import sys
from typing import Any

from rq import Worker

from backend.serving.queue import ABANDON_GRACE_S, HEARTBEAT_S
from backend.serving.settings import Settings, SettingsError
from backend.serving.store import ModelStore


class TrainingWorker(Worker):
    """RQ's forking worker, with a heartbeat that lets a dead worker's job be found abandoned within
    ``HEARTBEAT_S + ABANDON_GRACE_S`` seconds instead of RQ's ``interval + 60``."""

    def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = min(interval, job.timeout - working_time)
        return int(interval) + ABANDON_GRACE_S


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

    removed = ModelStore(settings.model_dir).clean_temporary()  # this host's dead trainings only
    if removed:
        logging.getLogger(__name__).info("removed %d unfinished training folder(s) of this host", len(removed))
    connection = redis.Redis.from_url(settings.training_queue, health_check_interval=10)
    queue = args.queue or settings.training_queue_name
    worker = TrainingWorker([queue], connection=connection, job_monitoring_interval=HEARTBEAT_S)
    worker.work(burst=args.burst, with_scheduler=False, logging_level="INFO")
    return 0
