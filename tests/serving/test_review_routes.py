"""``/review``: POST queues a review on the training loop's queue (never runs it here), GET answers the stored record
with the run's state; the report page lists the flagged tasks with links into Label Studio and has the button."""
import pytest

from backend.serving.app import create_app
from backend.serving.service import NerService
from backend.shared.settings import Settings
from backend.shared.store import ModelStore
from backend.training.jobs import REVIEW
from tests.helpers.service_fakes import CONFIG, FakeJobs

PROJECT = "3.1718000000"
RECORD = {"project": "3", "state": "done", "folds": 2, "finished_at": "2026-01-01T00:00:00Z",
          "tasks": [{"task": 12, "score": 4.5, "fold": 0, "findings": [
              {"kind": "other type", "text": "thai", "label": "Dish", "model_label": "Cuisine", "doubt": 4.5}]},
                    {"task": 7, "score": 0.0, "fold": 1, "findings": []}],
          "unaligned": [{"task": 9, "problems": ["realigned"], "notes": [], "scored": True}],
          "agreement": {"tasks": 1, "overall": {"f1": 0.5, "matched": 1, "spans": 4, "pairs": 1},
                        "per_type": {"Dish": {"f1": 0.5, "matched": 1, "spans": 4, "pairs": 1}},
                        "per_pair": [{"annotators": ["ann", "bob"], "f1": 0.5, "matched": 1, "spans": 4, "pairs": 1}],
                        "disagreements": [{"task": 12, "f1": 0.5, "annotators": {}}]}}


@pytest.fixture
def setup(tmp_path):
    settings = Settings(model_dir=tmp_path / "models", label_studio_url="http://ls.test")
    store, jobs = ModelStore(settings.model_dir), FakeJobs()
    http = create_app(settings, NerService(settings, store=store, jobs=jobs)).test_client()
    assert http.post("/setup", json={"project": PROJECT, "schema": CONFIG, "hostname": "http://ls.test",
                                     "access_token": "t"}).status_code == 200
    return http, store, jobs


def test_post_queues_a_review_job_with_the_address_label_studio_gave(setup):
    http, _, jobs = setup
    answer = http.post("/review?project=3")
    assert answer.status_code == 202 and answer.get_json() == {"project": "3", "review": "started"}
    assert jobs.triggers == [("3", {"action": REVIEW, "hostname": "http://ls.test", "access_token": "t"})]


def test_get_answers_the_stored_review_most_likely_wrong_first(setup):
    http, store, _ = setup
    assert http.get("/review?project=3").get_json()["state"] == "none"
    store.record_review("3", RECORD)
    body = http.get("/review?project=3").get_json()
    assert [item["task"] for item in body["tasks"]] == [12, 7] and body["state"] == "done"
    assert body["agreement"]["overall"]["f1"] == 0.5 and body["unaligned"][0]["task"] == 9


def test_the_route_names_what_is_missing(setup):
    http, _, _ = setup
    assert "GET /review?project=<id>" in http.get("/review").get_json()["error"]
    assert http.post("/review").status_code == 400


def test_the_report_page_lists_the_flagged_tasks_with_links_and_the_button(setup):
    http, store, _ = setup
    store.record_review("3", RECORD)
    page = http.get("/report?project=3").get_data(as_text=True)
    assert "href='http://ls.test/projects/3/data?task=12'" in page
    assert "task=7'" not in page.split("Tasks where annotators")[0]  # no finding: not listed
    assert "<button type='submit'>Review the annotations</button>" in page and "ann / bob 0.500" in page
    answer = http.post("/review?project=3", headers={"Accept": "text/html"})
    assert answer.status_code == 303 and answer.headers["Location"].endswith("report?project=3")


def test_status_says_when_a_review_could_not_be_written_into_label_studio(tmp_path):
    from backend.training.jobs import JobStatus

    class ReviewedJobs(FakeJobs):
        def status(self, project):
            return JobStatus(project, last_result={"review": "done", "scored": 11, "report_error":
                                                   "PermissionError: 403: you may not create views"})

    settings = Settings(model_dir=tmp_path / "models")
    service = NerService(settings, store=ModelStore(settings.model_dir), jobs=ReviewedJobs())
    warnings = service.status("3")["projects"]["3"]["warnings"]
    assert not any("scores of None" in warning for warning in warnings), warnings
    [warning] = [warning for warning in warnings if "403" in warning]
    assert warning.startswith("the review could not be written into Label Studio"), warning
    # a review that ran after a training: the training's summary holds it
    ReviewedJobs.status = lambda self, project: JobStatus(project, last_result={
        "version": "v2", "report_error": None, "review": {"review": "done", "report_error": "ConnectError: refused"}})
    warnings = service.status("3")["projects"]["3"]["warnings"]
    assert any(w.startswith("the review could not be written") and "refused" in w for w in warnings), warnings


def test_the_report_page_before_any_review_says_there_is_none_and_has_the_button(setup):
    http, _, _ = setup
    page = http.get("/report?project=3").get_data(as_text=True)
    assert "No review yet." in page and "Last review" not in page
    assert "<form method='post' action='review?project=3'>" in page


def test_a_training_alone_is_not_shown_as_a_review_going_but_a_review_asked_behind_it_is(tmp_path):
    from backend.training.jobs import JobQueue
    from tests.helpers.waits import bound
    from tests.training.test_jobs import recorded_run

    settings = Settings(model_dir=tmp_path / "models", label_studio_url="http://ls.test")
    store = ModelStore(settings.model_dir)
    store.record_review("3", RECORD)
    jobs = JobQueue(recorded_run, tmp_path / "models" / ".jobs")
    http = create_app(settings, NerService(settings, store=store, jobs=jobs)).test_client()
    payload = {"log": str(tmp_path / "runs.log"), "release": str(tmp_path / "release")}
    try:
        assert http.post("/setup", json={"project": PROJECT, "schema": CONFIG}).status_code == 200
        assert jobs.trigger("3", payload) == "started"  # a training press
        body = http.get("/review?project=3").get_json()
        assert (body["state"], body["progress"]) == ("done", None), body  # the last review, no review going
        assert http.post("/review?project=3").get_json()["review"] == "scheduled"  # asked behind the training
        assert http.get("/review?project=3").get_json()["state"] == "running"
        assert http.get("/status?project=3").get_json()["projects"]["3"]["review"] is True
    finally:
        (tmp_path / "release").touch()
        jobs.wait_idle("3", bound("child event"))
        jobs.shutdown()


@pytest.mark.parametrize("answer, code", [
    ("refused: another backend process on this MODEL_DIR is training project 3; several serving processes need "
     "TRAINING_QUEUE (see docs/deploy.md)", 409),
    ("shutting down", 503)])
def test_a_review_the_queue_refused_is_not_answered_as_accepted(setup, answer, code):
    http, _, jobs = setup
    jobs.trigger = lambda project, payload=None: answer
    refused = http.post("/review?project=3")
    assert refused.status_code == code and refused.get_json()["review"] == answer
    # the report page's button does not go back to the page as if it had started
    assert http.post("/review?project=3", headers={"Accept": "text/html"}).status_code == code


def test_a_review_kept_while_the_queue_is_unreachable_is_accepted(setup):
    http, _, jobs = setup
    jobs.trigger = lambda project, payload=None: ("not queued yet: the training queue at 127.0.0.1:6379/0 is "
                                                  "unreachable (refused); the trigger is kept and sent when it answers")
    assert http.post("/review?project=3").status_code == 202


def test_a_review_that_died_reads_failed_and_a_training_that_died_leaves_the_review_alone(tmp_path):
    from backend.training.jobs import JobQueue
    from tests.helpers.waits import bound
    from tests.training.test_jobs import killed_run

    settings = Settings(model_dir=tmp_path / "models", label_studio_url="http://ls.test")
    store = ModelStore(settings.model_dir)
    store.record_review("3", RECORD)
    jobs = JobQueue(killed_run, tmp_path / "models" / ".jobs")
    http = create_app(settings, NerService(settings, store=store, jobs=jobs)).test_client()
    try:
        assert http.post("/setup", json={"project": PROJECT, "schema": CONFIG}).status_code == 200
        assert http.post("/review?project=3").status_code == 202  # its process is killed
        assert jobs.wait_idle("3", bound("child event"))
        body = http.get("/review?project=3").get_json()
        # not "done": a client waiting for the review to end must not take the last one for this one
        assert body["state"] == "failed" and "review process was killed" in body["last_error"], body
        assert body["finished_at"] == RECORD["finished_at"]  # the last review's record is still there
        assert jobs.trigger("3", {}) == "started"  # a training press, whose process is killed too
        assert jobs.wait_idle("3", bound("child event"))
        body = http.get("/review?project=3").get_json()
        assert (body["state"], body["last_error"]) == ("done", None), body  # the training's error is not the review's
    finally:
        jobs.shutdown()
