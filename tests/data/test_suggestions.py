"""What annotators kept of the suggestions: each suggested span is kept, relabelled, resized or deleted, each
annotated span left over was added; counted per entity and model version for the tasks whose annotation came
after a prediction, and shown in the Instructions block and on the report page."""
from hypothesis import given, strategies as st

from backend.data.schema import parse_label_config
from backend.data.spans import Span
from backend.data.suggestions import compare_spans, shown_prediction, suggestion_outcomes
from backend.shared.report import instruction_block, report_page
from backend.shared.settings import Settings
from backend.shared.store import ModelStore
from backend.training.training_run import train_project
from tests.helpers.service_fakes import CONFIG, FakeLabelStudio, annotated_task
from tests.helpers.service_fakes import ScoringTraining

SCHEMA = parse_label_config(CONFIG)
spans = st.lists(st.builds(lambda start, length, label: Span(start, start + length, label),
                           st.integers(0, 40), st.integers(1, 8), st.sampled_from(["Dish", "Price", "Cuisine"])),
                 max_size=8)


@given(spans, spans)
def test_every_suggested_span_gets_one_outcome_and_every_annotated_span_is_accounted_for_once(suggested, annotated):
    outcomes = [outcome for _, outcome in compare_spans(suggested, annotated)]
    assert len([o for o in outcomes if o != "added"]) == len(suggested)
    assert sum(o in ("kept", "relabelled", "resized", "added") for o in outcomes) == len(annotated)


@given(spans)
def test_suggestions_submitted_unchanged_are_all_kept(same):
    assert {outcome for _, outcome in compare_spans(same, same)} <= {"kept"}


def _result(start, end, label, text="x"):
    return {"from_name": "label", "to_name": "text", "type": "labels",
            "value": {"start": start, "end": end, "text": text, "labels": [label]}}


def _task(task_id, predictions, annotation_result, annotated_at="2026-12-01T10:00:00Z"):
    return {"id": task_id, "data": {"text": "cheap pizza near me"}, "predictions": predictions,
            "annotations": [{"id": task_id + 100, "result": annotation_result, "created_at": annotated_at,
                             "was_cancelled": False}]}


def test_only_a_prediction_made_before_the_annotation_counts_and_the_newest_such_one():
    early = {"model_version": "v1", "created_at": "2026-12-01T09:00:00Z", "result": [_result(6, 11, "Dish")]}
    later = {"model_version": "v2", "created_at": "2026-12-01T09:30:00Z", "result": [_result(0, 5, "Price")]}
    after = {"model_version": "v3", "created_at": "2026-12-01T11:00:00Z", "result": []}
    tasks = [_task(1, [early, later, after], [_result(0, 5, "Price"), _result(6, 11, "Dish")]),
             _task(2, [after], [_result(6, 11, "Dish")]),  # suggested only after it was annotated
             _task(3, [], [_result(6, 11, "Dish")])]  # never suggested
    assert shown_prediction(tasks[0], tasks[0]["annotations"][0]) is later
    outcomes = suggestion_outcomes(tasks, SCHEMA)
    assert dict(outcomes.tasks) == {"v2": 1}
    assert outcomes.to_dict()["versions"] == {"v2": {
        "Dish": {"kept": 0, "relabelled": 0, "resized": 0, "deleted": 0, "added": 1},
        "Price": {"kept": 1, "relabelled": 0, "resized": 0, "deleted": 0, "added": 0}}}
    assert outcomes.kept_share("v2") == 1.0


def test_a_training_run_records_what_was_kept_and_shows_it(tmp_path):
    tasks = [annotated_task(i + 1, f"cheap pizza number {i}") for i in range(20)]
    for task in tasks[:10]:  # shown v1's suggestion before being annotated: "pizza" as a Price (relabelled)
        pizza = task["data"]["text"].index("pizza")
        task["predictions"] = [{"model_version": "v1", "created_at": "2026-01-01T00:00:00Z",
                                "result": [_result(pizza, pizza + 5, "Price", "pizza")]}]
        task["annotations"][0]["created_at"] = "2026-01-02T00:00:00Z"
    client = FakeLabelStudio(tasks)
    settings = Settings(model_dir=tmp_path / "models", base_model="base")
    store = ModelStore(settings.model_dir)
    training = ScoringTraining()
    train_project(settings, "3", client, store, train_fn=training.train, evaluate_fn=training.evaluate)
    manifest = store.manifest("3", "v1")
    assert manifest.suggestions["tasks"] == {"v1": 10}
    v1 = manifest.suggestions["versions"]["v1"]
    assert v1["Price"]["relabelled"] == 10 and v1["Price"]["kept"] == 0
    line = "What annotators kept of the suggestions: v1 on 10 annotated tasks: of 10 suggested spans 0% kept"
    assert line in instruction_block(manifest) and line in client.instruction
    page = report_page("3", [manifest], "v1", {}, {"v1"})
    assert "<h2>What annotators kept of the suggestions</h2>" in page and "relabelled: 10" in page
