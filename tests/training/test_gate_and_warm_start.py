"""A gate that knows noise, and warm starts.

The gate: candidate and serving version are scored on the same validation tasks; a paired bootstrap over those
tasks gives the F1 difference a 90% interval, and the serving version is kept only when the whole interval lies
below 0 (PROMOTION_GATE=strict: whenever the F1 is lower). The decision, the card title, the Instructions block
and the report page show the interval.

Warm starts: a retrain continues from the serving version when it predicts exactly the project's BIO labels, for
WARM_START_EPOCHS epochs at WARM_START_LR; from the base model when there is no version, the labels changed, or WARM_START is off.
The manifest says which.
"""
from dataclasses import replace

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from backend.model.metrics import f1_difference, score_tags
from backend.shared.report import report_page
from backend.shared.settings import Settings
from backend.shared.store import ModelStore
from backend.training.training_run import train_project
from tests.helpers.service_fakes import CONFIG, FakeLabelStudio, ScoringTraining, annotated_task

TEXTS = [f"cheap pizza number {i}" for i in range(60)]  # "pizza" is a Dish in every annotated task


# --- the bootstrap itself -----------------------------------------------------------------------------------------
def _tags(found: list[bool]) -> tuple[list[list[str]], list[list[str]]]:
    """Gold (one Dish per task) and a prediction that finds it where ``found``."""
    gold = [["B-Dish"] for _ in found]
    return gold, [["B-Dish"] if hit else ["O"] for hit in found]


@hypothesis_settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=60), st.lists(st.booleans(), min_size=1, max_size=60))
def test_the_interval_holds_the_observed_difference_and_is_ordered(ours, theirs):
    n = min(len(ours), len(theirs))
    gold, candidate = _tags(ours[:n])
    _, previous = _tags(theirs[:n])
    difference = f1_difference(score_tags(gold, candidate), score_tags(gold, previous), rounds=400)
    assert difference.tasks == n and difference.low <= difference.high
    assert difference.low - 1e-9 <= difference.delta <= difference.high + 1e-9 or n < 5


def test_a_model_better_on_every_task_is_better_beyond_noise_and_the_reverse_is_worse():
    gold, good = _tags([True] * 40)
    _, bad = _tags([False] * 40)
    better = f1_difference(score_tags(gold, good), score_tags(gold, bad))
    worse = f1_difference(score_tags(gold, bad), score_tags(gold, good))
    assert better.low > 0 and not better.worse_beyond_noise
    assert worse.high < 0 and worse.worse_beyond_noise


def test_one_task_of_difference_among_sixty_is_noise():
    # the two models miss different tasks: the candidate 10 of them, the previous model 9 others
    gold, candidate = _tags([False] * 10 + [True] * 50)
    _, previous = _tags([True] * 10 + [False] * 9 + [True] * 41)
    difference = f1_difference(score_tags(gold, candidate), score_tags(gold, previous))
    assert difference.delta < 0 and difference.low < 0 < difference.high and not difference.worse_beyond_noise


def test_no_interval_without_the_same_tasks():
    gold, candidate = _tags([True, False])
    assert f1_difference(score_tags(gold, candidate), score_tags(gold[:1], candidate[:1])) is None


# --- the gate in a training run -----------------------------------------------------------------------------------
@pytest.fixture
def settings(tmp_path):
    return Settings(model_dir=tmp_path / "models", base_model="base", validation_fraction=0.5)


def _run(settings, client, training):
    client.edit_annotations()
    store = ModelStore(settings.model_dir)
    return store, train_project(settings, "3", client, store, train_fn=training.train, evaluate_fn=training.evaluate)


def _serving_v1(settings):
    client = FakeLabelStudio([annotated_task(i + 1, text) for i, text in enumerate(TEXTS)])
    store, _ = _run(settings, client, ScoringTraining())
    for version in store.version_names("3"):  # from now on v1 is "the previous model"
        (store.version_dir("3", version) / "candidate").unlink()
    return client


def test_a_candidate_a_little_worse_within_noise_is_promoted_and_the_interval_is_shown(settings):
    client = _serving_v1(settings)
    store, summary = _run(settings, client, ScoringTraining(candidate_misses=3, previous_misses=2))
    assert summary["promoted"] and store.current("3") == "v2"
    assert "within noise" in summary["decision"] and "90%" in summary["decision"]
    difference = store.manifest("3", "v2").f1_difference
    assert difference.delta < 0 < difference.high and difference.tasks == summary["validation_size"]
    assert client.titles[-1].startswith("NER · v2 serving · F1 ") and "ΔF1 -" in client.titles[-1]
    assert "90% interval" in client.instruction and "paired bootstrap" in client.instruction
    page = report_page("3", [store.manifest("3", v) for v in store.version_names("3")], "v2", {}, {"v1", "v2"})
    assert "90% interval" in page and f"{difference.delta:+.3f}" in page


def test_a_candidate_worse_beyond_noise_is_kept_out_and_the_card_says_why(settings):
    client = _serving_v1(settings)
    store, summary = _run(settings, client, ScoringTraining(candidate_misses=25))
    assert not summary["promoted"] and store.current("3") == "v1"
    assert "worse beyond noise" in summary["decision"]
    title = client.titles[-1]
    assert title.startswith("NER · v1 serving · F1 ") and " · v2 kept out: F1 " in title
    assert "ΔF1 -" in title and "90%" in title


def test_the_strict_gate_keeps_the_serving_version_for_any_lower_f1(settings):
    client = _serving_v1(settings)
    strict = replace(settings, promotion_gate="strict")
    store, summary = _run(strict, client, ScoringTraining(candidate_misses=3, previous_misses=2))
    assert not summary["promoted"] and store.current("3") == "v1"
    assert summary["decision"].startswith("kept v1: F1 ") and "noise" not in summary["decision"]


# --- warm starts --------------------------------------------------------------------------------------------------
def test_a_retrain_continues_from_the_serving_version_when_the_labels_are_the_same(settings):
    client = _serving_v1(settings)
    training = ScoringTraining()
    store, summary = _run(settings, client, training)
    [recipe] = training.recipes
    assert recipe.base_model == str(store.version_dir("3", "v1")) and recipe.epochs is None
    assert (recipe.default_epochs, recipe.min_steps) == (settings.warm_start_epochs, settings.warm_start_min_steps)
    assert recipe.lr == settings.warm_start_lr < Settings().training_config().lr  # continuing: a gentler rate
    assert store.manifest("3", "v2").started_from == "v1 (warm start)" == summary["started_from"]
    assert store.manifest("3", "v2").base_model == "base"  # the project's base model stays on record


def test_the_first_run_and_runs_with_warm_start_off_start_from_the_base_model(settings):
    client = FakeLabelStudio([annotated_task(i + 1, text) for i, text in enumerate(TEXTS)])
    first = ScoringTraining()
    store, _ = _run(settings, client, first)
    assert first.recipes[0].base_model == "base" and store.manifest("3", "v1").started_from == "base model base"
    cold = ScoringTraining()
    store, _ = _run(replace(settings, warm_start=False), client, cold)
    assert cold.recipes[0].base_model == "base" and cold.recipes[0].epochs is None


def test_a_label_config_with_other_labels_starts_from_the_base_model(settings):
    client = _serving_v1(settings)
    client.config = CONFIG.replace('<Label value="Cuisine"/>', '<Label value="Cuisine"/><Label value="Hours"/>')
    assert client.config != CONFIG
    training = ScoringTraining()
    store, _ = _run(settings, client, training)
    assert training.recipes[0].base_model == "base"
    assert store.manifest("3", "v2").started_from == "base model base (v1's labels are not the project's)"


def test_a_line_of_warm_starts_goes_back_to_the_base_model_once_its_training_set_has_grown_enough(settings):
    settings = replace(settings, warm_start_rebase_growth=1.5)
    client = _serving_v1(settings)  # v1: from the base model on about half the 60 tasks (the rest validate)
    store = ModelStore(settings.model_dir)
    first = store.manifest("3", "v1").train_size
    assert store.manifest("3", "v1").line_base_size == first > 0

    client.tasks += [annotated_task(len(client.tasks) + 1 + i, f"cheap pizza extra {i}") for i in range(6)]
    training = ScoringTraining()
    store, summary = _run(settings, client, training)
    assert first < store.manifest("3", "v2").train_size < 1.5 * first
    assert summary["started_from"] == "v1 (warm start)" and store.manifest("3", "v2").line_base_size == first

    client.tasks += [annotated_task(len(client.tasks) + 1 + i, f"cheap pizza more {i}") for i in range(60)]
    store, summary = _run(settings, client, training)
    grown = store.manifest("3", "v3").train_size
    assert grown >= 1.5 * first and training.recipes[-1].base_model == "base"
    assert summary["started_from"] == (f"base model base (the training set has grown from {first} to {grown} "
                                       "examples since v2's line last started from it)")
    assert store.manifest("3", "v3").line_base_size == grown  # a new line

    never = replace(settings, warm_start_rebase_growth=0)
    client.tasks += [annotated_task(len(client.tasks) + 1 + i, f"cheap pizza again {i}") for i in range(300)]
    store, summary = _run(never, client, training)
    assert store.manifest("3", "v4").train_size >= 2 * grown and summary["started_from"] == "v3 (warm start)"


def test_a_warm_start_is_one_epoch_at_a_gentler_rate_and_more_epochs_on_small_data(tmp_path):
    from backend.model.train import planned_epochs
    from backend.training.training_run import warm_recipe

    settings = Settings()
    config = replace(settings.training_config(), epochs=5)  # an explicit TRAIN_EPOCHS is for training from scratch
    warm = warm_recipe(settings, config, tmp_path / "v1")
    assert warm.base_model == str(tmp_path / "v1") and warm.lr == 1e-4
    assert planned_epochs(warm, steps_per_epoch=66) == 1  # 1,050 sentences in batches of 16
    assert planned_epochs(warm, steps_per_epoch=6) == 9  # 100 sentences: at least 50 optimizer steps
