"""Publishing: after a promotion every unannotated task gets the new version's prediction once (older versions'
predictions stay), at most PUBLISH_MAX_TASKS of them, lowest task id first; the version becomes the project's model
version; progress shows as "publishing k/n"; a failure is reported and leaves the version serving; a project that
connects with a version never published, or new tasks, start a publishing job of its own."""
import json
import math
from dataclasses import replace

import pytest

from backend.serving.app import create_app
from backend.serving.service import NerService
from backend.shared.settings import Settings
from backend.shared.store import ModelStore
from backend.training.training_run import train_project
from tests.helpers.service_fakes import CONFIG, CountingLoader, FakeJobs, FakeLabelStudio, FakePredictor, add_version, annotated_task
from tests.helpers.service_fakes import TEXTS, FakeTraining


def _unlabelled(ids, predictions=None):
    return [{"id": i, "data": {"text": "cheap pizza tonight"}, "predictions": list((predictions or {}).get(i, []))}
            for i in ids]


class Progress:
    def __init__(self):
        self.messages = []

    def __call__(self, stage=None, **kwargs):
        if kwargs.get("message"):
            self.messages.append(kwargs["message"])


def _counts(published: dict) -> dict:
    """A publishing's outcome without its timings (``read_s``, ``predict_s``, ``write_s``)."""
    return {key: value for key, value in published.items() if not key.endswith("_s")}


def _run(settings, client, store, progress=None):
    client.edit_annotations()
    fake = FakeTraining()
    return train_project(settings, "3", client, store, progress, train_fn=fake.train, evaluate_fn=fake.evaluate,
                         load_predictor=FakePredictor)


@pytest.fixture
def settings(tmp_path):
    return Settings(model_dir=tmp_path / "models", base_model="base")


def test_a_promoted_version_is_published_once_for_every_unannotated_task(settings):
    client = FakeLabelStudio([annotated_task(i + 1, t) for i, t in enumerate(TEXTS)],
                             unlabelled=_unlabelled(range(100, 350)))
    store = ModelStore(settings.model_dir)
    progress = Progress()
    summary = _run(settings, client, store, progress)
    assert _counts(summary["published"]) == {"version": "v1", "published": 250, "already_had_it": 0, "over_the_cap": 0}
    assert all([p["model_version"] for p in task["predictions"]] == ["v1"] for task in client.unlabelled)
    first = client.unlabelled[0]["predictions"][0]
    assert [r["value"]["labels"] for r in first["result"]] == [["Price"], ["Dish"]]
    assert first["score"] == pytest.approx(1 / (1 - math.log(0.8)), abs=1e-6)  # the readable form of 0.8
    assert client.model_version == "v1" and store.publishing("3")["state"] == "published"
    assert "publishing 250/250" in progress.messages and "publishing 100/250" in progress.messages

    summary = _run(settings, client, store)  # v2: published beside v1, which stays
    assert summary["published"]["published"] == 250 and client.model_version == "v2"
    assert all([p["model_version"] for p in task["predictions"]] == ["v1", "v2"] for task in client.unlabelled)


def test_a_task_that_already_has_the_version_is_not_written_again_and_the_cap_takes_the_lowest_ids(settings):
    settings = replace(settings, publish_max_tasks=3)
    client = FakeLabelStudio([annotated_task(i + 1, t) for i, t in enumerate(TEXTS)],
                             unlabelled=_unlabelled([50, 40, 30, 20, 10], {30: [{"model_version": "v1"}]}))
    summary = _run(settings, client, ModelStore(settings.model_dir))
    assert _counts(summary["published"]) == {"version": "v1", "published": 3, "already_had_it": 1, "over_the_cap": 1}
    have = {task["id"]: [p["model_version"] for p in task["predictions"]] for task in client.unlabelled}
    assert have == {10: ["v1"], 20: ["v1"], 30: ["v1"], 40: ["v1"], 50: []}


def test_a_version_that_is_not_promoted_is_not_published_and_publishing_can_be_off(settings):
    client = FakeLabelStudio([annotated_task(i + 1, t) for i, t in enumerate(TEXTS)], unlabelled=_unlabelled([7]))
    store = ModelStore(settings.model_dir)
    off = replace(settings, publish_predictions=False)
    assert _run(off, client, store)["published"] is None and client.unlabelled[0]["predictions"] == []
    assert client.model_version is None


def test_a_failed_publishing_is_reported_and_the_version_still_serves(settings):
    class Broken(FakeLabelStudio):
        def import_predictions(self, project, predictions):
            raise ConnectionError("Label Studio is down")

    client = Broken([annotated_task(i + 1, t) for i, t in enumerate(TEXTS)], unlabelled=_unlabelled([7]))
    store = ModelStore(settings.model_dir)
    summary = _run(settings, client, store)
    assert summary["promoted"] and store.current("3") == "v1"
    assert "Label Studio is down" in summary["publish_error"] and store.publishing("3")["state"] == "failed"
    status = NerService(settings, store=store, jobs=FakeJobs(), load_predictor=CountingLoader()).status("3")
    [warning] = [w for w in status["projects"]["3"]["warnings"] if "publishing" in w]
    assert warning.startswith("publishing v1 stopped at 0/1 (ConnectionError: Label Studio is down)")
    assert "resumes at the next /setup" in warning and "writes only the tasks still missing it" in warning


def _app(settings, store, jobs):
    return create_app(settings, NerService(settings, store=store, jobs=jobs, load_predictor=CountingLoader())).test_client()


def test_a_project_that_connects_with_an_unpublished_version_gets_a_publishing_job(settings):
    store, jobs = ModelStore(settings.model_dir), FakeJobs()
    add_version(store, "3", ["Dish", "Price", "Cuisine"])
    client = _app(settings, store, jobs)
    client.post("/setup", json={"project": "3.1", "schema": CONFIG, "hostname": "http://ls", "access_token": "t"})
    assert jobs.triggers == [("3", {"hostname": "http://ls", "access_token": "t", "action": "publish"})]
    client.post("/setup", json={"project": "3.1", "schema": CONFIG})
    assert len(jobs.triggers) == 1  # asked once per version, however often Label Studio calls /setup
    store.record_publishing("3", {"version": "v1", "state": "published"})
    add_version(store, "3", ["Dish", "Price", "Cuisine"])  # v2 promoted, never published
    client.post("/setup", json={"project": "3.1", "schema": CONFIG})
    assert len(jobs.triggers) == 2


def test_new_tasks_are_published_for_and_without_a_version_nothing_is(settings):
    store, jobs = ModelStore(settings.model_dir), FakeJobs()
    client = _app(settings, store, jobs)
    client.post("/setup", json={"project": "3.1", "schema": CONFIG})
    assert client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 3}}).json["decision"] == \
        "ignored: no version serves yet"
    add_version(store, "3", ["Dish"])
    store.record_publishing("3", {"version": "v1", "state": "published"})
    assert client.post("/webhook", json={"action": "TASKS_CREATED", "project": {"id": 3}}).json["decision"] == \
        "publishing: started"
    assert [payload["action"] for _, payload in jobs.triggers] == ["publish"]


# --- the promises under races, restarts and changes (issue: "The loop keeps its promises") ---------------------
def _versions(client):
    return {task["id"]: [p["model_version"] for p in task.get("predictions") or []] for task in client.unlabelled}


def _setup_answer(settings, store):
    service = NerService(settings, store=store, jobs=FakeJobs(), load_predictor=CountingLoader())
    return service.setup({"project": "3.1", "schema": CONFIG})["model_version"]


def test_a_promoted_version_is_announced_only_after_its_predictions_are_written(settings):
    """While v1 is written, /setup still names what served before (nothing: "untrained"), so Label Studio neither
    asks for nor stores v1 meanwhile; once written, v1 is announced, and Label Studio's model version names it."""
    store = ModelStore(settings.model_dir)
    seen = []

    class Watching(FakeLabelStudio):
        def import_predictions(self, project, predictions):
            seen.append((store.current("3"), store.announced("3"), _setup_answer(settings, store)))
            super().import_predictions(project, predictions)

    client = Watching([annotated_task(i + 1, t) for i, t in enumerate(TEXTS)], unlabelled=_unlabelled(range(1, 700)))
    _run(settings, client, store)
    assert seen == [("v1", None, "untrained"), ("v1", None, "untrained")]  # two import batches of at most 500
    assert store.announced("3") == "v1" and _setup_answer(settings, store) == "v1" and client.model_version == "v1"
    seen.clear()
    _run(settings, client, store)  # v2: while it is written, v1 answers
    assert set(seen) == {("v2", "v1", "v1")} and store.announced("3") == "v2"


def test_tasks_imported_while_publishing_runs_get_the_version_before_it_is_announced(settings):
    store = ModelStore(settings.model_dir)

    class Importing(FakeLabelStudio):
        def import_predictions(self, project, predictions):
            super().import_predictions(project, predictions)
            if not any(task["id"] == 1000 for task in self.unlabelled):  # 100 tasks arrive during the first batch
                self.unlabelled += _unlabelled(range(1000, 1100))

    client = Importing([annotated_task(i + 1, t) for i, t in enumerate(TEXTS)], unlabelled=_unlabelled(range(1, 300)))
    summary = _run(settings, client, store)
    assert summary["published"]["published"] == 399
    assert {i: v for i, v in _versions(client).items() if v != ["v1"]} == {}
    # each later round reads only the tasks after the last one the round before read
    assert [read for read in client.reads if read[0] == "unlabelled"] == [("unlabelled", "v1", 0),
                                                                          ("unlabelled", "v1", 299),
                                                                          ("unlabelled", "v1", 1099)]


class _Interrupted(Exception):
    pass


def test_an_interrupted_publishing_resumes_where_it_stopped_and_writes_no_task_twice(settings):
    """A publishing stopped after its first batch (a killed process, Label Studio gone, a full disk) leaves v1
    promoted and not announced; /status says where it stopped and what resumes it; /setup asks for it (once a
    minute at most), and the resumed job writes only the tasks still missing, then announces."""
    store = ModelStore(settings.model_dir)

    class StopsAfterOneBatch(FakeLabelStudio):
        fail = True

        def import_predictions(self, project, predictions):
            if self.fail and any(_versions(self).values()):
                raise _Interrupted("Label Studio went away")
            super().import_predictions(project, predictions)

    client = StopsAfterOneBatch([annotated_task(i + 1, t) for i, t in enumerate(TEXTS)],
                                unlabelled=_unlabelled(range(1, 1201)))
    summary = _run(settings, client, store)
    assert summary["promoted"] and "Label Studio went away" in summary["publish_error"]
    assert (store.current("3"), store.announced("3")) == ("v1", None)
    assert store.publishing("3")["written"] == 500 and store.publishing("3")["total"] == 1200
    assert client.titles[-1] == "NER · v1 promoted · publishing stopped at 500/1200: resumes at the next connection"

    jobs = FakeJobs()
    service = NerService(settings, store=store, jobs=jobs, load_predictor=CountingLoader())
    [warning] = service.status("3")["projects"]["3"]["warnings"]
    assert warning.startswith("publishing v1 stopped at 500/1200 (_Interrupted: Label Studio went away)")
    assert "resumes at the next /setup" in warning
    service.setup({"project": "3.1", "schema": CONFIG, "hostname": "http://ls", "access_token": "t"})
    service.setup({"project": "3.1", "schema": CONFIG})
    assert [payload.get("action") for _, payload in jobs.triggers] == ["publish"]  # asked once, not per /setup

    from backend.training.training_run import publish_project
    client.fail = False
    result = publish_project(settings, "3", client, store, Progress(), FakePredictor)
    assert _counts(result["published"]) == {"version": "v1", "published": 700, "already_had_it": 500, "over_the_cap": 0}
    assert all(versions == ["v1"] for versions in _versions(client).values())
    assert store.announced("3") == "v1" and client.model_version == "v1"
    assert service.status("3")["projects"]["3"]["warnings"] == []
    service.setup({"project": "3.1", "schema": CONFIG})
    assert len(jobs.triggers) == 1  # nothing due any more


def test_start_training_with_nothing_new_resumes_an_interrupted_publishing(settings):
    store = ModelStore(settings.model_dir)
    client = FakeLabelStudio([annotated_task(i + 1, t) for i, t in enumerate(TEXTS)], unlabelled=_unlabelled([5, 6]))
    client.edit_annotations()
    fake = FakeTraining()
    train_project(settings, "3", client, store, None, train_fn=fake.train, evaluate_fn=fake.evaluate,
                  load_predictor=FakePredictor)
    pointer = settings.model_dir / "3" / "current.json"  # as if its publishing had been killed before it announced
    pointer.write_text(json.dumps({"version": "v1", "announced": None}))
    for task in client.unlabelled:
        task["predictions"] = []
    summary = train_project(settings, "3", client, store, None, train_fn=fake.train, evaluate_fn=fake.evaluate,
                            load_predictor=FakePredictor)
    assert summary["version"] is None and summary["decision"].endswith("; resumed publishing v1")
    assert summary["published"]["published"] == 2 and store.announced("3") == "v1"


def test_a_full_disk_while_publishing_says_free_space_and_that_the_publishing_resumes(settings, monkeypatch):
    import errno

    store = ModelStore(settings.model_dir)
    real = ModelStore.record_publishing

    def full(self, project, record):
        if record.get("written"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, project, record)

    monkeypatch.setattr(ModelStore, "record_publishing", full)
    client = FakeLabelStudio([annotated_task(i + 1, t) for i, t in enumerate(TEXTS)], unlabelled=_unlabelled([5, 6]))
    summary = _run(settings, client, store)
    assert "disk holding MODEL_DIR is full: free space" in summary["publish_error"]
    assert store.announcement_due("3") == "v1"  # the pointer says it: the next /setup or Start Training resumes it
    monkeypatch.setattr(ModelStore, "record_publishing", real)
    warnings = NerService(settings, store=store, jobs=FakeJobs(), load_predictor=CountingLoader()).status("3")
    [warning] = warnings["projects"]["3"]["warnings"]
    assert "publishing v1" in warning and "resumes at the next /setup" in warning


def test_tasks_imported_after_the_announcement_get_it_through_label_studios_own_retrieve(settings):
    store = ModelStore(settings.model_dir)
    client = FakeLabelStudio([annotated_task(i + 1, t) for i, t in enumerate(TEXTS)], unlabelled=_unlabelled([5]))
    _run(settings, client, store)
    client.unlabelled += _unlabelled(range(10, 260))

    from backend.training.training_run import publish_project
    result = publish_project(settings, "3", client, store, Progress(), FakePredictor)
    assert result["published"] == {"version": "v1", "published": 250, "already_had_it": 1, "over_the_cap": 0}
    assert client.retrieved == [list(range(10, 210)), list(range(210, 260))]
    assert _versions(client)[10] == []  # written by Label Studio's own check, never by the publisher


def test_a_label_config_that_no_longer_fits_withdraws_the_version_and_says_to_train(settings):
    """Dish renamed to Food: the project's model version stops naming v1's predictions, the card and /status say
    why and what to do, and publishing stops."""
    store = ModelStore(settings.model_dir)
    client = FakeLabelStudio([annotated_task(i + 1, t) for i, t in enumerate(TEXTS)], unlabelled=_unlabelled([5]))
    _run(settings, client, store)
    renamed = CONFIG.replace('"Dish"', '"Food"')
    jobs = FakeJobs()
    service = NerService(settings, store=store, jobs=jobs, load_predictor=CountingLoader())
    service.setup({"project": "3.1", "schema": CONFIG})
    reformatted = CONFIG.replace("><", ">\n  <")  # Label Studio's webhook body writes the XML its own way
    assert service.handle_webhook({"action": "PROJECT_UPDATED", "project": {"id": 3, "label_config": reformatted}}
                                  ).decision == "ignored: the label config is unchanged"
    outcome = service.handle_webhook({"action": "PROJECT_UPDATED", "project": {"id": 3, "label_config": renamed}})
    assert outcome.decision == "label config followed; v1 does not fit it: withdrawing: publishing: started"
    [warning] = service.status("3")["projects"]["3"]["warnings"]
    assert warning.startswith("v1 does not fit the labels (Dish not in the label config: renamed or removed?)")
    assert warning.endswith("press Start Training to train on the new labels")
    assert service.handle_webhook({"action": "PROJECT_UPDATED", "project": {"id": 3, "label_config": renamed}}
                                  ).decision == "ignored: the label config is unchanged"  # our own PATCHes

    from backend.training.training_run import publish_project
    client.config = renamed
    client.unlabelled += _unlabelled([6])
    result = publish_project(settings, "3", client, store, Progress(), FakePredictor)
    assert result["published"] is None and client.model_version == ""
    assert client.titles[-1].startswith("NER · v1 does not fit the labels (Dish not in the label config")
    assert _versions(client)[6] == []  # publishing stopped
    service.setup({"project": "3.1", "schema": renamed})
    assert len(jobs.triggers) == 1  # withdrawn already: /setup asks for nothing more


def test_new_tasks_during_a_run_are_published_after_it_and_a_kept_press_stays_a_training(settings, tmp_path):
    from backend.training.jobs import JobQueue
    import threading

    release, runs = threading.Event(), []

    def target(project, payload, progress):
        runs.append(payload.get("action", "train"))
        release.wait(30)

    queue = JobQueue(target, tmp_path / "jobs", start_method="fork")
    try:
        assert queue.trigger("3", {}) == "started"
        assert queue.trigger("3", {}) == "scheduled"  # Start Training pressed during the run
        assert queue.trigger("3", {"action": "publish"}) == "already scheduled"  # then tasks imported
        release.set()
        assert queue.wait_idle("3", 60)
    finally:
        queue.shutdown()
    assert queue.status("3").runs_finished == 2


def _ls_task(task_id, *versions, text="cheap pizza"):
    """A task as Label Studio's predict_tasks sends it: with its predictions."""
    predictions = [{"model_version": version, "result": []} for version in versions]
    return {"id": task_id, "data": {"text": text}, "predictions": predictions}


def test_predict_leaves_out_a_task_that_holds_the_version_or_that_another_request_just_got(settings):
    """Label Studio stores nothing for an empty list in a task's place; positions stay those of the tasks."""
    store = ModelStore(settings.model_dir)
    add_version(store, "3", ["Dish", "Price", "Cuisine"])
    client = _app(settings, store, FakeJobs())

    def versions(tasks, **extra):
        body = {"project": "3.1", "label_config": CONFIG, "tasks": tasks, **extra}
        return [r["model_version"] if r else None for r in client.post("/predict", json=body).json["results"]]

    assert versions([_ls_task(1, "v1"), _ls_task(2), _ls_task(3, "v0")]) == [None, "v1", "v1"]
    # Retrieve Predictions and the labeling stream both past Label Studio's check before either stored: once
    assert versions([_ls_task(2), _ls_task(4)]) == [None, "v1"]
    # an interactive request (it carries a context and stores nothing), or tasks not sent for storing, always
    assert versions([_ls_task(2)], params={"context": {"result": []}}) == ["v1"]
    assert versions([{"id": 2, "data": {"text": "pizza"}}]) == ["v1"]


def test_tasks_without_the_field_the_config_reads_are_named_in_status_never_a_silent_empty_answer(settings):
    store = ModelStore(settings.model_dir)
    add_version(store, "3", ["Dish", "Price", "Cuisine"])
    client = _app(settings, store, FakeJobs())
    review = CONFIG.replace('value="$text"', 'value="$review"')
    body = {"project": "3.1", "label_config": review, "tasks": [{"id": 1, "data": {"text": "cheap pizza"}}]}
    assert client.post("/predict", json=body).json["results"][0]["result"] == []
    [warning] = client.get("/status?project=3").json["projects"]["3"]["warnings"]
    assert warning.startswith("tasks Label Studio asked predictions for have no field 'review', which the label "
                              "config reads (value=\"$review\"); they hold 'text'")
    body["tasks"] = [{"id": 1, "data": {"review": "cheap pizza"}}]
    assert len(client.post("/predict", json=body).json["results"][0]["result"]) == 2
    assert client.get("/status?project=3").json["projects"]["3"]["warnings"] == []


def test_before_any_version_serves_each_task_gets_at_most_one_untrained_answer(settings):
    """The soak test's finding: two of Label Studio's requests at once (two annotators opening one task, Retrieve
    Predictions beside the stream) stored "untrained" twice on a task."""
    client = _app(settings, ModelStore(settings.model_dir), FakeJobs())

    def versions(tasks):
        body = {"project": "3.1", "label_config": CONFIG, "tasks": tasks}
        return [r["model_version"] if r else None for r in client.post("/predict", json=body).json["results"]]

    assert versions([_ls_task(1), _ls_task(2, "untrained")]) == ["untrained", None]
    assert versions([_ls_task(1), _ls_task(3)]) == [None, "untrained"]
