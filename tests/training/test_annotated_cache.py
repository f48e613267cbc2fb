"""The training run's fetch reads only what changed since the last run: new, changed and deleted annotated tasks;
a missing or corrupt kept file, another label config or another Label Studio is a full read; "nothing new" is
answered from the same change set."""
from datetime import datetime, timedelta, timezone

import pytest

from backend.training.annotated_cache import cache_path, fetch_annotated
from backend.shared.settings import Settings
from backend.shared.store import ModelStore
from backend.training.training_run import train_project
from tests.helpers.service_fakes import CONFIG, FakeLabelStudio, annotated_task
from tests.helpers.service_fakes import FakeTraining

TEXTS = ["cheap pizza tonight", "thai food near me", "sushi please", "a cheap thai place", "pizza and sushi"]


def _task(task_id: int, text: str, minute: int) -> dict:
    task = annotated_task(task_id, text)
    task["updated_at"] = (datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(minutes=minute)).isoformat()
    return task


def _project(n: int = 20) -> FakeLabelStudio:
    """Tasks updated an hour apart, so that only the last one falls in the 10 s of slack of a later read."""
    return FakeLabelStudio([_task(i, TEXTS[i % len(TEXTS)], 60 * i) for i in range(1, n + 1)])


def _ids(fetched) -> list[int]:
    return [task["id"] for task in fetched.tasks]


def test_the_first_fetch_is_full_and_a_second_one_with_nothing_new_reads_no_task_in_full(tmp_path):
    client, path = _project(), tmp_path / "annotated-tasks.json"
    first = fetch_annotated(client, 1, CONFIG, path)
    assert (first.mode, first.reason, _ids(first)) == ("full", "no tasks kept from a previous run",
                                                       list(range(1, 21)))
    client.reads.clear()
    second = fetch_annotated(client, 1, CONFIG, path)
    assert second.mode == "incremental" and _ids(second) == list(range(1, 21))
    # only the update times of the tasks of the 10 s before the newest kept one; none read in full
    assert client.reads == [("stamps", "2026-01-01T19:59:50+00:00"), ("count",)]
    assert (second.changed, second.listed, second.details) == (0, False, {"window": 1})
    assert second.tasks == first.tasks


def test_new_changed_and_deleted_annotated_tasks_are_read_and_dropped_without_reading_the_rest(tmp_path):
    client, path = _project(), tmp_path / "annotated-tasks.json"
    fetch_annotated(client, 1, CONFIG, path)
    client.tasks.append(_task(21, "sushi tonight", 60 * 21))  # new
    changed = next(task for task in client.tasks if task["id"] == 5)
    changed["annotations"][0]["result"] = []
    changed["updated_at"] = "2026-01-01T22:00:00+00:00"  # Label Studio sets it when the annotation is saved
    client.tasks = [task for task in client.tasks if task["id"] != 7]  # deleted
    dropped = next(task for task in client.tasks if task["id"] == 9)
    dropped["annotations"] = []  # its only annotation deleted: no longer an annotated task
    client.reads.clear()
    fetched = fetch_annotated(client, 1, CONFIG, path)
    assert fetched.mode == "incremental" and fetched.listed and fetched.removed == 2
    assert _ids(fetched) == [i for i in range(1, 22) if i not in (7, 9)]
    assert next(task for task in fetched.tasks if task["id"] == 5)["annotations"][0]["result"] == []
    assert client.reads == [("stamps", "2026-01-01T19:59:50+00:00"), ("by_id", [5, 21]), ("count",), ("stamps",)]
    assert fetched.changed == 2  # nothing else was read in full
    again = fetch_annotated(client, 1, CONFIG, path)
    assert _ids(again) == _ids(fetched) and not again.listed


@pytest.mark.parametrize("spoil, reason", [
    (lambda path: path.unlink(), "no tasks kept from a previous run"),
    (lambda path: path.write_text('{"format": 1, "tasks": [{"id": '), "the kept tasks could not be read"),
    (lambda path: path.write_text('{"format": 1, "tasks": "x"}'), "not in a format this version reads"),
])
def test_a_missing_or_corrupt_kept_file_is_a_full_read(tmp_path, spoil, reason):
    client, path = _project(), tmp_path / "annotated-tasks.json"
    fetch_annotated(client, 1, CONFIG, path)
    spoil(path)
    fetched = fetch_annotated(client, 1, CONFIG, path)
    assert fetched.mode == "full" and reason in fetched.reason and _ids(fetched) == list(range(1, 21))
    assert fetch_annotated(client, 1, CONFIG, path).mode == "incremental"  # and it is kept again


def test_another_label_config_or_another_label_studio_is_a_full_read(tmp_path):
    client, path = _project(), tmp_path / "annotated-tasks.json"
    fetch_annotated(client, 1, CONFIG, path, source="http://ls:8080")
    assert fetch_annotated(client, 1, CONFIG.replace("Price", "Cost"), path, source="http://ls:8080").reason == \
        "the label config changed"
    assert fetch_annotated(client, 1, CONFIG.replace("Price", "Cost"), path, source="http://other:8080").reason \
        == "the kept tasks came from another Label Studio"


def test_a_run_answers_nothing_new_from_the_kept_tasks_and_trains_on_a_change(tmp_path):
    client, fake = _project(), FakeTraining()
    settings = Settings(model_dir=tmp_path / "models", base_model="base", publish_predictions=False)
    store = ModelStore(settings.model_dir)
    first = train_project(settings, "1", client, store, train_fn=fake.train, evaluate_fn=fake.evaluate)
    assert first["version"] == "v1" and first["fetch"]["mode"] == "full"
    assert cache_path(store.project_dir("1")).is_file()
    client.reads.clear()
    again = train_project(settings, "1", client, store, train_fn=fake.train, evaluate_fn=fake.evaluate)
    assert again["decision"].startswith("nothing new since v1") and again["fetch"]["mode"] == "incremental"
    assert again["fetch"]["changed"] == 0 and ("stamps",) not in client.reads
    client.tasks.append(_task(30, "cheap sushi", 60 * 30))
    third = train_project(settings, "1", client, store, train_fn=fake.train, evaluate_fn=fake.evaluate)
    assert third["version"] == "v2" and third["fetch"]["mode"] == "incremental"
