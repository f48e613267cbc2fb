"""Specification of backend/data/formats.py: reading BIO, CoNLL 2003 and Label Studio JSON files into examples."""
from __future__ import annotations

import json

import pytest

from backend.data.formats import (
    FormatError,
    detect_format,
    load_examples,
    read_bio,
    read_conll2003,
    read_label_studio_json,
    restrict_labels,
)
from backend.data.schema import LabelSchema
from backend.data.spans import ConversionReport, example_entity_types

BIO = "O\tcheap\nB-Cuisine\tthai\nI-Cuisine\tfood\n\nB-Hours\topen\nI-Hours\tlate\n"
EXPECTED = [(["cheap", "thai", "food"], ["O", "B-Cuisine", "I-Cuisine"]), (["open", "late"], ["B-Hours", "I-Hours"])]


def _write(tmp_path, name: str, content: str | bytes):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _pairs(examples):
    return [(e.tokens, e.tags) for e in examples]


@pytest.mark.parametrize("variant", [
    BIO,
    "\n" + BIO,                       # restaurantvalid.bio starts with a blank line
    BIO + "\n",                       # restauranttrain.bio ends with a blank line
    BIO.rstrip("\n"),                 # the held-out file has no final newline
    BIO.replace("\n", "\r\n"),        # Windows line endings
    BIO.replace("\n\n", "\n\n\n\n"),  # several blank lines between sentences
])
def test_bio_reader_tolerates_the_corpus_quirks(tmp_path, variant):
    report = ConversionReport()
    assert _pairs(read_bio(_write(tmp_path, "a.bio", variant), report)) == EXPECTED
    assert not report


def test_bio_text_is_rebuilt_with_single_spaces_and_exact_offsets(tmp_path):
    [first, _] = read_bio(_write(tmp_path, "a.bio", BIO))
    assert first.text == "cheap thai food"
    assert all(first.text[w.start:w.end] == w.text for w in first.words)
    assert first.source.endswith("a.bio:1")


def test_bio_line_without_tab_is_skipped_and_counted_with_file_and_line(tmp_path):
    report = ConversionReport()
    path = _write(tmp_path, "a.bio", "O\tcheap\nB-Cuisine thai\nO\tfood\n")
    [example] = read_bio(path, report)
    assert example.tokens == ["cheap", "food"]
    assert report.counts == {"bad_line": 1}
    assert "a.bio:2" in report.summary()


def test_i_tag_after_o_is_read_as_b_and_counted_with_its_line(tmp_path):
    report = ConversionReport()
    [example] = read_bio(_write(tmp_path, "a.bio", "O\tcheap\nI-Cuisine\tthai\n"), report)
    assert example.tags == ["O", "B-Cuisine"]
    assert report.counts == {"ill_formed_tag": 1}
    assert "a.bio:2" in report.summary()


def test_unknown_tag_is_read_as_o_and_counted(tmp_path):
    report = ConversionReport()
    [example] = read_bio(_write(tmp_path, "a.bio", "X\tcheap\nB-Dish\tpizza\n"), report)
    assert example.tags == ["O", "B-Dish"]
    assert report.counts == {"unknown_tag": 1}


@pytest.mark.parametrize("content, message", [
    ("", "no sentence"),
    ("\n\n", "no sentence"),
    ("cheap thai food\n", "no sentence"),
    (b"O\tcaf\xe9\n", "not UTF-8"),
])
def test_unusable_bio_file_is_a_clear_error_naming_the_file(tmp_path, content, message):
    path = _write(tmp_path, "bad.bio", content)
    with pytest.raises(FormatError, match=message) as error:
        read_bio(path)
    assert "bad.bio" in str(error.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        read_bio(tmp_path / "missing.bio")


def test_conll_reader_reads_label_studios_layout(tmp_path):
    content = "-DOCSTART- -X- O\n\ncheap -X- _ O\nthai -X- _ B-Cuisine\nfood -X- _ I-Cuisine\n\nopen -X- _ B-Hours\nlate -X- _ I-Hours\n\n"
    assert _pairs(read_conll2003(_write(tmp_path, "a.conll", content))) == EXPECTED


def test_conll_reader_reads_the_classic_four_columns_and_skips_docstart(tmp_path):
    content = ("-DOCSTART- -X- -X- O\n\ncheap JJ B-NP O\nthai JJ I-NP B-Cuisine\nfood NN I-NP I-Cuisine\n"
               "-DOCSTART- -X- -X- O\nopen VB B-VP B-Hours\nlate RB B-ADVP I-Hours")
    assert _pairs(read_conll2003(_write(tmp_path, "a.conll", content))) == EXPECTED


def test_conll_iob1_tags_become_iob2(tmp_path):
    report = ConversionReport()
    [example] = read_conll2003(_write(tmp_path, "a.conll", "joe NNP B-NP I-PER\nsmith NNP I-NP I-PER\nann NNP B-NP B-PER\n"), report)
    assert example.tags == ["B-PER", "I-PER", "B-PER"]
    assert report.counts == {"ill_formed_tag": 1}


def test_conll_single_column_line_is_skipped_and_counted(tmp_path):
    report = ConversionReport()
    [example] = read_conll2003(_write(tmp_path, "a.conll", "cheap -X- _ O\nthai\nfood -X- _ O\n"), report)
    assert example.tokens == ["cheap", "food"]
    assert "a.conll:2" in report.summary()


def _task(id_, text, *spans):
    return {"id": id_, "data": {"text": text}, "annotations": [{"id": id_, "result": [
        {"from_name": "label", "to_name": "text", "type": "labels",
         "value": {"start": s, "end": e, "text": text[s:e], "labels": [label]}} for s, e, label in spans]}]}


def test_label_studio_json_reader_converts_annotated_tasks_and_counts_the_rest(tmp_path):
    tasks = [_task(1, "cheap thai food", (6, 15, "Cuisine")), {"id": 2, "data": {"text": "no annotation"}},
             {"id": 3, "data": {"review": "wrong key"}, "annotations": [{"result": []}]}]
    report = ConversionReport()
    examples = read_label_studio_json(_write(tmp_path, "export.json", json.dumps(tasks)), None, report)
    assert _pairs(examples) == [EXPECTED[0]]
    assert examples[0].source == "task 1"
    assert report.counts == {"no_annotation": 1, "missing_text": 1}
    assert "task 3" in report.summary()


def test_label_studio_json_reader_uses_the_given_schema(tmp_path):
    path = _write(tmp_path, "export.json", json.dumps([_task(1, "cheap thai", (0, 5, "Price"), (6, 10, "Cuisine"))]))
    report = ConversionReport()
    [example] = read_label_studio_json(path, LabelSchema("label", "text", "text", ("Cuisine",)), report)
    assert example.tags == ["O", "B-Cuisine"]
    assert report.counts == {"unknown_label": 1}


def test_malformed_json_names_the_file_and_the_position(tmp_path):
    path = _write(tmp_path, "export.json", '[{"data": {"text": "x"}},\n {"data": }]')
    with pytest.raises(FormatError, match=r"export.json: not valid JSON: .* line 2 column"):
        read_label_studio_json(path)


def test_json_without_any_usable_task_is_an_error(tmp_path):
    with pytest.raises(FormatError, match="no usable annotated task"):
        read_label_studio_json(_write(tmp_path, "export.json", json.dumps([{"id": 1, "data": {"text": "x"}}])))


def test_json_whose_tasks_all_lack_the_text_says_which_keys_they_have(tmp_path):
    task = {"id": 4, "data": {"review": "cheap thai"}, "annotations": [{"id": 1, "result": []}]}
    with pytest.raises(FormatError, match=r"no usable annotated task among 1 .*task 4: no text under data.text "
                                          r"\(has: review\)"):
        read_label_studio_json(_write(tmp_path, "export.json", json.dumps([task])),
                               LabelSchema("label", "text", "text", ("Dish",)))


@pytest.mark.parametrize("content, expected", [
    ('[{"data": {}}]', "ls-json"),
    ('  \n{"data": {}}', "ls-json"),
    (BIO, "bio"),
    ("\n" + BIO, "bio"),
    ("-DOCSTART- -X- O\n\ncheap -X- _ O\n", "conll2003"),
    ("cheap JJ B-NP O\nthai JJ I-NP B-Cuisine\n", "conll2003"),
    ("cheap\tO\nthai\tB-Cuisine\n", "conll2003"),
])
def test_detect_format_sniffs_the_content(tmp_path, content, expected):
    assert detect_format(_write(tmp_path, "input.txt", content)) == expected


@pytest.mark.parametrize("content", ["", "hello world\nfoo bar\n"])
def test_detect_format_refuses_what_it_cannot_tell(tmp_path, content):
    with pytest.raises(FormatError):
        detect_format(_write(tmp_path, "input.txt", content))


def test_load_examples_detects_or_obeys_the_format(tmp_path):
    path = _write(tmp_path, "a.txt", BIO)
    assert _pairs(load_examples(path)) == EXPECTED
    with pytest.raises(FormatError):
        load_examples(path, "ls-json")


def test_entity_labels_are_in_first_seen_order(tmp_path):
    assert example_entity_types(read_bio(_write(tmp_path, "a.bio", BIO))) == ["Cuisine", "Hours"]


def test_restrict_labels_turns_unknown_labels_into_o_and_counts_them(tmp_path):
    report = ConversionReport()
    examples = restrict_labels(read_bio(_write(tmp_path, "a.bio", BIO)), ["Hours"], report)
    assert [e.tags for e in examples] == [["O", "O", "O"], ["B-Hours", "I-Hours"]]
    assert report.counts == {"unknown_label": 2}


def test_conll_comment_lines_are_skipped_but_a_hash_token_with_a_tag_is_a_word(tmp_path):
    report = ConversionReport()
    content = "# sent_id = 1\n# text = cheap # food\ncheap -X- _ B-Price\n# -X- _ O\nfood -X- _ O\n"
    [example] = read_conll2003(_write(tmp_path, "a.conll", content), report)
    assert example.tokens == ["cheap", "#", "food"] and example.tags == ["B-Price", "O", "O"]
    assert report.counts == {"comment_line": 2}
