"""Character spans <-> word-level BIO tags: the one conversion that pre-annotation, training and export share.

Offsets everywhere are Python ``str`` indices (Unicode code points), end exclusive, as Label Studio sends them.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

OUTSIDE = "O"

# Scripts written without spaces between words: Han (Chinese characters, Japanese kanji) and kana, where a
# run of letters is a whole phrase or sentence, and Thai, Lao, Myanmar and Khmer. Each of their characters is a
# word of its own (with its combining marks), as in character-level corpora such as MSRA's: an entity inside a
# run can then be labelled, trained and predicted. BERT-style tokenizers split Han characters apart anyway.
# Full-width digits and Latin letters (１２月) count as such characters too.
_UNSPACED = ("\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3005-\u3007\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf"
             "\u4e00-\u9fff\uf900-\ufaff\uff10-\uff19\uff21-\uff3a\uff41-\uff5a\uff66-\uff9f"
             "\U00020000-\U0003134f")
# A word is a run of word characters, optionally joined by in-word punctuation (joe's, 24/7, a&w, 10-15);
# every other non-space character is a word of its own. Lowercase corpora such as MIT's split the same
# way as before (its tokens are all [a-z0-9]), while "pizza," yields "pizza" and ",".
_WORD = re.compile(rf"[{_UNSPACED}]|[^\W{_UNSPACED}]+(?:['\u2019\-./&][^\W{_UNSPACED}]+)*|[^\w\s]")
_WORD_START = re.compile(rf"[^\W{_UNSPACED}]")
# Tokens are joined without a space between two of these: the scripts above, CJK punctuation (、。「」) and the
# full-width forms (，（）！).
_JOINED = re.compile(rf"[{_UNSPACED}\u3000-\u303f\uff01-\uff65]")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def replace_lone_surrogates(text: str) -> str:
    r"""``text`` with every lone surrogate (half of an emoji cut by some script; an undecodable byte read from a
    stream) replaced by U+FFFD. One code point for one, so every offset stays valid; the tokenizer and UTF-8
    files cannot take them as they are.

    >>> replace_lone_surrogates("ok \ud83d here") == "ok \ufffd here"
    True
    """
    return text if text.isascii() else _LONE_SURROGATE.sub("\ufffd", text)


def _is_mark(character: str) -> bool:
    """Combining marks (accents of decomposed text, Indic vowel signs and viramas, Arabic harakat, Thai tone marks)
    belong to the letters before them, but the regular expression class of word characters does not hold them."""
    return unicodedata.category(character).startswith("M")


_ZWJ = "\u200d"
_EMOJI_MODIFIERS = range(0x1F3FB, 0x1F400)  # skin tones
_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)  # two of them make a flag


def _continues(text: str, previous: tuple[int, int], start: int) -> bool:
    """Whether the match at ``start``, right after the word ``previous``, belongs to that word: a combining mark
    and the letters after one; the parts of an emoji sequence (joined by U+200D, a skin tone, the second half of
    a flag)."""
    character, before = text[start], text[start - 1]
    if _is_mark(character) or (_is_mark(before) and _WORD_START.match(text, start)):
        return True
    if character == _ZWJ or before == _ZWJ or ord(character) in _EMOJI_MODIFIERS:
        return True
    return (previous[1] - previous[0] == 1 and ord(before) in _REGIONAL_INDICATORS
            and ord(character) in _REGIONAL_INDICATORS)


def _word_offsets(text: str) -> list[tuple[int, int]]:
    """(start, end) of every word: ``_WORD``'s matches, with what continues a word joined to it (see
    ``_continues``): "nam" + virama + "ste" is one word, as are "cafe" + U+0301 and a family emoji."""
    offsets: list[tuple[int, int]] = []
    for match in _WORD.finditer(text):
        start, end = match.span()
        if offsets and offsets[-1][1] == start and _continues(text, offsets[-1], start):
            offsets[-1] = (offsets[-1][0], end)
        else:
            offsets.append((start, end))
    return offsets


@dataclass(frozen=True)
class Word:
    """A word of a text: ``text[start:end] == word.text``."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Span:
    """A labelled character span: ``text[start:end]`` is the entity, ``score`` its confidence if predicted."""

    start: int
    end: int
    label: str
    text: str = ""
    score: float | None = None


@dataclass
class Example:
    """One sentence or task at word level: ``words[i]`` carries ``tags[i]``; ``source`` names where it came from."""

    text: str
    words: list[Word]
    tags: list[str]
    source: str = ""

    @property
    def tokens(self) -> list[str]:
        return [w.text for w in self.words]


def has_entities(examples: Iterable[Example]) -> bool:
    """Whether any word of ``examples`` is tagged as part of an entity: scores on a set without one are all 0, so
    they can rank neither epochs nor model versions."""
    return any(tag != OUTSIDE for example in examples for tag in example.tags)


def entity_types(tags: Iterable[str]) -> list[str]:
    """The entity types that BIO ``tags`` name, in first-seen order (``O`` and anything that is not ``B-x`` or
    ``I-x`` name none).

    >>> entity_types(["O", "B-Dish", "I-Dish", "B-Price", "I-Dish"])
    ['Dish', 'Price']
    """
    seen: dict[str, None] = {}
    for tag in tags:
        if isinstance(tag, str) and tag[:2] in ("B-", "I-") and len(tag) > 2:
            seen.setdefault(tag[2:], None)
    return list(seen)


def example_entity_types(examples: Iterable[Example]) -> list[str]:
    """``entity_types`` of every tag of ``examples`` (the labels of data read without a label config)."""
    return entity_types(tag for example in examples for tag in example.tags)


@dataclass
class ConversionReport:
    """Counts of every input the conversion had to repair or leave out, with the first few places named.

    Callers print ``summary()``; nothing is dropped without being counted here.
    """

    counts: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    max_notes: int = 20

    def add(self, kind: str, where: str, message: str) -> None:
        self.counts[kind] += 1
        if len(self.notes) < self.max_notes:
            self.notes.append(f"{where}: {message}")

    def merge(self, other: "ConversionReport") -> None:
        self.counts.update(other.counts)
        for note in other.notes:
            if len(self.notes) < self.max_notes:
                self.notes.append(note)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def summary(self) -> str:
        if not self.counts:
            return "no problems found"
        parts = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in sorted(self.counts.items()))
        lines = [parts] + [f"  {note}" for note in self.notes]
        hidden = sum(self.counts.values()) - len(self.notes)
        if hidden > 0:
            lines.append(f"  ... and {hidden} more")
        return "\n".join(lines)


def split_words(text: str, boundaries: Iterable[int] = ()) -> list[Word]:
    """Split ``text`` into words with offsets, cutting additionally at every offset in ``boundaries``.

    Cutting at span boundaries guarantees that a span starting or ending inside a word loses no character:

    >>> [w.text for w in split_words("joe's pizza, $10-$15", boundaries=[3])]
    ['joe', "'s", 'pizza', ',', '$', '10', '-', '$', '15']
    """
    cuts = sorted(set(boundaries))
    words: list[Word] = []
    for start, end in _word_offsets(text):
        inner = [b for b in cuts if start < b < end]
        for left, right in zip([start] + inner, inner + [end]):
            words.append(Word(text[left:right], left, right))
    return words


def tokens_to_text(tokens: Sequence[str]) -> tuple[str, list[Word]]:
    """Join pre-split tokens with single spaces (none between characters of scripts written without spaces, such
    as Chinese, Japanese or Thai, nor their punctuation); return the text and each token's offsets.

    >>> tokens_to_text(["cheap", "thai"])
    ('cheap thai', [Word(text='cheap', start=0, end=5), Word(text='thai', start=6, end=10)])
    >>> tokens_to_text(["在", "北", "京", "，", "3", "天", "。"])[0]
    '在北京， 3 天。'
    """
    words: list[Word] = []
    parts: list[str] = []
    offset = 0
    for token in tokens:
        if parts:
            joined = _JOINED.fullmatch(parts[-1][-1:]) and _JOINED.match(token)
            if not joined:
                parts.append(" ")
                offset += 1
        words.append(Word(token, offset, offset + len(token)))
        parts.append(token)
        offset += len(token)
    return "".join(parts), words


def realign_span(text: str, span: Span) -> Span | None:
    """Move a span whose ``span.text`` differs from ``text[start:end]`` to the nearest exact occurrence.

    Returns None when ``span.text`` occurs nowhere in ``text``.
    """
    if not span.text:
        return None
    best = None
    position = text.find(span.text)
    while position != -1:
        if best is None or abs(position - span.start) < abs(best - span.start):
            best = position
        position = text.find(span.text, position + 1)
    if best is None:
        return None
    return Span(best, best + len(span.text), span.label, span.text, span.score)


def clean_spans(
    text: str,
    spans: Iterable[Span],
    labels: Sequence[str] | None = None,
    report: ConversionReport | None = None,
    where: str = "",
) -> list[Span]:
    """Validate spans against ``text``; return the usable ones, sorted and non-overlapping.

    Policy (each case is counted in ``report``):
    - ``unknown_label``: label not in ``labels`` (when given): left out.
    - ``out_of_range``: offsets not integers with ``0 <= start < end <= len(text)``, and ``span.text`` not in the
      text: left out.
    - ``realigned``: ``span.text`` differs from ``text[start:end]`` (or the offsets run past the text) but occurs
      in the text: moved to the nearest occurrence. ``text_mismatch``: it occurs nowhere: the offsets are kept as given.
    - ``empty_span``: covers only whitespace: left out.
    - ``overlapping``: overlaps a span kept before it (earlier start wins; on equal starts the longer):
      left out.
    """
    report = report if report is not None else ConversionReport()
    known = set(labels) if labels is not None else None
    usable: list[Span] = []
    for span in spans:
        here = f"{where} span [{span.start}:{span.end}] {span.label!r}".strip()
        if known is not None and span.label not in known:
            report.add("unknown_label", here, f"label {span.label!r} is not in the label config; left out")
            continue
        integers = isinstance(span.start, int) and isinstance(span.end, int)
        if not (integers and 0 <= span.start < span.end <= len(text)):
            # Offsets past the end, as UTF-16 counting leaves them after emoji, still place a span whose text
            # is in the text.
            moved = realign_span(text, span) if integers else None
            if moved is None:
                report.add("out_of_range", here, f"offsets outside the text of length {len(text)}; left out")
                continue
            report.add("realigned", here, f"{span.text!r} moved to [{moved.start}:{moved.end}]")
            span = moved
        if span.text and text[span.start:span.end] != span.text:
            moved = realign_span(text, span)
            if moved is None:
                report.add("text_mismatch", here, f"{span.text!r} is not in the text; offsets kept")
            else:
                report.add("realigned", here, f"{span.text!r} moved to [{moved.start}:{moved.end}]")
                span = moved
        if not text[span.start:span.end].strip():
            report.add("empty_span", here, "covers only whitespace; left out")
            continue
        usable.append(span)
    usable.sort(key=lambda s: (s.start, -(s.end - s.start)))
    kept: list[Span] = []
    for span in usable:
        if kept and span.start < kept[-1].end:
            report.add(
                "overlapping",
                f"{where} span [{span.start}:{span.end}] {span.label!r}".strip(),
                f"overlaps [{kept[-1].start}:{kept[-1].end}] {kept[-1].label!r}; left out",
            )
            continue
        kept.append(span)
    return kept


def spans_to_bio(
    text: str,
    spans: Iterable[Span],
    labels: Sequence[str] | None = None,
    report: ConversionReport | None = None,
    where: str = "",
) -> Example:
    """Turn a text and its character spans into words with IOB2 tags.

    Words are cut at every span boundary, so each word lies wholly inside or outside one span; a span's
    first word gets ``B-label``, the rest ``I-label``. Spans are cleaned first (see ``clean_spans``).

    >>> ex = spans_to_bio("cheap thai food", [Span(6, 10, "Cuisine", "thai")])
    >>> list(zip(ex.tokens, ex.tags))
    [('cheap', 'O'), ('thai', 'B-Cuisine'), ('food', 'O')]
    """
    kept = clean_spans(text, spans, labels, report, where)
    words = split_words(text, [offset for span in kept for offset in (span.start, span.end)])
    tags = [OUTSIDE] * len(words)
    index = 0
    for span in kept:
        while index < len(words) and words[index].end <= span.start:
            index += 1
        first = True
        while index < len(words) and words[index].start < span.end:
            tags[index] = ("B-" if first else "I-") + span.label
            first = False
            index += 1
    return Example(text, words, tags, where)


def repair_bio(tags: Sequence[str], report: ConversionReport | None = None, where: str = "") -> list[str]:
    """Return IOB2 tags: an ``I-x`` that does not continue an ``x`` entity starts one (becomes ``B-x``).

    >>> repair_bio(["O", "I-Dish", "I-Dish", "I-Price"])
    ['O', 'B-Dish', 'I-Dish', 'B-Price']
    """
    repaired, previous = [], OUTSIDE
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            if report is not None:
                report.add("ill_formed_tag", f"{where} word {i + 1}".strip(), f"{tag} after {previous}; read as B-")
            tag = "B-" + tag[2:]
        repaired.append(tag)
        previous = tag
    return repaired


def bio_to_spans(
    text: str,
    words: Sequence[Word],
    tags: Sequence[str],
    scores: Sequence[float] | None = None,
) -> list[Span]:
    """Turn words with BIO tags back into character spans of ``text``.

    ``B-x`` always starts a new span, so adjacent entities of the same type stay separate; a stray ``I-x``
    starts a span too. A span's score is the mean of its words' scores, when scores are given.

    >>> text, words = tokens_to_text(["cheap", "thai", "food"])
    >>> bio_to_spans(text, words, ["O", "B-Cuisine", "I-Cuisine"])
    [Span(start=6, end=15, label='Cuisine', text='thai food', score=None)]
    """
    spans: list[Span] = []
    current: list[int] = []
    label = None

    def close() -> None:
        if current:
            start, end = words[current[0]].start, words[current[-1]].end
            score = None if scores is None else sum(scores[i] for i in current) / len(current)
            spans.append(Span(start, end, label, text[start:end], score))

    for i, tag in enumerate(tags):
        if tag.startswith("I-") and label == tag[2:]:
            current.append(i)
            continue
        close()
        current, label = ([i], tag[2:]) if tag[:2] in ("B-", "I-") else ([], None)
    close()
    return spans
