"""Specification of backend/data/tasks.py: which annotation of a Label Studio task counts, and results <-> spans."""
from __future__ import annotations

import pytest

from backend.data.schema import LabelConfigError, LabelSchema
from backend.data.spans import ConversionReport, Span, spans_to_bio, tokens_to_text, Example
from backend.data.tasks import (
    choose_annotation,
    example_to_task,
    infer_schema,
    results_to_spans,
    spans_to_results,
    task_to_example,
)

SCHEMA = LabelSchema("label", "text", "text", ("Cuisine", "Price", "Dish"))


def result(start: int, end: int, text: str, *labels: str, from_name: str = "label", type_: str = "labels", **extra) -> dict:
    return {"from_name": from_name, "to_name": "text", "type": type_,
            "value": {"start": start, "end": end, "text": text, "labels": list(labels)}, **extra}


def annotation(id_: int, *results: dict, **fields) -> dict:
    return {"id": id_, "result": list(results), **fields}


def test_cancelled_annotations_never_count():
    task = {"annotations": [annotation(1, was_cancelled=True, updated_at="2030-01-01T00:00:00Z"),
                            annotation(2, updated_at="2020-01-01T00:00:00Z")]}
    assert choose_annotation(task)["id"] == 2


def test_ground_truth_wins_over_a_more_recent_annotation():
    task = {"annotations": [annotation(1, ground_truth=True, updated_at="2020-01-01T00:00:00Z"),
                            annotation(2, updated_at="2030-01-01T00:00:00Z")]}
    assert choose_annotation(task)["id"] == 1


def test_most_recently_updated_annotation_wins():
    task = {"annotations": [annotation(7, updated_at="2024-05-02T10:00:00.5Z", created_at="2024-01-01T00:00:00Z"),
                            annotation(3, updated_at="2024-05-02T10:00:01Z", created_at="2023-01-01T00:00:00Z")]}
    assert choose_annotation(task)["id"] == 3


def test_created_at_then_id_break_ties():
    same = "2024-05-02T10:00:00Z"
    task = {"annotations": [annotation(1, updated_at=same, created_at="2024-01-02T00:00:00Z"),
                            annotation(2, updated_at=same, created_at="2024-01-01T00:00:00Z")]}
    assert choose_annotation(task)["id"] == 1
    task = {"annotations": [annotation(5, updated_at=same), annotation(9, updated_at=same), annotation(4, updated_at=same)]}
    assert choose_annotation(task)["id"] == 9


def test_task_without_annotations_has_none():
    assert choose_annotation({"data": {"text": "x"}}) is None
    assert choose_annotation({"annotations": [annotation(1, was_cancelled=True)]}) is None


def test_results_of_other_controls_and_types_are_left_out_and_spans_of_other_controls_counted():
    # A renamed <Labels>/<Text> leaves old annotations under the old names: their tasks must not silently become
    # tasks without entities. Choices and other non-span results are simply not spans.
    report = ConversionReport()
    results = [result(6, 10, "thai", "Cuisine"), result(0, 5, "cheap", "Price", from_name="other"),
               {**result(11, 15, "food", "Dish"), "to_name": "review"},
               {**result(0, 5, "cheap", "Price"), "type": "hypertextlabels"},
               {"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": ["good"]}}]
    assert results_to_spans(results, SCHEMA, report, "task 7") == [Span(6, 10, "Cuisine", "thai")]
    assert report.counts == {"other_control": 3}
    assert "task 7" in report.summary() and "'other' on 'text'" in report.summary()
    assert "'label' on 'review'" in report.summary()


def test_offsets_written_as_whole_floats_are_read_as_integers():
    report = ConversionReport()
    spans = results_to_spans([result(6.0, 10.0, "thai", "Cuisine"), result(0.5, 5, "cheap", "Price")], SCHEMA, report)
    assert spans == [Span(6, 10, "Cuisine", "thai")] and isinstance(spans[0].start, int)
    assert report.counts == {"malformed_result": 1}


def test_result_with_several_labels_keeps_the_first_and_is_counted():
    report = ConversionReport()
    spans = results_to_spans([result(6, 10, "thai", "Cuisine", "Dish")], SCHEMA, report, "task 4")
    assert spans == [Span(6, 10, "Cuisine", "thai")]
    assert report.counts == {"several_labels": 1}
    assert "task 4" in report.summary()


def test_a_label_written_as_a_string_is_one_label_not_its_letters():
    report = ConversionReport()
    hand_made = {**result(6, 10, "thai"), "value": {"start": 6, "end": 10, "text": "thai", "labels": "Cuisine"}}
    assert results_to_spans([hand_made], SCHEMA, report) == [Span(6, 10, "Cuisine", "thai")]
    assert not report


def test_result_without_offsets_or_label_is_counted_and_left_out():
    report = ConversionReport()
    broken = [{"from_name": "label", "to_name": "text", "type": "labels", "value": {"labels": ["Dish"]}},
              result(0, 4, "thai")]
    assert results_to_spans(broken, SCHEMA, report) == []
    assert report.counts == {"malformed_result": 2}


def test_predicted_result_score_is_kept():
    [span] = results_to_spans([result(6, 10, "thai", "Cuisine", score=0.75)], SCHEMA)
    assert span.score == 0.75


def test_spans_to_results_has_label_studio_shape_with_score_only_when_known():
    results = spans_to_results([Span(6, 10, "Cuisine", "thai"), Span(0, 5, "Price", "cheap", 0.5)], SCHEMA)
    assert results[0] == {"from_name": "label", "to_name": "text", "type": "labels",
                          "value": {"start": 6, "end": 10, "text": "thai", "labels": ["Cuisine"]}}
    assert results[1]["score"] == 0.5
    assert results_to_spans(results, SCHEMA) == [Span(6, 10, "Cuisine", "thai"), Span(0, 5, "Price", "cheap", 0.5)]


def test_task_to_example_uses_the_counting_annotation():
    task = {"id": 12, "data": {"text": "cheap thai food"}, "annotations": [
        annotation(1, result(0, 5, "cheap", "Price"), updated_at="2020-01-01T00:00:00Z"),
        annotation(2, result(6, 10, "thai", "Cuisine"), updated_at="2021-01-01T00:00:00Z"),
    ]}
    example = task_to_example(task, SCHEMA, ConversionReport())
    assert example.tags == ["O", "B-Cuisine", "O"]
    assert example.source == "task 12"


def test_submitted_annotation_without_spans_is_an_all_o_example():
    report = ConversionReport()
    example = task_to_example({"id": 1, "data": {"text": "nice place"}, "annotations": [annotation(1)]}, SCHEMA, report)
    assert example.tags == ["O", "O"]
    assert not report


def test_task_missing_the_text_key_is_counted_with_its_id():
    report = ConversionReport()
    assert task_to_example({"id": 33, "data": {"review": "x"}, "annotations": [annotation(1)]}, SCHEMA, report) is None
    assert report.counts == {"missing_text": 1}
    assert "task 33" in report.summary() and "data.text (has: review)" in report.summary()


def test_a_text_that_is_not_a_string_is_counted_saying_what_it_is():
    report = ConversionReport()
    for task_id, value in ((1, None), (2, ["cheap", "thai"])):
        assert task_to_example({"id": task_id, "data": {"text": value}, "annotations": [annotation(1)]}, SCHEMA,
                               report) is None
    assert "task 1: no text under data.text (it is null, not a string)" in report.summary()
    assert "task 2: no text under data.text (it is list, not a string)" in report.summary()


def test_a_json_min_task_is_counted_with_a_hint_to_export_json():
    # JSON-MIN puts the data fields at the top level, with the spans of each control under its name.
    report = ConversionReport()
    flat = {"id": 5, "text": "cheap thai", "label": [{"start": 0, "end": 5, "text": "cheap", "labels": ["Price"]}]}
    assert task_to_example(flat, SCHEMA, report) is None
    assert "export the project as JSON, not JSON-MIN" in report.summary()


def test_task_without_counting_annotation_or_text_is_counted():
    report = ConversionReport()
    assert task_to_example({"id": 1, "data": {"text": "x"}}, SCHEMA, report) is None
    assert task_to_example({"id": 2, "data": {"text": "  "}, "annotations": [annotation(1)]}, SCHEMA, report) is None
    assert task_to_example("not a task", SCHEMA, report) is None
    assert report.counts == {"no_annotation": 1, "empty_text": 1, "malformed_task": 1}


def test_spans_with_labels_outside_the_config_are_counted_not_kept():
    report = ConversionReport()
    task = {"id": 5, "data": {"text": "open late"}, "annotations": [annotation(1, result(5, 9, "late", "Hours"))]}
    assert task_to_example(task, SCHEMA, report).tags == ["O", "O"]
    assert report.counts == {"unknown_label": 1}


def test_example_to_task_and_back_keeps_exact_offsets():
    text, words = tokens_to_text(["cheap", "thai", "green", "curry"])
    example = Example(text, words, ["B-Price", "B-Cuisine", "B-Dish", "I-Dish"])
    task = example_to_task(example, SCHEMA)
    for item in task["annotations"][0]["result"]:
        value = item["value"]
        assert text[value["start"]:value["end"]] == value["text"]
    again = task_to_example(task, SCHEMA, ConversionReport())
    assert (again.tokens, again.tags) == (example.tokens, example.tags)


def test_example_as_prediction_carries_a_model_version():
    example = spans_to_bio("cheap thai", [Span(6, 10, "Cuisine", "thai")])
    task = example_to_task(example, SCHEMA, as_="predictions")
    assert task["predictions"][0]["model_version"] == "imported"
    assert "annotations" not in task
    assert example_to_task(example, SCHEMA, "predictions", "v3")["predictions"][0]["model_version"] == "v3"


def test_inferred_schema_takes_names_and_labels_from_the_results():
    tasks = [
        {"data": {"review": "cheap thai"}, "annotations": [annotation(1,
            {"from_name": "ner", "to_name": "review", "type": "labels",
             "value": {"start": 6, "end": 10, "text": "thai", "labels": ["Cuisine", "Dish"]}},
            {"from_name": "ner", "to_name": "review", "type": "labels",
             "value": {"start": 0, "end": 5, "text": "cheap", "labels": ["Price"]}})]},
    ]
    assert infer_schema(tasks) == LabelSchema("ner", "review", "review", ("Cuisine", "Price"))


def test_inferred_schema_without_any_span_defaults_to_text():
    assert infer_schema([{"data": {"text": "x"}, "annotations": [annotation(1)]}]) == LabelSchema("label", "text", "text", ())


def test_inferred_data_key_is_the_field_the_spans_fit_even_when_another_is_named_like_the_text_tag():
    # <Text name="text" value="$full">: results say to_name "text", yet the annotated text is data.full.
    def task(summary, full, start, end):
        return {"data": {"text": summary, "full": full}, "annotations": [annotation(1, result(start, end, full[start:end], "Dish"))]}

    tasks = [task("thai place near the airport", "cheap pizza near the airport", 6, 11),
             task("a summary", "sushi", 0, 5)]
    assert infer_schema(tasks).data_key == "full"
    # where the spans fit both fields equally, the field named like the Text tag wins
    assert infer_schema([task("sushi", "sushi", 0, 5)]).data_key == "text"


def test_an_export_whose_spans_are_all_hypertext_spans_is_refused_saying_so():
    tasks = [{"data": {"html": "<p>Barack Obama visited <b>Paris</b></p>"}, "annotations": [annotation(1, {
        "from_name": "ner", "to_name": "html", "type": "hypertextlabels",
        "value": {"start": "/p[1]/text()[1]", "end": "/p[1]/text()[1]", "startOffset": 0, "endOffset": 12,
                  "text": "Barack Obama", "hypertextlabels": ["PER"]}})]}]
    with pytest.raises(LabelConfigError, match="1 hypertextlabels results .*only <Labels> on a <Text>"):
        infer_schema(tasks)
