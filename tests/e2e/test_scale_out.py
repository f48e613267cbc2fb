"""Scale-out against real servers: one Label Studio, one Redis, two serving replicas sharing MODEL_DIR and one
training worker (``python -m backend worker``).

Start Training reaches one replica; the worker trains; the promotion reaches both replicas without a restart and
each answers with the new version. A worker killed with -9 mid-training is reported in /status and in Label Studio
(the model card's title), the serving version is unchanged, and with a new worker the next Start Training works,
warm-started from v1 and counting what the annotators kept of v1's published suggestions.
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass

import pytest

from scripts.scenario import (backend_status, connect_backend, create_project, examples_to_tasks, import_tasks,
                              project_key, read_label_config, start_training, text_tasks, wait_until)
from scripts.stack import BackendServer, RedisServer, StackError, TrainingWorker, post_json, redis_server_bin
from tests.e2e.conftest import TINY_TRAINING_ENV, unavailable

pytestmark = pytest.mark.e2e

N_ANNOTATED = 60
TRAINING_TIMEOUT_S = 300


@dataclass
class Stack:
    redis: RedisServer
    replicas: list[BackendServer]
    workers: list[TrainingWorker]
    worker_env: dict


@pytest.fixture(scope="module")
def stack(label_studio, tiny_base_model_dir, tmp_path_factory):
    if not redis_server_bin().exists():
        unavailable(f"{redis_server_bin()} is missing: .ci/run installs Debian's redis-server")
    root = tmp_path_factory.mktemp("scale-out")
    redis = RedisServer(root / "redis")
    replicas, workers = [], []
    try:
        redis.start()
        queue_env = {**TINY_TRAINING_ENV, "TRAINING_QUEUE": redis.url}
        first = BackendServer(label_studio.url, label_studio.token, root / "models", str(tiny_base_model_dir),
                              extra_env=queue_env, log_path=root / "replica-1.log")
        first.start()
        replicas.append(first)
        # behind one address in production: every process names the one Label Studio knows (the ML record's URL)
        second = BackendServer(label_studio.url, label_studio.token, root / "models", str(tiny_base_model_dir),
                               extra_env={**queue_env, "BACKEND_URL": first.url}, log_path=root / "replica-2.log")
        second.start()
        replicas.append(second)
        worker_env = {**TINY_TRAINING_ENV, "BASE_MODEL": str(tiny_base_model_dir), "BACKEND_URL": first.url}
        worker = TrainingWorker(redis.url, root / "models", label_studio.url, label_studio.token,
                                extra_env=worker_env, log_path=root / "worker-1.log")
        worker.start()
        workers.append(worker)
        yield Stack(redis, replicas, workers, worker_env)
    except StackError as error:
        pytest.fail(str(error), pytrace=False)
    finally:
        for process in (*workers, *replicas, redis):
            process.stop()


def _version_of(replica: BackendServer, key: str, config: str, text: str) -> str:
    body = post_json(f"{replica.url}/predict", {"project": key, "label_config": config,
                                                "tasks": [{"id": 1, "data": {"text": text}}]}, timeout=60)
    return body["results"][0]["model_version"] if "results" in body else body[0]["model_version"]


def test_a_promotion_by_a_worker_reaches_both_replicas_and_a_killed_worker_is_reported(label_studio, stack, tmp_path):
    from tests.helpers.synthetic import restaurant_examples

    ls = label_studio.client()
    config = read_label_config()
    project = create_project(ls, "Scale-out", config)
    annotated = examples_to_tasks(restaurant_examples(N_ANNOTATED, seed=21), config)
    extra = examples_to_tasks(restaurant_examples(2, seed=77), config)
    task_ids = import_tasks(ls, project, annotated + text_tasks(["a cheap pizza place open late"] * 3)
                            + text_tasks([task["data"]["text"] for task in extra]))
    ml_id = connect_backend(ls, project, stack.replicas[0].url, title="NER backend (scale-out)")
    key = project_key(ls, project)
    one, two = stack.replicas
    status = lambda replica: backend_status(replica.url, project)  # noqa: E731

    # 1. Start Training goes to the first replica; the worker trains; both replicas serve the new version
    start_training(ls, ml_id)
    wait_until(lambda: status(two).runs_finished >= 1, TRAINING_TIMEOUT_S, "the worker's first run (seen on replica 2)")
    first = status(two)
    assert first.last_error is None, first.last_error
    assert first.current_version == "v1" and status(one).current_version == "v1"
    wait_until(lambda: all(_version_of(r, key, config, "cheap pizza") == "v1" for r in (one, two)), 120,
               "both replicas to answer with v1")
    published = {p.model_version for p in ls.predictions.list(task=task_ids[N_ANNOTATED])}
    assert "v1" in published  # the worker published the promoted version into Label Studio

    # 2. the worker is killed with -9 while it trains the next run
    for task_id, task in zip(task_ids[-2:], extra):
        ls.annotations.create(id=task_id, result=task["annotations"][0]["result"], was_cancelled=False)
    start_training(ls, ml_id)
    wait_until(lambda: (status(two).progress or {}).get("stage") == "training", TRAINING_TIMEOUT_S,
               "the second run to be training")
    killed = stack.workers[0]
    os.kill(killed.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: (status(one).last_error or "").startswith("abandoned"), 90,
               "the abandoned run to be reported in /status")
    noticed_s = time.monotonic() - killed_at
    assert status(two).last_error.startswith("abandoned") and not status(two).running
    wait_until(lambda: (ls.ml.get(id=ml_id).title or "").startswith("NER · training failed: abandoned"), 30,
               "the abandoned run to be shown on the model card in Label Studio")
    assert status(one).current_version == "v1" and _version_of(two, key, config, "pizza") == "v1"

    # 3. a new worker: the next Start Training works
    fresh = TrainingWorker(stack.redis.url, one.model_dir, label_studio.url, label_studio.token,
                           extra_env=stack.worker_env, log_path=one.model_dir.parent / "worker-2.log")
    fresh.start()
    stack.workers.append(fresh)
    finished = status(two).runs_finished
    start_training(ls, ml_id)
    wait_until(lambda: status(two).runs_finished > finished, TRAINING_TIMEOUT_S, "the run after the new worker")
    after = status(one)
    assert after.last_error is None, after.last_error
    assert after.raw["last_result"]["version"] == "v2"
    # the two tasks annotated in step 2 had been shown v1's published suggestions: v2's run counted what was kept
    manifest = json.loads((one.model_dir / str(project) / "v2" / "manifest.json").read_text())
    assert manifest["suggestions"]["tasks"] == {"v1": 2}, manifest["suggestions"]
    assert manifest["started_from"] == "v1 (warm start)"
    print(f"abandoned run noticed {noticed_s:.1f} s after the kill")
