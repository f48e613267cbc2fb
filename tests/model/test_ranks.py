"""The launcher of one training's processes (backend/model/ranks.py), with stand-in rank functions: rank 0's result
and progress come back, a rank's error is raised as it was, a killed rank is named and the others are stopped."""
import os
import signal
import time
from pathlib import Path

import pytest

from backend.model.ranks import RankDied, describe_exit, run_ranks
from tests.helpers.waits import bound

WAIT_S = bound("child event")


# --- stand-in ranks (module level: the spawned processes import them by name) -------------------------------
def reporting_rank(tag, report):
    rank = int(os.environ["RANK"])
    report((tag, rank, int(os.environ["WORLD_SIZE"])))
    return f"{tag} from rank {rank}"


def failing_rank(report):
    if os.environ["RANK"] == "1":
        raise ValueError("tags ['B-Wine'] are not in the label list")
    _wait_for_stop()


def killed_rank(started, report):
    if os.environ["RANK"] == "1":
        deadline = time.monotonic() + WAIT_S
        while not Path(started).exists() and time.monotonic() < deadline:  # rank 0 runs
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGKILL)
    Path(started).write_text(str(os.getpid()))
    _wait_for_stop()


def _wait_for_stop():
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:  # until the launcher stops this rank
        time.sleep(0.05)


def test_rank_0s_result_comes_back_and_every_report_reaches_the_caller():
    seen = []
    assert run_ranks(3, reporting_rank, ("hello",), seen.append) == "hello from rank 0"
    assert sorted(seen) == [("hello", 0, 3), ("hello", 1, 3), ("hello", 2, 3)]


def test_an_error_of_a_rank_is_raised_as_it_was():
    with pytest.raises(ValueError, match=r"B-Wine"):
        run_ranks(2, failing_rank, ())


def test_a_killed_rank_is_named_and_the_others_are_stopped(tmp_path):
    started = tmp_path / "rank0"
    with pytest.raises(RankDied) as error:
        run_ranks(2, killed_rank, (str(started),))
    assert "rank 1" in str(error.value) and "SIGKILL" in str(error.value)
    pid = int(started.read_text())  # rank 0 was running, and is gone now: not left waiting on its peer
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_an_exit_reads_as_its_cause():
    assert "killed by signal 15 (SIGTERM)" in describe_exit(0, 4, -15)
    assert "exit code 1" in describe_exit(3, 4, 1) and "rank 3" in describe_exit(3, 4, 1)


def launcher_of_waiting_ranks(pids_file):
    """A watcher (its own process) of two ranks that write their pids and wait."""
    run_ranks(2, waiting_rank, (pids_file,))


def waiting_rank(pids_file, report):
    with open(pids_file, "a") as pids:
        pids.write(f"{os.getpid()}\n")
    _wait_for_stop()


def test_ranks_end_with_their_watcher(tmp_path):
    import multiprocessing

    from tests.helpers.waits import wait_for

    pids_file = tmp_path / "pids"
    watcher = multiprocessing.get_context("spawn").Process(target=launcher_of_waiting_ranks, args=(str(pids_file),))
    watcher.start()
    assert wait_for(lambda: pids_file.exists() and len(pids_file.read_text().split()) == 2, "child event")
    os.kill(watcher.pid, signal.SIGKILL)  # e.g. a training child killed by hand
    watcher.join()
    pids = [int(pid) for pid in pids_file.read_text().split()]

    def gone(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"  # ended, not yet reaped

    assert wait_for(lambda: all(gone(pid) for pid in pids), "process gone")


def saving_rank(started, report):
    """Rank 1 is done at once (it ends with exit code 0); rank 0 goes on "saving" until it is killed."""
    if os.environ["RANK"] != "0":
        return None
    Path(started).write_text(str(os.getpid()))
    _wait_for_stop()
    return "saved"


def test_the_main_rank_killed_while_it_saves_after_the_others_ended_is_named(tmp_path):
    import threading

    from tests.helpers.waits import wait_for

    started, raised = tmp_path / "rank0", []

    def watch():
        try:
            raised.append(run_ranks(2, saving_rank, (str(started),)))
        except BaseException as error:  # noqa: BLE001
            raised.append(error)

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert wait_for(lambda: started.exists() and started.read_text(), "child event")
    os.kill(int(started.read_text()), signal.SIGKILL)
    watcher.join(WAIT_S)
    [error] = raised
    assert isinstance(error, RankDied), error
    assert "training process 0 of 2 (rank 0) was killed by signal 9 (SIGKILL)" in str(error)


def rank_aborting_at_exit(pid_file, report):
    """Rank 1 does its part and returns, then its interpreter aborts on the way out (SIGABRT, as a C++ thread left
    joinable at exit does: seen once on an RQ worker, 'terminate called without an active exception'); rank 0 is
    still saving then, and returns once rank 1 is gone."""
    if os.environ["RANK"] == "1":
        from multiprocessing import util

        Path(pid_file).write_text(str(os.getpid()))
        # after the queue's own finalizer (-5) has flushed what this rank said: the abort comes last
        util.Finalize(None, os.kill, args=(os.getpid(), signal.SIGABRT), exitpriority=-10)
        return None
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:  # "saving" until rank 1 has ended
        if Path(pid_file).exists():
            try:
                os.kill(int(Path(pid_file).read_text()), 0)
            except ProcessLookupError:
                break
            if Path(f"/proc/{Path(pid_file).read_text()}/stat").read_text().split(")")[-1].split()[0] == "Z":
                break
        time.sleep(0.02)
    return "saved"


def test_a_rank_that_finished_its_part_and_aborts_at_exit_does_not_cost_the_saved_result(tmp_path):
    assert run_ranks(2, rank_aborting_at_exit, (str(tmp_path / "rank1"),)) == "saved"


def rank_aborting_mid_part(report):
    if os.environ["RANK"] == "1":
        os.kill(os.getpid(), signal.SIGABRT)  # before its part is done: the run fails, as before
    _wait_for_stop()


def test_a_rank_that_aborts_before_its_part_is_done_still_fails_the_run():
    with pytest.raises(RankDied, match=r"rank 1\) was killed by signal 6 \(SIGABRT\)"):
        run_ranks(2, rank_aborting_mid_part, ())
