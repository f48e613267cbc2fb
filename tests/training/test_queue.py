"""Training on a real Redis queue with real RQ workers (``python -m backend worker``): triggers from several
replicas coalesce in Redis, /status on any replica shows a worker's progress and result, TRAIN_CONCURRENCY's
counterpart is the number of workers, and the queue survives its faults: a worker killed with -9 mid-job, Redis
restarted (idle, while a job waits, and mid-job), Redis unreachable at a trigger, and a Redis that lost its data. A
publish-only trigger never replaces a training press that waits, in Redis or kept while Redis is down.

The runs are stand-ins (tests/helpers/queue_targets.py) so that each test controls when a run ends; the end-to-end test
(tests/e2e/test_scale_out.py) trains for real through Label Studio.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from backend.training.queue import RedisJobQueue, project_key
from backend.shared.store import ModelStore
from scripts.stack import RedisServer, StackError, TrainingWorker, redis_server_bin
from tests.helpers.waits import bound, wait_for

WAIT_S = bound("child event")
RECORDED = "tests.helpers.queue_targets.recorded_run"
HALF_WRITING = "tests.helpers.queue_targets.half_writing_run"
OTHER = "tests.helpers.queue_targets.other_run"


def _wait_until(condition, event="child event", interval=0.1):
    return wait_for(condition, event, interval_s=interval)


@pytest.fixture
def redis_server(tmp_path):
    if not redis_server_bin().exists():
        if os.environ.get("CI"):
            pytest.fail(f"{redis_server_bin()} is missing: .ci/run installs Debian's redis-server", pytrace=False)
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path / "redis")
    try:
        server.start()
    except StackError as error:
        server.stop()
        pytest.fail(str(error), pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def stack(tmp_path, redis_server):
    """Queues (replicas' views) and workers on one Redis and one MODEL_DIR; all stopped afterwards."""
    made = {"queues": [], "workers": []}

    class Stack:
        redis = redis_server
        model_dir = tmp_path / "models"

        def queue(self, target=RECORDED, **options):
            queue = RedisJobQueue(redis_server.url, "test-training", target=target, **options)
            made["queues"].append(queue)
            return queue

        def worker(self):
            worker = TrainingWorker(redis_server.url, tmp_path / "models", queue="test-training",
                                    log_path=tmp_path / f"worker-{len(made['workers'])}.log",
                                    extra_env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])})
            worker.start()
            made["workers"].append(worker)
            return worker

    yield Stack()
    for queue in made["queues"]:
        queue.shutdown()
    for worker in made["workers"]:
        worker.stop()


def _payload(tmp_path, tag="", **extra):
    return {"log": str(tmp_path / "runs.log"), "release": str(tmp_path / "release"), "tag": tag, **extra}


def _publish(tmp_path):
    """A publish-only trigger's payload (no tag: a run of it, or of a payload merged with it, keeps the other's)."""
    return {"action": "publish", "log": str(tmp_path / "runs.log"), "seconds": 0}


def _log(tmp_path):
    path = tmp_path / "runs.log"
    return [line.split(":") for line in path.read_text().splitlines()] if path.exists() else []


def _starts(tmp_path):
    return [f"{project}:{tag}" for project, tag, what, _ in _log(tmp_path) if what == "start"]


def test_triggers_from_two_replicas_coalesce_in_redis_and_any_replica_shows_the_workers_run(tmp_path, stack):
    one, two = stack.queue(watch=False), stack.queue(watch=False)
    stack.worker()
    assert one.trigger("3", _payload(tmp_path, "first")) == "queued"
    assert _wait_until(lambda: _starts(tmp_path) == ["3:first"])
    answers = [two.trigger("3", _payload(tmp_path, "second")), one.trigger("3", _payload(tmp_path, "third")),
               two.trigger("3", _payload(tmp_path, "fourth"))]
    assert answers == ["scheduled", "already scheduled", "already scheduled"]
    assert _wait_until(lambda: (two.status("3").progress or None) is not None and two.status("3").progress.step == 3)
    status = two.status("3")
    assert (status.running, status.pending, status.progress.stage, status.progress.total_steps) == (True, True,
                                                                                                      "training", 10)
    (tmp_path / "release").touch()
    assert one.wait_idle("3", WAIT_S)
    assert _starts(tmp_path) == ["3:first", "3:fourth"]  # one more run, with the newest trigger's payload
    for queue in (one, two):
        status = queue.status("3")
        assert (status.runs_started, status.runs_finished, status.running, status.pending) == (2, 2, False, False)
        assert status.last_error is None and status.last_result == {"tag": "fourth"}
    assert one.projects() == ["3"] and one.problems() == []


def test_two_workers_train_two_projects_at_a_time_and_lose_none(tmp_path, stack):
    queue = stack.queue(watch=False)
    for project in ("1", "2", "3", "4"):
        assert queue.trigger(project, _payload(tmp_path, seconds=2.0)) == "queued"
    # nobody listens yet: the runs wait in order, and /status says so
    assert [queue.status(p).progress.message for p in ("1", "2", "3", "4")] == [
        "queued (1st)", "queued (2nd)", "queued (3rd)", "queued (4th)"]
    assert any("no worker listens" in problem for problem in queue.problems())
    stack.worker(), stack.worker()
    assert _wait_until(lambda: all(queue.wait_idle(p, 0) for p in ("1", "2", "3", "4")))
    spans = {}
    for project, _, what, when in _log(tmp_path):
        spans.setdefault(project, {})[what] = float(when)
    assert sorted(spans) == ["1", "2", "3", "4"] and all(len(span) == 2 for span in spans.values())
    most_at_once = max(sum(1 for s in spans.values() if s["start"] <= t < s["end"])
                       for t in (span["start"] for span in spans.values()))
    assert most_at_once == 2


def test_a_worker_killed_mid_job_is_reported_and_the_next_training_works(tmp_path, stack):
    reported = []
    queue = stack.queue(target=HALF_WRITING, report_failure=lambda *args: reported.append(args))
    worker = stack.worker()
    started = tmp_path / "started"
    assert queue.trigger("5", {"started": str(started), "log": str(tmp_path / "runs.log")}) == "queued"
    assert _wait_until(lambda: started.exists())
    horse, leftover = started.read_text().split(" ", 1)
    # a trigger that waits on the run about to die (from a replica that runs the stand-in that finishes)
    assert stack.queue(watch=False).trigger("5", _payload(tmp_path, "after")) == "scheduled"
    os.kill(worker.pid, signal.SIGKILL)
    assert _wait_until(lambda: not Path(f"/proc/{horse}").exists(), "process gone"), "the job outlived its worker"
    # noticed once the heartbeat expires, within the "run abandoned" bound measured under load (no clock assertion)
    assert _wait_until(lambda: (queue.status("5").last_error or "").startswith("abandoned"), "run abandoned")
    assert reported and reported[0][0] == "5" and reported[0][2].startswith("abandoned")
    store = ModelStore(stack.model_dir)
    assert store.current("5") is None and store.version_names("5") == []  # nothing half-written is served
    assert Path(leftover).exists()
    stack.worker()  # a new worker cleans its host's leftovers and runs the trigger that waited
    (tmp_path / "release").touch()
    assert _wait_until(lambda: _starts(tmp_path) == ["5:after"])
    assert queue.wait_idle("5", WAIT_S) and queue.status("5").last_result == {"tag": "after"}
    assert not Path(leftover).exists()


def test_a_job_waiting_when_redis_restarts_runs_after_it_and_triggers_work_again(tmp_path, stack):
    queue = stack.queue(watch=False)
    assert queue.trigger("7", _payload(tmp_path, "waited", seconds=0)) == "queued"  # no worker yet: it waits
    stack.redis.restart()
    assert queue.status("7").progress.message == "queued (1st)"  # kept over the restart (appendonly)
    stack.worker()
    assert _wait_until(lambda: queue.wait_idle("7", 0)) and _starts(tmp_path) == ["7:waited"]
    stack.redis.restart()  # now while idle, with a worker connected
    assert queue.trigger("7", _payload(tmp_path, "after", seconds=0)) == "queued"
    assert _wait_until(lambda: _starts(tmp_path) == ["7:waited", "7:after"])
    assert queue.wait_idle("7", WAIT_S) and queue.status("7").runs_finished == 2


def test_a_run_that_ended_shows_the_stage_done_in_status(tmp_path, stack):
    queue = stack.queue(watch=False)
    stack.worker()
    assert queue.trigger("12", _payload(tmp_path, "once", seconds=0)) == "queued"
    assert _wait_until(lambda: queue.status("12").runs_finished == 1)
    status = queue.status("12")
    assert (status.running, status.last_error, status.progress.stage) == (False, None, "done")


def test_a_publish_trigger_never_replaces_the_training_that_waits_in_redis(tmp_path, stack):
    # the publish trigger comes from a replica whose target differs: the waiting training keeps its own
    training, publishing = stack.queue(watch=False), stack.queue(target=OTHER, watch=False)
    stack.worker()
    assert training.trigger("11", _payload(tmp_path, "first")) == "queued"
    assert _wait_until(lambda: _starts(tmp_path) == ["11:first"])
    assert training.trigger("11", _payload(tmp_path, "press", seconds=0)) == "scheduled"
    assert publishing.trigger("11", _publish(tmp_path)) == "already scheduled"
    (tmp_path / "release").touch()
    assert training.wait_idle("11", WAIT_S)
    assert [what for _, _, what, _ in _log(tmp_path)] == ["start", "end", "start", "end"]  # no run of OTHER
    assert _starts(tmp_path) == ["11:first", "11:press"]
    assert training.status("11").last_result == {"tag": "press"}  # a training: its payload has no "action"


def test_a_publish_trigger_never_replaces_a_training_press_kept_while_redis_is_down(tmp_path, stack):
    queue = stack.queue(watch=False)
    stack.redis.stop()
    assert queue.trigger("10", _payload(tmp_path, "press", seconds=0)).startswith("not queued yet")
    assert queue.trigger("10", _publish(tmp_path)).startswith("not queued yet")
    stack.redis.start()
    queue.watch_once()
    stack.worker()
    assert _wait_until(lambda: _starts(tmp_path)) and _starts(tmp_path) == ["10:press"]
    assert queue.wait_idle("10", WAIT_S) and queue.status("10").last_result == {"tag": "press"}


def test_a_worker_outlives_a_redis_restart_mid_job_and_records_the_runs_outcome(tmp_path, stack):
    reported = []
    queue = stack.queue(report_failure=lambda *args: reported.append(args))  # with the replica's watchdog
    worker = stack.worker()
    assert queue.trigger("6", _payload(tmp_path, "through")) == "queued"
    assert _wait_until(lambda: _starts(tmp_path) == ["6:through"])
    stack.redis.stop()
    # the worker's heartbeat of the job (every HEARTBEAT_S) meets the outage (before the fix, the worker died)
    assert _wait_until(lambda: "Redis unreachable during job" in worker.log_path.read_text()
                       or worker.managed.exited())
    # the run ends while Redis is down: it reports progress, and its outcome waits for Redis
    (tmp_path / "release").touch()
    ended = lambda: [what for _, _, what, _ in _log(tmp_path)] == ["start", "end"]  # noqa: E731
    assert _wait_until(lambda: ended() or worker.managed.exited())
    assert not worker.managed.exited(), "the worker died with Redis"
    stack.redis.start()  # the same port and data (appendonly): Redis restarted
    assert _wait_until(lambda: queue.status("6").runs_finished == 1 or worker.managed.exited())
    status = queue.status("6")
    assert (status.running, status.last_error, status.last_result) == (False, None, {"tag": "through"})
    assert status.progress.stage == "done" and reported == []
    assert queue.trigger("6", _payload(tmp_path, "later", seconds=0)) == "queued"
    assert _wait_until(lambda: _starts(tmp_path) == ["6:through", "6:later"] or worker.managed.exited())
    assert queue.wait_idle("6", WAIT_S) and queue.status("6").runs_finished == 2
    assert not worker.managed.exited(), "the worker died after Redis came back"


def test_a_worker_whose_work_loop_quits_on_a_redis_outage_works_again_once_redis_answers(tmp_path, stack):
    # a work horse that dies while Redis is down makes RQ's work loop quit (it asks Redis why the job ended)
    queue = stack.queue(target=HALF_WRITING)
    worker = stack.worker()
    started = tmp_path / "started"
    assert queue.trigger("13", {"started": str(started), "log": str(tmp_path / "runs.log")}) == "queued"
    assert _wait_until(lambda: started.exists())
    stack.redis.stop()
    os.kill(int(started.read_text().split(" ", 1)[0]), signal.SIGKILL)
    assert _wait_until(lambda: "the worker stopped working" in worker.log_path.read_text() or worker.managed.exited())
    stack.redis.start()
    assert _wait_until(lambda: (queue.status("13").last_error or "").startswith("abandoned"), "run abandoned")
    assert stack.queue(watch=False).trigger("13", _payload(tmp_path, "after", seconds=0)) == "queued"
    assert _wait_until(lambda: _starts(tmp_path) == ["13:after"] or worker.managed.exited())
    assert queue.wait_idle("13", WAIT_S) and not worker.managed.exited(), "the worker died with Redis"
    from rq import Queue, Worker

    assert len(Worker.all(queue=Queue("test-training", connection=queue.redis))) == 1  # the old one unregistered


def test_a_trigger_while_redis_is_down_is_kept_named_in_status_and_sent_when_it_answers(tmp_path, stack):
    queue = stack.queue(watch=False)
    stack.worker()
    stack.redis.stop()
    answer = queue.trigger("8", _payload(tmp_path, "kept", seconds=0))
    assert answer.startswith("not queued yet: the training queue at 127.0.0.1:") and "kept" in answer
    assert queue.status("8").pending and queue.projects() == ["8"]
    [problem] = queue.problems()
    assert "unreachable" in problem and "project(s) 8" in problem
    stack.redis.start()
    queue.watch_once()
    assert queue.problems() == [] or all("no worker" in p for p in queue.problems())
    assert _wait_until(lambda: _starts(tmp_path) == ["8:kept"])
    assert queue.wait_idle("8", WAIT_S)


def test_a_redis_that_lost_its_data_is_named_in_status(tmp_path, redis_server):
    redis_server.stop()
    volatile = RedisServer(tmp_path / "volatile", port=redis_server.port, persistent=False)
    volatile.start()
    try:
        queue = RedisJobQueue(volatile.url, "test-training", target=RECORDED, watch=False)
        queue.watch_once()
        assert queue.trigger("9", _payload(tmp_path)) == "queued"
        volatile.restart()
        queue.watch_once()
        [problem] = queue.problems()
        assert "lost its data" in problem and "Start Training again" in problem
        assert queue.status("9").running is False  # the waiting run went with the data
        queue.shutdown()
    finally:
        volatile.stop()


def test_with_redis_down_start_training_answers_at_once_and_status_says_why_nothing_runs(tmp_path):
    from scripts.stack import free_port

    from backend.serving.app import create_app
    from backend.shared.settings import Settings
    from tests.helpers.service_fakes import CONFIG

    settings = Settings(model_dir=tmp_path / "models", training_queue=f"redis://127.0.0.1:{free_port()}/0",
                        train_every_n=0)
    app = create_app(settings)
    client = app.test_client()
    try:
        assert client.post("/setup", json={"project": "4.1718000000", "schema": CONFIG}).status_code == 200
        answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 4}})
        assert answer.status_code == 200
        assert "not queued yet: the training queue at 127.0.0.1:" in str(answer.get_json())
        status = client.get("/status").get_json()
        [problem] = status["training_queue"]["problems"]
        assert "unreachable" in problem and "project(s) 4" in problem
        assert status["projects"]["4"]["pending"] is True
    finally:
        app.extensions["ner_service"].shutdown()


def test_a_work_horse_killed_mid_job_leaves_no_half_written_folder_while_its_worker_lives(tmp_path, stack):
    queue = stack.queue(target=HALF_WRITING)
    worker = stack.worker()
    started = tmp_path / "started"
    assert queue.trigger("14", {"started": str(started), "log": str(tmp_path / "runs.log")}) == "queued"
    assert _wait_until(lambda: started.exists())
    horse, leftover = started.read_text().split(" ", 1)
    os.kill(int(horse), signal.SIGKILL)  # the job's process (out of memory, or by hand); the worker goes on
    assert _wait_until(lambda: (queue.status("14").last_error or "").startswith("abandoned"), "run abandoned")
    assert _wait_until(lambda: not Path(leftover).exists()), "the killed job's folder stays until a worker restarts"
    assert not worker.managed.exited()


def test_a_review_whose_worker_was_killed_is_reported_as_a_review(tmp_path, stack):
    reported = []
    queue = stack.queue(target=HALF_WRITING, report_failure=lambda *args: reported.append(args))
    worker = stack.worker()
    started = tmp_path / "started"
    payload = {"started": str(started), "log": str(tmp_path / "runs.log"), "action": "review"}
    assert queue.trigger("15", payload) == "queued"
    assert _wait_until(lambda: started.exists())
    from rq.job import Job

    job_id = queue.redis.hget(project_key(queue.queue_name, "15"), "job").decode()
    assert Job.fetch(job_id, connection=queue.redis).description == "review the annotations of project 15"
    os.kill(worker.pid, signal.SIGKILL)
    assert _wait_until(lambda: (queue.status("15").last_error or "").startswith("abandoned"), "run abandoned")
    error = queue.status("15").last_error
    assert "during this review" in error and "start the review again" in error and "training" not in error, error
    assert reported and reported[0][1]["action"] == "review" and reported[0][2] == error
