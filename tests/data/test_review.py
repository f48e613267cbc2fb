"""The review's pure parts: folds, findings (annotation against the model's reading) and annotator agreement, by
hand-counted cases and by properties."""
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.data.review import (
    EXTRA,
    MISSING,
    OTHER_BOUNDARY,
    OTHER_TYPE,
    agreement,
    annotation_spans,
    findings,
    fold_of,
    word_spans,
)
from backend.data.schema import LabelSchema
from backend.data.spans import Example, split_words

SCHEMA = LabelSchema("label", "text", "text", ("Dish", "Price", "Cuisine"))


def example(text: str, tags: list[str]) -> Example:
    words = split_words(text)
    assert len(words) == len(tags)
    return Example(text, words, tags)


def span(start, end, label, text=""):
    return {"from_name": "label", "to_name": "text", "type": "labels",
            "value": {"start": start, "end": end, "text": text, "labels": [label]}}


def annotation(who, *spans, cancelled=False, updated="2026-01-01T00:00:00Z", annotation_id=None):
    return {"id": annotation_id or hash((who, updated)) % 10_000, "completed_by": who, "result": list(spans),
            "was_cancelled": cancelled, "updated_at": updated}


def test_folds_are_fixed_by_the_task_id_and_cover_every_fold():
    folds = [fold_of(task, 5) for task in range(1, 501)]
    assert folds == [fold_of(task, 5) for task in range(1, 501)]
    assert set(folds) == {0, 1, 2, 3, 4}
    assert all(300 / 5 * 0.6 < folds.count(f) * 300 / 500 < 300 / 5 * 1.4 for f in range(5))  # about even


def test_word_spans_read_bio_as_the_training_does():
    assert word_spans(["O", "B-Dish", "I-Dish", "B-Dish", "O", "I-Price"]) == [(1, 3, "Dish"), (3, 4, "Dish"),
                                                                             (5, 6, "Price")]
    assert word_spans([]) == []


def test_each_kind_of_finding_by_hand():
    text = "cheap thai pad thai near me"
    given = example(text, ["B-Price", "B-Dish", "B-Dish", "I-Dish", "O", "O"])
    read = ["O", "B-Cuisine", "B-Dish", "I-Dish", "I-Dish", "O"]
    found = {f.kind: f for f in findings(given, read)}
    assert set(found) == {EXTRA, OTHER_TYPE, OTHER_BOUNDARY}
    assert (found[EXTRA].text, found[EXTRA].label, found[EXTRA].model_label) == ("cheap", "Price", None)
    assert (found[OTHER_TYPE].text, found[OTHER_TYPE].label, found[OTHER_TYPE].model_label) == ("thai", "Dish",
                                                                                               "Cuisine")
    assert (found[OTHER_BOUNDARY].text, found[OTHER_BOUNDARY].model_text) == ("pad thai", "pad thai near")
    missing = findings(example("cheap thai", ["O", "O"]), ["B-Price", "O"])
    assert [(f.kind, f.text, f.model_label, f.model_start, f.model_end) for f in missing] == [
        (MISSING, "cheap", "Price", 0, 5)]


def test_findings_are_sorted_by_the_doubt_of_their_words():
    given = example("cheap thai food", ["B-Price", "B-Cuisine", "O"])
    found = findings(given, ["O", "O", "O"], word_doubt=[0.5, 3.0, 0.0])
    assert [(f.text, f.doubt) for f in found] == [("thai", 3.0), ("cheap", 0.5)]


TAGS = st.lists(st.sampled_from(["O", "B-Dish", "I-Dish", "B-Price", "I-Price"]), min_size=1, max_size=12)


@given(TAGS)
def test_a_labelling_the_model_shares_has_no_finding(tags):
    given_example = example(" ".join(f"w{i}" for i in range(len(tags))), tags)
    assert findings(given_example, tags) == []


@given(TAGS, TAGS)
def test_every_differing_span_is_found(a, b):
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    found = findings(example(" ".join(f"w{i}" for i in range(n)), a), b)
    given_spans, read_spans = set(word_spans(a)), set(word_spans(b))
    assert bool(found) == (given_spans != read_spans)


def test_agreement_by_hand_count():
    text = "cheap thai pad thai"
    tasks = [
        {"id": 1, "data": {"text": text}, "annotations": [
            annotation(7, span(0, 5, "Price"), span(6, 10, "Cuisine"), span(11, 19, "Dish")),
            annotation(8, span(0, 5, "Price"), span(6, 10, "Dish"), span(11, 19, "Dish")),
        ]},
        {"id": 2, "data": {"text": text}, "annotations": [
            annotation(7, span(11, 19, "Dish")),
            annotation(8, span(11, 19, "Dish")),
            annotation(9, span(15, 19, "Dish")),
            annotation(9, cancelled=True),  # a skip never counts
        ]},
        {"id": 3, "data": {"text": text}, "annotations": [annotation(7, span(0, 5, "Price"))]},  # one annotator
    ]
    found = agreement(tasks, SCHEMA, {7: "ann", 8: "bob"})
    # task 1: ann/bob 2 matched of 3+3; task 2: ann/bob 1 of 1+1, ann/user 9 0 of 1+1, bob/user 9 0 of 1+1
    assert found.tasks == 2
    assert (found.overall.matched, found.overall.first + found.overall.second) == (3, 12)
    assert found.overall.f1 == 0.5
    per_pair = {pair: tally.f1 for pair, tally in found.per_pair.items()}
    assert per_pair == {("ann", "bob"): round(2 * 3 / 8, 4), ("ann", "user 9"): 0.0, ("bob", "user 9"): 0.0}
    assert found.per_type["Price"].f1 == 1.0 and found.per_type["Cuisine"].f1 == 0.0
    # Dish: task 1 1 of 1+2; task 2: 1 of 2, 0 of 2, 0 of 2
    assert found.per_type["Dish"].f1 == round(2 * 2 / 9, 4)
    assert [d["task"] for d in found.disagreements] == [2, 1]  # mean pair F1 1/3 then 2/3


def test_an_annotator_counts_once_per_task_with_their_latest_annotation():
    text = "cheap thai"
    task = {"id": 1, "data": {"text": text}, "annotations": [
        annotation(7, span(0, 5, "Dish"), updated="2026-01-01T00:00:00Z", annotation_id=1),
        annotation(7, span(0, 5, "Price"), updated="2026-01-02T00:00:00Z", annotation_id=2),
        annotation(8, span(0, 5, "Price"), annotation_id=3)]}
    found = agreement([task], SCHEMA)
    assert found.overall.f1 == 1.0 and found.disagreements == []


def test_spans_compare_without_surrounding_whitespace():
    assert annotation_spans("cheap thai", {"result": [span(0, 6, "Price", "cheap ")]}, SCHEMA) == {(0, 5, "Price")}


SPANS = st.lists(st.sampled_from([(0, 5, "Price"), (6, 10, "Cuisine"), (6, 10, "Dish"), (11, 15, "Dish"),
                                  (0, 10, "Dish")]), max_size=3, unique=True)


@settings(max_examples=60)
@given(st.lists(st.tuples(SPANS, SPANS), min_size=1, max_size=5))
def test_agreement_is_symmetric_and_one_only_for_identical_annotations(pairs):
    text = "cheap thai food"
    spans = lambda chosen: [span(s, e, label) for s, e, label in chosen if e <= len(text)]
    tasks = [{"id": i, "data": {"text": text}, "annotations": [annotation(1, *spans(a)), annotation(2, *spans(b))]}
             for i, (a, b) in enumerate(pairs)]
    swapped = [{"id": i, "data": {"text": text}, "annotations": [annotation(2, *spans(a)), annotation(1, *spans(b))]}
               for i, (a, b) in enumerate(pairs)]
    one, other = agreement(tasks, SCHEMA), agreement(swapped, SCHEMA)
    assert one.overall.f1 == other.overall.f1
    marked = [(annotation_spans(text, {"result": spans(a)}, SCHEMA), annotation_spans(text, {"result": spans(b)},
                                                                                     SCHEMA)) for a, b in pairs]
    if any(a or b for a, b in marked):
        assert (one.overall.f1 == 1.0) == all(a == b for a, b in marked)
        assert 0.0 <= one.overall.f1 <= 1.0
    assert len(one.disagreements) == sum(1 for a, b in marked if a != b)
