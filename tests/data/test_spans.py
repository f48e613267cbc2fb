"""Specification of backend/data/spans.py: character spans <-> word-level IOB2 tags, and what happens to bad spans."""
from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.data.spans import (
    ConversionReport,
    Span,
    bio_to_spans,
    clean_spans,
    repair_bio,
    spans_to_bio,
    split_words,
    tokens_to_text,
)

LABELS = ("Dish", "Price", "Hours")

# Letters, digits, accents (precomposed and combining), CJK, emoji (incl. ZWJ and skin tone), punctuation that
# joins words, and whitespace of every kind the issue names.
ALPHABET = st.sampled_from(
    list("abcxyzABC019") + list("éüñçÅ") + ["e\u0301"] + list("寿司拉麺東京") + ["😀", "🍕", "👍🏽", "👩\u200d🍳"]
    + list("'’-./&$,!?()") + [" ", "  ", "\t", "\n", "\u00a0"]
)
TEXT = st.lists(ALPHABET, max_size=12).map("".join)


@st.composite
def text_with_spans(draw) -> tuple[str, list[Span]]:
    """A text assembled from segments; labelled segments become whitespace-trimmed, non-overlapping spans."""
    text, spans = "", []
    for _ in range(draw(st.integers(0, 8))):
        segment = draw(TEXT)
        label = draw(st.sampled_from((None,) + LABELS))
        core = segment.strip()
        if label is not None and core:
            start = len(text) + segment.index(core)
            spans.append(Span(start, start + len(core), label, core))
        text += segment
    return text, spans


def _tags_of(text: str, spans: list[Span]) -> list[tuple[str, str]]:
    example = spans_to_bio(text, spans, LABELS)
    return list(zip(example.tokens, example.tags))


@settings(max_examples=300, deadline=None)
@given(text_with_spans())
def test_spans_to_bio_to_spans_is_the_identity_for_non_overlapping_trimmed_spans(case):
    text, spans = case
    report = ConversionReport()
    example = spans_to_bio(text, spans, LABELS, report)
    assert bio_to_spans(example.text, example.words, example.tags) == spans
    assert not report, report.summary()


@settings(max_examples=200, deadline=None)
@given(text_with_spans())
def test_words_keep_exact_offsets_and_lose_no_non_space_character(case):
    text, spans = case
    example = spans_to_bio(text, spans, LABELS)
    for word in example.words:
        assert text[word.start:word.end] == word.text
    covered = {i for w in example.words for i in range(w.start, w.end)}
    assert {i for i, ch in enumerate(text) if not ch.isspace()} == covered


@settings(max_examples=200, deadline=None)
@given(text_with_spans())
def test_every_span_starts_with_b_and_continues_with_i_of_its_label(case):
    text, spans = case
    example = spans_to_bio(text, spans, LABELS)
    for span in spans:
        inside = [tag for word, tag in zip(example.words, example.tags) if span.start <= word.start < span.end]
        assert inside[0] == f"B-{span.label}"
        assert all(tag == f"I-{span.label}" for tag in inside[1:])
    assert repair_bio(example.tags) == example.tags


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["O", "B-Dish", "I-Dish", "B-Price", "I-Price"]), max_size=15))
def test_repaired_tags_are_valid_iob2_and_give_the_same_spans(tags):
    text, words = tokens_to_text([f"w{i}" for i in range(len(tags))])
    repaired = repair_bio(tags)
    for previous, tag in zip(["O"] + repaired, repaired):
        if tag.startswith("I-"):
            assert previous[2:] == tag[2:]
    assert bio_to_spans(text, words, repaired) == bio_to_spans(text, words, tags)


def test_span_ending_inside_a_price_range_splits_the_word():
    text = "meals $10-$15 here"
    spans = [Span(7, 9, "Price", "10"), Span(11, 13, "Price", "15")]
    assert _tags_of(text, spans) == [
        ("meals", "O"), ("$", "O"), ("10", "B-Price"), ("-", "O"), ("$", "O"), ("15", "B-Price"), ("here", "O"),
    ]
    example = spans_to_bio(text, spans, LABELS)
    assert bio_to_spans(text, example.words, example.tags) == spans


def test_span_covering_a_whole_price_range_keeps_its_inner_punctuation():
    text = "meals $10-$15 here"
    span = Span(6, 13, "Price", "$10-$15")
    example = spans_to_bio(text, [span], LABELS)
    assert example.tags[1] == "B-Price" and set(example.tags[2:-1]) == {"I-Price"}
    assert bio_to_spans(text, example.words, example.tags) == [span]


def test_span_ending_before_an_apostrophe_keeps_the_possessive_outside():
    text = "joe's pizza"
    assert _tags_of(text, [Span(0, 3, "Dish", "joe")]) == [("joe", "B-Dish"), ("'s", "O"), ("pizza", "O")]


def test_unsplit_possessive_is_one_word():
    assert [w.text for w in split_words("joe's pizza")] == ["joe's", "pizza"]


def test_hours_span_inside_24_7_is_exact():
    text = "open 24/7"
    example = spans_to_bio(text, [Span(5, 7, "Hours", "24")], LABELS)
    assert list(zip(example.tokens, example.tags)) == [("open", "O"), ("24", "B-Hours"), ("/7", "O")]
    assert bio_to_spans(text, example.words, example.tags) == [Span(5, 7, "Hours", "24")]


def test_adjacent_entities_of_the_same_label_stay_separate():
    text = "pizza pasta"
    spans = [Span(0, 5, "Dish", "pizza"), Span(6, 11, "Dish", "pasta")]
    example = spans_to_bio(text, spans, LABELS)
    assert example.tags == ["B-Dish", "B-Dish"]
    assert bio_to_spans(text, example.words, example.tags) == spans


def test_offsets_are_code_points_with_emoji_before_the_span():
    text = "🍕👍🏽 cheap sushi"
    start = text.index("sushi")
    example = spans_to_bio(text, [Span(start, start + 5, "Dish", "sushi")], LABELS)
    [span] = bio_to_spans(text, example.words, example.tags)
    assert text[span.start:span.end] == "sushi" == span.text


def test_overlapping_span_is_left_out_and_counted():
    report = ConversionReport()
    kept = clean_spans("cheap thai food", [Span(6, 15, "Dish"), Span(6, 10, "Price"), Span(11, 15, "Dish")], LABELS, report)
    assert kept == [Span(6, 15, "Dish")]
    assert report.counts["overlapping"] == 2


def test_unknown_label_is_left_out_and_counted():
    report = ConversionReport()
    example = spans_to_bio("cheap thai", [Span(6, 10, "Cuisine", "thai")], LABELS, report, where="task 7")
    assert example.tags == ["O", "O"]
    assert report.counts == {"unknown_label": 1}
    assert "task 7" in report.summary()


def test_offsets_outside_the_text_are_left_out_and_counted():
    report = ConversionReport()
    spans = [Span(5, 50, "Dish"), Span(-1, 2, "Dish"), Span(3, 3, "Dish"), Span(0, 2.0, "Dish")]
    assert clean_spans("cheap thai", spans, LABELS, report) == []
    assert report.counts["out_of_range"] == 4


def test_mismatched_span_text_is_realigned_to_the_nearest_occurrence():
    # the emoji-era offset bug: offsets counted in UTF-16 units are one too far after an emoji
    text = "😀 thai food, thai tea"
    report = ConversionReport()
    first, second = clean_spans(text, [Span(3, 7, "Dish", "thai"), Span(14, 18, "Dish", "thai")], LABELS, report)
    assert (first.start, first.end) == (2, 6)
    assert (second.start, second.end) == (13, 17)
    assert text[second.start:second.end] == "thai"
    assert report.counts == {"realigned": 2}


def test_a_span_shifted_past_the_end_by_emoji_is_realigned_not_dropped():
    # UTF-16 offsets after three emoji: the last span ends 3 past the end of the text
    text = "😀😀 Emmanuel Macron 😀 visited Lyon"
    report = ConversionReport()
    spans = clean_spans(text, [Span(5, 20, "PER", "Emmanuel Macron"), Span(32, 36, "LOC", "Lyon")], None, report)
    assert [text[s.start:s.end] for s in spans] == ["Emmanuel Macron", "Lyon"]
    assert report.counts == {"realigned": 2}


def test_shifted_span_text_moves_to_the_exact_occurrence():
    report = ConversionReport()
    text = "x thai food"
    [span] = clean_spans(text, [Span(1, 5, "Dish", "thai")], LABELS, report)
    assert (span.start, span.end) == (2, 6)
    assert report.counts == {"realigned": 1}


def test_span_text_absent_from_the_text_keeps_offsets_and_is_counted():
    report = ConversionReport()
    [span] = clean_spans("cheap thai", [Span(6, 10, "Dish", "sushi")], LABELS, report)
    assert (span.start, span.end) == (6, 10)
    assert report.counts == {"text_mismatch": 1}


def test_whitespace_only_span_is_left_out_and_counted():
    report = ConversionReport()
    assert clean_spans("a   b", [Span(1, 4, "Dish")], LABELS, report) == []
    assert report.counts == {"empty_span": 1}


def test_report_summary_names_counts_and_places_and_stays_short():
    report = ConversionReport(max_notes=2)
    for i in range(5):
        report.add("bad_line", f"f.bio:{i}", "no TAB")
    summary = report.summary()
    assert summary.splitlines()[0] == "5 bad line"
    assert "f.bio:0" in summary and "f.bio:4" not in summary and "3 more" in summary
    assert ConversionReport().summary() == "no problems found"


def test_merged_reports_add_their_counts():
    first, second = ConversionReport(), ConversionReport()
    first.add("overlapping", "t1", "x")
    second.add("overlapping", "t2", "y")
    second.add("unknown_label", "t2", "z")
    first.merge(second)
    assert first.counts == {"overlapping": 2, "unknown_label": 1}


def test_span_scores_are_the_mean_of_their_word_scores():
    text, words = tokens_to_text(["thai", "green", "curry"])
    [span] = bio_to_spans(text, words, ["B-Dish", "I-Dish", "I-Dish"], scores=[0.9, 0.6, 0.3])
    assert span.text == "thai green curry" and abs(span.score - 0.6) < 1e-9


def test_stray_i_tag_starts_a_span():
    text, words = tokens_to_text(["cheap", "thai"])
    assert bio_to_spans(text, words, ["O", "I-Dish"]) == [Span(6, 10, "Dish", "thai")]


def test_repair_counts_each_ill_formed_tag():
    report = ConversionReport()
    assert repair_bio(["I-Dish", "I-Price", "O"], report) == ["B-Dish", "B-Price", "O"]
    assert report.counts == {"ill_formed_tag": 2}


@pytest.mark.parametrize("text, words", [
    ("नमस्ते दिल्ली.", ["नमस्ते", "दिल्ली", "."]),          # Devanagari vowel signs and viramas
    ("ร้านอาหารไทย", ["ร้", "า", "น", "อ", "า", "ห", "า", "ร", "ไ", "ท", "ย"]),  # Thai: a letter and its tone mark
    ("مَطْعَم كبير", ["مَطْعَم", "كبير"]),                      # Arabic harakat
    ("cafe\u0301 cre\u0300me, ok", ["cafe\u0301", "cre\u0300me", ",", "ok"]),  # decomposed (NFD) accents
])
def test_combining_marks_stay_in_their_word(text, words):
    assert [w.text for w in split_words(text)] == words


@given(st.text(alphabet="ab e\u0301\u0302न्ते.,$-'", max_size=30))
def test_a_combining_mark_never_starts_a_word_right_after_another_character(text):
    words = split_words(text)
    assert all(text[w.start:w.end] == w.text for w in words)
    assert "".join(w.text for w in words) == "".join(text.split())  # every non-space character, once, in order
    for word in words:
        if word.start > 0 and not text[word.start - 1].isspace():
            assert not unicodedata.category(word.text[0]).startswith("M")


@pytest.mark.parametrize("text, words", [
    ("我想吃北京烤鸭", ["我", "想", "吃", "北", "京", "烤", "鸭"]),
    ("東京の寿司屋、3時から", ["東", "京", "の", "寿", "司", "屋", "、", "3", "時", "か", "ら"]),
    ("iPhone在北京 ok", ["iPhone", "在", "北", "京", "ok"]),
    ("한국 음식", ["한국", "음식"]),  # Korean is written with spaces: its words stay whole
])
def test_each_character_of_a_script_written_without_spaces_is_a_word(text, words):
    assert [w.text for w in split_words(text)] == words


def test_an_entity_inside_a_chinese_sentence_is_labelled_and_comes_back_exactly():
    # With the whole sentence as one word, the span could neither be predicted nor exported on its own.
    text = "我想吃北京烤鸭"
    example = spans_to_bio(text, [Span(3, 7, "Dish", "北京烤鸭")])
    assert example.tags == ["O", "O", "O", "B-Dish", "I-Dish", "I-Dish", "I-Dish"]
    assert [(s.start, s.end, s.label) for s in bio_to_spans(text, split_words(text), example.tags)] == [(3, 7, "Dish")]


@given(st.lists(st.sampled_from(["北", "京", "の", "ok", "3", "ร", "ก่", ",", "，", "。", "１", "Ａ"]), max_size=12))
def test_character_tokens_of_unspaced_scripts_survive_the_trip_through_text(tokens):
    text, words = tokens_to_text(tokens)
    assert [text[w.start:w.end] for w in words] == tokens
    assert [w.text for w in split_words(text)] == tokens


@pytest.mark.parametrize("tokens, text", [
    (list("我在北京，他在上海。"), "我在北京，他在上海。"),                  # MSRA style: one character per line
    (list("（新华社北京１２月３１日电）"), "（新华社北京１２月３１日电）"),  # full-width brackets and digits
    (["ร้", "า", "น", "อ", "า", "ห", "า", "ร"], "ร้านอาหาร"),           # Thai
    (["北京", "is", "big"], "北京 is big"),
])
def test_tokens_of_scripts_written_without_spaces_join_without_spaces(tokens, text):
    assert tokens_to_text(tokens)[0] == text


@pytest.mark.parametrize("text, words", [
    ("👨\u200d👩\u200d👧 pizza", ["👨\u200d👩\u200d👧", "pizza"]),  # a family: three emoji joined by U+200D
    ("pizza 🇮🇹🇫🇷!", ["pizza", "🇮🇹", "🇫🇷", "!"]),            # flags: regional indicators in pairs
    ("👍🏽 ok", ["👍🏽", "ok"]),                                  # a skin tone
])
def test_an_emoji_sequence_is_one_word(text, words):
    # Cut apart, a span could cover half of what the annotator sees as one symbol.
    assert [w.text for w in split_words(text)] == words
