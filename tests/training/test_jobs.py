"""Training jobs: a child process per run, one at a time per project, triggers during a run coalesce into
exactly one more run, and failures (errors, kills) are reported in the status."""
import os
import signal
import time
from pathlib import Path

import pytest

from backend.training.jobs import JobQueue
from tests.helpers.waits import bound, wait_for

WAIT_S = bound("child event")


# --- fake training targets (module level: the spawned child imports them by name) ----------------------------
def recorded_run(project, payload, progress):
    """Append the payload's tag to the log, report progress, then wait until the test releases the run."""
    with open(payload["log"], "a") as log:
        log.write(f"{project}:{payload.get('tag', '')}\n")
    progress("training", step=3, total_steps=10, epoch=1)
    release = Path(payload["release"])
    deadline = time.monotonic() + WAIT_S
    while not release.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return {"tag": payload.get("tag")}


def failing_run(project, payload, progress):
    raise ValueError(f"project {project} has no annotated tasks")


def killed_run(project, payload, progress):
    os.kill(os.getpid(), signal.SIGKILL)


def _wait_until(condition):
    return wait_for(condition, "child event")


@pytest.fixture
def queue_of(tmp_path):
    queues = []

    def build(target, **options):
        queue = JobQueue(target, tmp_path / "jobs", **options)
        queues.append(queue)
        return queue

    yield build
    for queue in queues:
        queue.shutdown()


def _payload(tmp_path, tag="", release="release"):
    return {"log": str(tmp_path / "runs.log"), "release": str(tmp_path / release), "tag": tag}


def _runs(tmp_path):
    path = tmp_path / "runs.log"
    return path.read_text().splitlines() if path.exists() else []


def test_triggers_during_a_run_coalesce_into_exactly_one_more_run(tmp_path, queue_of):
    queue = queue_of(recorded_run)
    assert queue.trigger("3", _payload(tmp_path, "first")) == "started"
    assert _wait_until(lambda: len(_runs(tmp_path)) == 1)
    answers = [queue.trigger("3", _payload(tmp_path, f"again{i}")) for i in range(5)]
    assert answers == ["scheduled"] + ["already scheduled"] * 4
    (tmp_path / "release").touch()
    assert queue.wait_idle("3", WAIT_S)
    # the one extra run uses the newest trigger's payload
    assert _runs(tmp_path) == ["3:first", "3:again4"]
    status = queue.status("3")
    assert (status.runs_started, status.runs_finished, status.running, status.pending) == (2, 2, False, False)
    assert status.last_error is None and status.last_result == {"tag": "again4"}


def test_a_trigger_after_a_run_has_finished_starts_a_new_run(tmp_path, queue_of):
    queue = queue_of(recorded_run)
    (tmp_path / "release").touch()
    queue.trigger("3", _payload(tmp_path, "one"))
    assert queue.wait_idle("3", WAIT_S)
    assert queue.trigger("3", _payload(tmp_path, "two")) == "started"
    assert queue.wait_idle("3", WAIT_S)
    assert _runs(tmp_path) == ["3:one", "3:two"]


def test_trigger_returns_at_once_and_status_shows_the_childs_progress(tmp_path, queue_of):
    queue = queue_of(recorded_run)
    started = time.perf_counter()
    queue.trigger("3", _payload(tmp_path))
    assert time.perf_counter() - started < 0.05
    assert queue.status("3").running
    assert _wait_until(lambda: (queue.status("3").progress or None) is not None
                       and queue.status("3").progress.step == 3)
    progress = queue.status("3").progress
    assert (progress.stage, progress.step, progress.total_steps, progress.epoch) == ("training", 3, 10, 1)
    (tmp_path / "release").touch()
    assert queue.wait_idle("3", WAIT_S)


def test_with_train_concurrency_2_two_projects_train_at_the_same_time(tmp_path, queue_of):
    queue = queue_of(recorded_run, concurrency=2)
    queue.trigger("1", _payload(tmp_path))
    queue.trigger("2", _payload(tmp_path))
    assert _wait_until(lambda: sorted(_runs(tmp_path)) == ["1:", "2:"])
    assert queue.status("1").running and queue.status("2").running
    (tmp_path / "release").touch()
    assert queue.wait_idle("1", WAIT_S) and queue.wait_idle("2", WAIT_S)


def test_by_default_one_training_runs_at_a_time_and_the_others_wait_in_the_order_they_came(tmp_path, queue_of):
    queue = queue_of(recorded_run)
    answers = [queue.trigger(p, _payload(tmp_path, release=f"release-{p}")) for p in ("4", "2", "9")]
    assert answers == ["started"] * 3
    assert _wait_until(lambda: _runs(tmp_path) == ["4:"])
    places = {p: (queue.status(p).running, queue.status(p).queued, queue.status(p).progress.message) for p in "29"}
    assert places == {"2": (True, 1, "queued (1st)"), "9": (True, 2, "queued (2nd)")}
    assert queue.trigger("9", _payload(tmp_path, "again", release="release-9")) == "scheduled"  # coalesces as before
    (tmp_path / "release-4").touch()
    assert _wait_until(lambda: _runs(tmp_path) == ["4:", "2:"])
    assert queue.status("9").progress.message == "queued (1st)" and queue.status("4").queued is None
    (tmp_path / "release-2").touch()
    (tmp_path / "release-9").touch()
    assert queue.wait_idle("9", WAIT_S)
    assert _runs(tmp_path) == ["4:", "2:", "9:", "9:again"]  # none lost, never two at once (each waited)


def test_shutdown_drops_the_runs_waiting_for_a_slot(tmp_path, queue_of):
    queue = queue_of(recorded_run)
    queue.trigger("1", _payload(tmp_path))
    queue.trigger("2", _payload(tmp_path))
    assert _wait_until(lambda: _runs(tmp_path) == ["1:"])
    queue.shutdown()
    assert queue.wait_idle("2", WAIT_S) and queue.wait_idle("1", WAIT_S)
    assert _runs(tmp_path) == ["1:"] and queue.status("2").runs_started == 0


def test_a_second_backend_on_the_same_model_dir_refuses_to_train_a_project_the_first_trains(tmp_path, queue_of):
    first, second = queue_of(recorded_run), queue_of(recorded_run)  # as two processes: one lock file per project
    assert first.trigger("3", _payload(tmp_path)) == "started"
    assert _wait_until(lambda: _runs(tmp_path) == ["3:"])
    answer = second.trigger("3", _payload(tmp_path))
    assert answer.startswith("refused: another backend process on this MODEL_DIR") and "TRAINING_QUEUE" in answer
    assert second.status("3").running and second.status("3").last_error is None  # it shows the other one's run
    assert second.trigger("5", _payload(tmp_path, release="release-5")) == "started"  # other projects are free
    (tmp_path / "release").touch()
    (tmp_path / "release-5").touch()
    assert first.wait_idle("3", WAIT_S) and second.wait_idle("5", WAIT_S)
    assert second.trigger("3", _payload(tmp_path, "after")) == "started"  # the lock is released with the run
    assert second.wait_idle("3", WAIT_S)
    assert _runs(tmp_path) == ["3:", "5:", "3:after"]


def test_another_process_on_the_same_model_dir_is_refused_while_this_one_trains(tmp_path, queue_of):
    import subprocess
    import sys

    queue = queue_of(recorded_run)
    assert queue.trigger("3", _payload(tmp_path)) == "started"
    assert _wait_until(lambda: _runs(tmp_path) == ["3:"])
    other = ("import sys; from backend.training.jobs import JobQueue; from tests.training.test_jobs import recorded_run; "
             "q = JobQueue(recorded_run, sys.argv[1]); print(q.trigger('3', {})); print(q.status('3').running)")
    done = subprocess.run([sys.executable, "-c", other, str(tmp_path / "jobs")], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=WAIT_S)
    answer, running = done.stdout.splitlines()
    assert answer.startswith("refused: another backend process on this MODEL_DIR") and running == "True"
    (tmp_path / "release").touch()
    assert queue.wait_idle("3", WAIT_S) and _runs(tmp_path) == ["3:"]


def test_a_failed_run_reports_its_error(tmp_path, queue_of):
    queue = queue_of(failing_run)
    queue.trigger("7")
    assert queue.wait_idle("7", WAIT_S)
    status = queue.status("7")
    assert not status.running and status.runs_finished == 1
    assert status.last_error == "ValueError: project 7 has no annotated tasks"
    assert status.progress.stage == "failed"


def test_a_restarted_queue_shows_the_last_run_of_each_project(tmp_path, queue_of):
    # A server restart (a new container) must not forget why the last training failed, or what it gave.
    first = queue_of(failing_run)
    first.trigger("7")
    assert first.wait_idle("7", WAIT_S)
    succeeding = queue_of(recorded_run)
    (tmp_path / "release").touch()
    succeeding.trigger("8", _payload(tmp_path, "kept"))
    assert succeeding.wait_idle("8", WAIT_S)
    first.shutdown()
    succeeding.shutdown()

    restarted = queue_of(recorded_run)
    assert restarted.projects() == ["7", "8"]
    failed, succeeded = restarted.status("7"), restarted.status("8")
    assert failed.last_error == "ValueError: project 7 has no annotated tasks" and failed.progress.stage == "failed"
    assert failed.last_finished_at and not failed.running and failed.runs_started == 0
    assert succeeded.last_error is None and succeeded.last_result == {"tag": "kept"}
    assert succeeded.progress.stage == "done"


def test_a_run_that_the_server_stopped_is_shown_as_interrupted_after_a_restart(tmp_path, queue_of):
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "4.json").write_text('{"state": "running", "progress": {"stage": "training", "step": 5}}')
    status = queue_of(recorded_run).status("4")
    assert status.last_error == "interrupted: the server stopped during this run" and not status.running
    assert (status.progress.stage, status.progress.step) == ("failed", 5)


def test_an_unusable_status_folder_is_reported_and_the_project_does_not_stay_training(tmp_path):
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    queue = JobQueue(failing_run, in_the_way / "jobs")
    try:
        queue.trigger("7")
        assert queue.wait_idle("7", WAIT_S)
        status = queue.status("7")
        assert not status.running and not status.pending and status.runs_finished == 1
        assert "could not run the training process" in status.last_error
    finally:
        queue.shutdown()


def test_a_killed_run_is_reported_as_killed(tmp_path, queue_of):
    queue = queue_of(killed_run)
    queue.trigger("7")
    assert queue.wait_idle("7", WAIT_S)
    assert "killed by signal 9" in queue.status("7").last_error


def test_a_success_after_a_failure_clears_the_error(tmp_path, queue_of):
    failing = queue_of(failing_run)
    failing.trigger("7")
    assert failing.wait_idle("7", WAIT_S)
    assert failing.status("7").last_error
    failing.target = recorded_run
    (tmp_path / "release").touch()
    failing.trigger("7", _payload(tmp_path))
    assert failing.wait_idle("7", WAIT_S)
    assert failing.status("7").last_error is None


def test_shutdown_stops_a_running_child(tmp_path, queue_of):
    queue = queue_of(recorded_run)
    queue.trigger("3", _payload(tmp_path))
    assert _wait_until(lambda: len(_runs(tmp_path)) == 1)
    started = time.monotonic()
    queue.shutdown(timeout=20)
    assert time.monotonic() - started < 20
    status = queue.status("3")
    assert not status.running and "shut down" in status.last_error
    assert queue.trigger("3", _payload(tmp_path)) == "shutting down"


def test_a_press_cut_short_by_a_restart_and_the_one_waiting_behind_it_run_once_when_the_server_starts(
        tmp_path, queue_of):
    """A press is kept until it runs: the run a stopped server cut short and the trigger that waited behind it are
    owed on disk, and the next server runs them as one run; a run that ended (even failed or killed) is not owed."""
    first = queue_of(recorded_run)
    first.trigger("3", _payload(tmp_path, "pressed"))
    assert _wait_until(lambda: len(_runs(tmp_path)) == 1)
    assert first.trigger("3", _payload(tmp_path, "pressed again")) == "scheduled"
    first.shutdown()
    assert "shut down" in first.status("3").last_error

    (tmp_path / "release").touch()
    restarted = queue_of(recorded_run)
    assert restarted.resume() == {"3": "started"}
    assert restarted.wait_idle("3", WAIT_S)
    assert _runs(tmp_path) == ["3:pressed", "3:pressed again"] and restarted.status("3").runs_finished == 1
    assert restarted.status("3").last_error is None
    restarted.shutdown()
    assert queue_of(recorded_run).resume() == {}  # nothing owed any more

    killed = queue_of(killed_run)
    killed.trigger("4")
    assert killed.wait_idle("4", WAIT_S)
    assert queue_of(recorded_run).resume() == {}
