"""Publishing: after a promotion every unannotated task gets the new version's prediction once (older versions'
predictions stay), at most PUBLISH_MAX_TASKS of them, lowest task id first; the version becomes the project's model
version; progress shows as "publishing k/n"; a failure is reported and leaves the version serving; a project that
connects with a version never published, or new tasks, start a publishing job of its own."""
from dataclasses import replace

import pytest

from backend.serving.app import create_app
from backend.serving.service import NerService
from backend.serving.settings import Settings
from backend.serving.store import ModelStore
from backend.serving.training_run import train_project
from tests.service_fakes import CONFIG, CountingLoader, FakeJobs, FakeLabelStudio, FakePredictor, add_version, annotated_task
from tests.test_service import TEXTS, FakeTraining


def _unlabelled(ids, predictions=None):
    return [{"id": i, "data": {"text": "cheap pizza tonight"}, "predictions": list((predictions or {}).get(i, []))}
            for i in ids]


class Progress:
    def __init__(self):
        self.messages = []

    def __call__(self, stage=None, **kwargs):
        if kwargs.get("message"):
            self.messages.append(kwargs["message"])


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
    assert summary["published"] == {"version": "v1", "published": 250, "already_had_it": 0, "over_the_cap": 0}
    assert all([p["model_version"] for p in task["predictions"]] == ["v1"] for task in client.unlabelled)
    first = client.unlabelled[0]["predictions"][0]
    assert [r["value"]["labels"] for r in first["result"]] == [["Price"], ["Dish"]] and first["score"] == 0.8
    assert client.model_version == "v1" and store.publishing("3")["state"] == "published"
    assert progress.messages[-1] == "publishing 250/250" and "publishing 100/250" in progress.messages

    summary = _run(settings, client, store)  # v2: published beside v1, which stays
    assert summary["published"]["published"] == 250 and client.model_version == "v2"
    assert all([p["model_version"] for p in task["predictions"]] == ["v1", "v2"] for task in client.unlabelled)


def test_a_task_that_already_has_the_version_is_not_written_again_and_the_cap_takes_the_lowest_ids(settings):
    settings = replace(settings, publish_max_tasks=3)
    client = FakeLabelStudio([annotated_task(i + 1, t) for i, t in enumerate(TEXTS)],
                             unlabelled=_unlabelled([50, 40, 30, 20, 10], {30: [{"model_version": "v1"}]}))
    summary = _run(settings, client, ModelStore(settings.model_dir))
    assert summary["published"] == {"version": "v1", "published": 3, "already_had_it": 1, "over_the_cap": 1}
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
    [warning] = [w for w in status["projects"]["3"]["warnings"] if "predictions" in w]
    assert "v1" in warning and "published again at the next promotion" in warning


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
