"""The demo console says how each training run ended, promoted or not."""
from scripts.demo import run_outcome
from scripts.scenario import ProjectStatus


def _status(result=None, error=None, finished=2):
    return ProjectStatus(current_version="v1", running=False, pending=False, runs_started=finished,
                         runs_finished=finished, last_error=error, progress={},
                         raw={"last_result": result, "last_error": error})


def test_a_promoted_run_a_kept_one_nothing_new_and_a_failure_each_get_a_line():
    promoted = {"version": "v2", "decision": "promoted: F1 0.712 >= 0.699 of v1", "published": {"published": 40}}
    assert run_outcome(_status(promoted)) == \
        "run 2: v2 promoted: F1 0.712 >= 0.699 of v1; published to 40 unlabelled task(s)"
    kept = {"version": "v3", "decision": "kept v2: F1 0.689 < 0.699", "published": None}
    assert run_outcome(_status(kept, finished=3)) == "run 3: v3 kept v2: F1 0.689 < 0.699"
    assert run_outcome(_status({"version": None, "decision": "nothing new since v2: ..."})) == \
        "run 2: nothing new since v2: ..."
    assert run_outcome(_status(error="TrainingDataError: too few")) == "run 2 failed: TrainingDataError: too few"
