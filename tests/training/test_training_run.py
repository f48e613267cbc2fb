"""The training job body (``train_project``): fetch, convert, split, train, evaluate candidate and current on
the same validation tasks, keep every version, promote only if not worse, report back into the project."""
from dataclasses import replace
from pathlib import Path

import pytest

from backend.shared.labelstudio import REPORT_START, LabelStudioError
from backend.serving.service import project_id
from backend.shared.card import credentials_for
from backend.training.training_run import TrainingDataError, train_project
from backend.shared.settings import Settings
from backend.shared.store import ModelStore
from tests.helpers.service_fakes import (CONFIG, FakeLabelStudio, FakeTraining, annotated_task, training_tasks)

@pytest.fixture
def settings(tmp_path):
    return Settings(model_dir=tmp_path / "models", base_model="base")


def _train(settings, client, fake, project="3"):
    """One run after the annotations were edited, so every run has something new to train on."""
    if hasattr(client, "edit_annotations"):
        client.edit_annotations()
    store = ModelStore(settings.model_dir)
    summary = train_project(settings, project, client, store, train_fn=fake.train, evaluate_fn=fake.evaluate)
    return store, summary


def test_the_first_training_is_promoted_and_reported_into_the_project(settings):
    client, fake = FakeLabelStudio(training_tasks()), FakeTraining()
    store, summary = _train(settings, client, fake)
    assert summary["version"] == "v1" and summary["promoted"] and store.current("3") == "v1"
    manifest = store.manifest("3", "v1")
    assert sorted(manifest.task_ids) == list(range(1, 11))
    assert sorted(manifest.annotation_ids) == list(range(1001, 1011))
    assert manifest.train_size + manifest.validation_size == 10 and manifest.validation_size >= 1
    assert manifest.labels == ["Dish", "Price", "Cuisine"] and manifest.f1 == 0.8
    assert client.instruction.startswith("<p>Label dishes.</p>") and REPORT_START in client.instruction
    assert client.descriptions and client.descriptions[-1].startswith("v1 (promoted)")


def test_the_split_is_deterministic_and_both_models_are_scored_on_the_same_held_out_tasks(settings):
    client = FakeLabelStudio(training_tasks())
    first = FakeTraining()
    _train(settings, client, first)
    second = FakeTraining(candidate_f1=0.9, current_f1=0.8)
    store, summary = _train(settings, client, second)
    held_out = first.scored_texts[0]
    assert held_out and second.scored_texts == [held_out, held_out]  # candidate and current model, same tasks
    # training never sees the held-out tasks, not even to pick its best epoch
    assert second.validated_on is None
    assert not set(held_out) & {e.text for e in second.trained_on}
    assert second.evaluated[1][0] == store.version_dir("3", "v1")
    assert summary["previous_version"] == "v1" and summary["previous_f1"] == 0.8


def test_a_worse_candidate_is_kept_but_not_promoted(settings):
    client = FakeLabelStudio(training_tasks())
    _train(settings, client, FakeTraining(candidate_f1=0.8))
    store, summary = _train(settings, client, FakeTraining(candidate_f1=0.5, current_f1=0.8))
    assert summary["version"] == "v2" and not summary["promoted"]
    assert store.current("3") == "v1" and store.version_names("3") == ["v1", "v2"]
    assert "not promoted" in client.instruction and "v2 (not promoted)" in client.descriptions[-1]


def test_a_candidate_replaces_a_current_version_that_no_longer_fits_the_config_whatever_their_scores(settings):
    client = FakeLabelStudio(training_tasks())
    _train(settings, client, FakeTraining(candidate_f1=0.8))
    client.config = CONFIG.replace('value="Cuisine"', 'value="Food"')  # a label renamed in Label Studio
    store, summary = _train(settings, client, FakeTraining(candidate_f1=0.2, current_f1=0.8))
    assert summary["promoted"] and store.current("3") == "v2"
    assert "v1 does not fit the label config" in summary["decision"]


def test_an_equal_candidate_is_promoted(settings):
    client = FakeLabelStudio(training_tasks())
    _train(settings, client, FakeTraining(candidate_f1=0.7))
    store, summary = _train(settings, client, FakeTraining(candidate_f1=0.7, current_f1=0.7))
    assert summary["promoted"] and store.current("3") == "v2"


def test_with_promote_if_not_worse_off_every_candidate_is_promoted(settings):
    settings = replace(settings, promote_if_not_worse=False)
    client = FakeLabelStudio(training_tasks())
    _train(settings, client, FakeTraining(candidate_f1=0.8))
    store, _ = _train(settings, client, FakeTraining(candidate_f1=0.1, current_f1=0.8))
    assert store.current("3") == "v2"


def test_validation_tasks_without_entities_give_no_scores_instead_of_f1_zero(settings):
    # Every model scores 0 on them: a comparison would promote anything and the report would show a false 0.
    client = FakeLabelStudio(training_tasks())
    first = FakeTraining()
    _train(settings, client, first)
    held_out = set(first.scored_texts[0])
    for task in client.tasks:
        if task["data"]["text"] in held_out:
            task["annotations"][0]["result"] = []
    second = FakeTraining(candidate_f1=0.1, current_f1=0.9)
    store, summary = _train(settings, client, second)
    assert second.evaluated == []
    assert summary["f1"] is None and summary["previous_f1"] is None and summary["validation_size"] == len(held_out)
    assert summary["promoted"] and "have no entities" in summary["decision"]
    assert "v2 (promoted)" in client.descriptions[-1] and "F1 \u2013;" in client.descriptions[-1]


def test_reporting_can_be_switched_off(settings):
    settings = replace(settings, report_to_label_studio=False)
    client = FakeLabelStudio(training_tasks())
    _train(settings, client, FakeTraining())
    assert client.instruction == "<p>Label dishes.</p>" and client.descriptions == []


def test_too_few_annotated_tasks_is_an_error_that_says_what_to_do(settings):
    client = FakeLabelStudio(training_tasks()[:1] + [{"id": 99, "data": {"text": "x"}, "annotations": []}])
    with pytest.raises(TrainingDataError, match="Annotate more tasks"):
        _train(settings, client, FakeTraining())
    assert ModelStore(settings.model_dir).version_names("3") == []


def test_a_failed_training_leaves_the_served_version_and_no_temporary_folder(settings):
    client = FakeLabelStudio(training_tasks())
    store, _ = _train(settings, client, FakeTraining())
    with pytest.raises(RuntimeError, match="out of memory"):
        _train(settings, client, FakeTraining(fail=True))
    assert store.current("3") == "v1" and store.version_names("3") == ["v1"]
    assert not list(store.project_dir("3").glob(".tmp-*"))


def test_a_report_that_cannot_be_written_does_not_lose_the_version(settings):
    class Unreachable(FakeLabelStudio):
        def write_instruction_block(self, project, block_html):
            raise LabelStudioError("Label Studio at http://x: updating failed")

    store, summary = _train(settings, Unreachable(training_tasks()), FakeTraining())
    assert store.current("3") == summary["version"] == "v1"


def test_credentials_prefer_the_settings_and_fall_back_to_what_setup_sent(settings):
    payload = {"hostname": "http://ls:8080", "access_token": "from-setup"}
    assert credentials_for(settings, payload).api_key == "from-setup"
    configured = replace(settings, label_studio_url="http://other:8080", label_studio_api_key="from-env")
    assert credentials_for(configured, payload).url == "http://other:8080"
    assert credentials_for(configured, payload).api_key == "from-env"
    assert "from-env" not in repr(credentials_for(configured, payload))
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_API_KEY"):
        credentials_for(settings, {})


def test_a_failed_job_is_reported_into_the_project_like_a_result(settings, monkeypatch):
    import backend.shared.card as card_module
    from backend.training.training_run import run_training_job

    client = FakeLabelStudio(training_tasks()[:1])
    monkeypatch.setattr(card_module, "LabelStudioClient", lambda credentials, **_: client)
    payload = {"hostname": "http://ls:8080", "access_token": "t"}
    with pytest.raises(TrainingDataError):
        run_training_job(settings, "3", payload, lambda *args, **kwargs: None)
    assert client.instruction.startswith("<p>Label dishes.</p>") and "training failed" in client.instruction
    assert client.descriptions[-1].startswith("training failed") and "no model yet" in client.descriptions[-1]


@pytest.mark.parametrize("value, expected", [("12.1718000000", "12"), (12, "12"), ("7", "7"), ({"id": 4}, "4")])
def test_the_project_id_comes_from_label_studios_project_key(value, expected):
    assert project_id(value) == expected


@pytest.mark.parametrize("value", [None, "abc.123", {"title": "x"}, True, "", "²", "１２", "0", -3, "-3", 1.5,
                                   "1" * 19, "9" * 5000, "12.abc", [12], {"id": "x"}, " 12 3", "12\x00"])
def test_a_missing_or_malformed_project_id_is_rejected(value):
    with pytest.raises(ValueError, match="project"):
        project_id(value)


@pytest.mark.slow
def test_a_real_tiny_model_trains_through_the_job_and_then_serves_predictions(tmp_path, tiny_base_model):
    """The whole job with the real training and prediction code on a tiny BERT; then the service serves it."""
    from backend.serving.service import NerService
    from tests.helpers.synthetic import restaurant_examples
    from backend.data.tasks import example_to_task
    from backend.data.schema import load_label_config

    schema = load_label_config(Path(__file__).resolve().parents[2] / "label_config" / "restaurant.xml")
    tasks = []
    for i, example in enumerate(restaurant_examples(120, seed=3)):
        task = example_to_task(example, schema)
        task["id"] = i + 1
        task["annotations"][0]["id"] = 500 + i
        tasks.append(task)
    client = FakeLabelStudio(tasks, config=(Path(__file__).resolve().parents[2] / "label_config" /
                                            "restaurant.xml").read_text())
    settings = Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "BASE_MODEL": str(tiny_base_model),
                                  "TRAIN_EPOCHS": "3", "TRAIN_LR": "3e-3", "TRAIN_BATCH_SIZE": "16",
                                  "TRAIN_THREADS": "2", "TRAIN_FREEZE_EMBEDDINGS": "false"})
    store = ModelStore(settings.model_dir)
    summary = train_project(settings, "8", client, store)
    assert summary["version"] == "v1" and store.current("8") == "v1"
    assert (store.version_dir("8", "v1") / "model.safetensors").is_file()
    assert summary["f1"] is not None and "F1" in client.instruction

    service = NerService(settings, store=store)
    texts = ["cheap pizza near downtown", "", "a five star thai place open late"]
    results = service.predict({"project": "8.1700000000", "label_config": client.config,
                               "tasks": [{"id": i, "data": {"text": t}} for i, t in enumerate(texts)]})
    assert len(results) == 3 and all(r["model_version"] == "v1" for r in results)
    assert results[1]["result"] == []
    for text, result in zip(texts, results):
        for span in result["result"]:
            value = span["value"]
            assert text[value["start"]:value["end"]] == value["text"]
            assert value["labels"][0] in schema.labels
    service.shutdown()


def test_start_training_with_nothing_changed_since_the_serving_version_makes_no_version(settings):
    client = FakeLabelStudio(training_tasks())
    store = ModelStore(settings.model_dir)
    train_project(settings, "3", client, store, train_fn=FakeTraining().train, evaluate_fn=FakeTraining().evaluate)
    again = FakeTraining()
    summary = train_project(settings, "3", client, store, train_fn=again.train, evaluate_fn=again.evaluate)
    assert summary["version"] is None and summary["decision"].startswith("nothing new since v1")
    assert again.trained_on is None and store.version_names("3") == ["v1"]


@pytest.mark.parametrize("change", ["edit", "new task", "recipe", "label config"])
def test_any_change_of_annotations_recipe_or_labels_trains_again(settings, change):
    from dataclasses import replace as replace_settings

    from backend.model.config import RecipeOverrides

    client = FakeLabelStudio(training_tasks())
    store = ModelStore(settings.model_dir)
    train_project(settings, "3", client, store, train_fn=FakeTraining().train, evaluate_fn=FakeTraining().evaluate)
    if change == "edit":
        client.tasks[0]["annotations"][0]["updated_at"] = "2026-02-02T10:00:00Z"
    elif change == "new task":
        client.tasks.append(annotated_task(99, "cheap thai pizza"))
    elif change == "recipe":
        settings = replace_settings(settings, training=RecipeOverrides.of(epochs=7))
    else:
        client.config = CONFIG.replace('<Label value="Cuisine"/>', '<Label value="Cuisine"/><Label value="Hours"/>')
    summary = train_project(settings, "3", client, store, train_fn=FakeTraining().train,
                            evaluate_fn=FakeTraining().evaluate)
    assert summary["version"] == "v2"


def test_a_press_after_a_version_that_was_not_promoted_does_not_train_the_same_data_again(settings):
    client = FakeLabelStudio(training_tasks())
    store = ModelStore(settings.model_dir)
    train_project(settings, "3", client, store, train_fn=FakeTraining().train, evaluate_fn=FakeTraining().evaluate)
    client.edit_annotations()
    worse = FakeTraining(candidate_f1=0.5, current_f1=0.8)
    assert not train_project(settings, "3", client, store, train_fn=worse.train, evaluate_fn=worse.evaluate)["promoted"]
    again = FakeTraining()
    summary = train_project(settings, "3", client, store, train_fn=again.train, evaluate_fn=again.evaluate)
    assert summary["version"] is None and summary["decision"].startswith("nothing new since v2 (not promoted; v1")
    assert again.trained_on is None and store.version_names("3") == ["v1", "v2"]


def test_the_model_card_title_tells_the_state_of_each_run(settings):
    client = FakeLabelStudio(training_tasks())
    _train(settings, client, FakeTraining(candidate_f1=0.8))
    assert client.titles == ["NER · fetching the annotated tasks", "NER · training 0%",
                             "NER · training 100% (step 1/1)", "NER · training 100% · evaluating",
                             "NER · v1 serving · F1 0.800"]
    _train(settings, client, FakeTraining(candidate_f1=0.5, current_f1=0.8))
    assert client.titles[-2] == "NER · training 100% · evaluating against v1"
    # the serving version and its F1 first, the candidate kept out second
    assert client.titles[-1] == "NER · v1 serving · F1 0.800 on v2's validation tasks · v2 kept out: F1 0.500"
    store = ModelStore(settings.model_dir)
    train_project(settings, "3", client, store, train_fn=FakeTraining().train, evaluate_fn=FakeTraining().evaluate)
    assert client.titles[-1] == "NER · v1 serving · nothing new"


def test_the_card_shows_training_progress_at_every_5_percent_of_the_steps(settings):
    from backend.shared.card import Card

    client = FakeLabelStudio(training_tasks())
    card = Card(settings, client, 3)
    for step in range(305):
        card.training(step, 304)
    percents = [int(title.split("training ")[1].split("%")[0]) for title in client.titles]
    assert percents == list(range(0, 101, 5)), client.titles
    assert client.titles[7] == "NER · training 35% (step 107/304)"


def test_a_failed_run_says_so_on_the_model_card(settings, monkeypatch):
    import backend.shared.card as card_module
    from backend.training.training_run import run_training_job

    client = FakeLabelStudio(training_tasks()[:1])
    monkeypatch.setattr(card_module, "LabelStudioClient", lambda credentials, **_: client)
    with pytest.raises(TrainingDataError):
        run_training_job(settings, "3", {"hostname": "http://ls:8080", "access_token": "t"}, lambda *a, **k: None)
    assert client.titles[-1].startswith("NER · training failed: project 3 has 1 usable annotated task")
