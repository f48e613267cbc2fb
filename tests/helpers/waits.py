"""Waiting in tests: every wait polls for its event and gives up only after a bound, never sleeps a fixed time.

Each bound in ``BOUNDS_S`` is named after the event it waits for and was set from the slowest time that event
took on a 2-core machine loaded by other jobs (load average 7: another engineer's test suite, a benchmark's
training and a second Label Studio beside this one), with a wide margin: a bound that fires means the event did not
happen, not that the machine was busy. Set ``TEST_WAIT_LOG=<file>`` to append every wait's event and seconds as
JSON lines and measure again; ``TEST_WAIT_SCALE`` multiplies every bound (a slower machine).
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

# event -> bound (s). "slowest": the longest wait for the event over tests/serving/test_app.py, test_batching.py,
# test_jobs.py, test_queue.py and test_reliability.py (1,141 tests) on 2 cores at load average 7.3 (another
# engineer's suite, a benchmark training against its own Label Studio, a second Label Studio); each bound is at
# least ten times that, and never under a minute
BOUNDS_S = {
    "version served": 60.0,  # a promoted version loaded in the background answers /predict; slowest 0.05 s
    "model loaded": 60.0,  # /setup's background load of the current version; slowest 0.01 s
    "requests refused": 60.0,  # the batcher's queue is full and the requests beyond it are refused; slowest 0.01 s
    "process gone": 60.0,  # a killed worker's work horse is gone from /proc; slowest 2.0 s
    "run abandoned": 150.0,  # a killed worker's run is reported abandoned (heartbeat expiry + grace); slowest 14.9 s
    "child event": 120.0,  # a spawned run or worker reached a point of its own (a file, a log line, idle); slowest 5.5 s
    # end to end (tests/e2e), against a real Label Studio; slowest over test_label_studio_e2e.py and
    # test_promises.py at load average 7.5 (this machine also ran a benchmark importing 50,000 tasks)
    "run started": 120.0,  # Start Training pressed -> /status counts a run; slowest 0.1 s
    "run stage": 180.0,  # a run reached a stage (read the annotations; named a missing field in /status); slowest 9.2 s
    "run ended": 120.0,  # a training child killed -> /status says no run; slowest 0.5 s
    "label studio updated": 120.0,  # Label Studio shows what the backend wrote (model version, card); slowest 4.1 s
    # a review of tests/e2e/test_review_e2e.py's 80 tasks (5 tiny models of 40 epochs) done; 25.1 / 25.3 s at load
    # average 2-5 (a benchmark's training, then four busy loops beside it), slowest 32.5 s at load average 6 (four
    # busy loops and another engineer's tests)
    "review done": 600.0,
}


def bound(event: str) -> float:
    return BOUNDS_S[event] * float(os.environ.get("TEST_WAIT_SCALE") or 1)


def wait_for(condition: Callable[[], object], event: str, interval_s: float = 0.02,
             bound_s: float | None = None) -> bool:
    """Poll ``condition`` until it is true (True) or the bound of ``event`` passed (False)."""
    limit = bound_s if bound_s is not None else bound(event)
    started = time.monotonic()
    deadline = started + limit
    while True:
        if condition():
            _record(event, time.monotonic() - started, True)
            return True
        if time.monotonic() >= deadline:
            _record(event, time.monotonic() - started, False)
            return False
        time.sleep(interval_s)


def _record(event: str, seconds: float, happened: bool) -> None:
    path = os.environ.get("TEST_WAIT_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"event": event, "seconds": round(seconds, 3), "happened": happened,
                                  "test": os.environ.get("PYTEST_CURRENT_TEST", "")}) + "\n")
