"""The review's pure parts: which fold holds a task, what a model reads differently from an annotation (findings),
and how far annotators agree (span-level pairwise F1). No torch: the model's side is ``Predictor.score_labellings``,
the k-fold run ``backend/training/review.py``.

Spans compare as word-index spans ``(first word, end word, type)`` of one ``Example`` (findings) and as character
spans ``(start, end, type)`` with surrounding whitespace trimmed (agreement: two annotators' words may differ).
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from backend.data.schema import LabelSchema
from backend.data.spans import OUTSIDE, ConversionReport, Example, clean_spans
from backend.data.splits import key_position
from backend.data.tasks import _recency, results_to_spans, task_text

FOLD_SALT = "review-fold:"  # folds are drawn apart from the validation split (another salt)

# what a finding says: the model reads a span the annotation lacks, the annotation has a span the model does not
# read, the same words with another type, overlapping words with other boundaries
MISSING, EXTRA, OTHER_TYPE, OTHER_BOUNDARY = "missing span", "extra span", "other type", "other boundary"
FINDING_KINDS = (MISSING, EXTRA, OTHER_TYPE, OTHER_BOUNDARY)
# conversion notes that mean a task's annotation did not land on its words as written (a span left out or moved)
UNALIGNED_KINDS = ("unknown_label", "out_of_range", "realigned", "text_mismatch", "empty_span", "overlapping",
                   "malformed_result", "other_control", "several_labels", "missing_text", "empty_text")


def fold_of(task_id: Any, folds: int) -> int:
    """The fold (0 .. folds-1) that holds ``task_id``, fixed by the id alone.

    >>> fold_of(17, 5) == fold_of("17", 5), 0 <= fold_of(3, 4) < 4
    (True, True)
    """
    return min(folds - 1, int(key_position(task_id, FOLD_SALT) * folds))


def word_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """``(first word, end word exclusive, type)`` of each entity in IOB2 ``tags`` (a stray ``I-x`` opens one).

    >>> word_spans(["B-Dish", "I-Dish", "O", "I-Price", "B-Price"])
    [(0, 2, 'Dish'), (3, 4, 'Price'), (4, 5, 'Price')]
    """
    spans, start, kind = [], None, None
    for i, tag in enumerate([*tags, OUTSIDE]):
        inside = tag[:2] == "I-" and kind == tag[2:]
        if start is not None and not inside:
            spans.append((start, i, kind))
            start, kind = None, None
        if tag[:2] in ("B-", "I-") and not inside:
            start, kind = i, tag[2:]
    return spans


@dataclass
class Finding:
    """One difference between an annotation and the model's best labelling, as character offsets of the text:
    ``label`` / ``start`` / ``end`` the annotation's span (None for a missing span), ``model_*`` what the model reads
    (None for an extra span), ``doubt`` the summed log-probability ratio over the span's words."""

    kind: str
    text: str
    label: str | None = None
    start: int | None = None
    end: int | None = None
    model_label: str | None = None
    model_start: int | None = None
    model_end: int | None = None
    model_text: str | None = None
    doubt: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in vars(self).items() if value is not None}


def findings(example: Example, model_tags: Sequence[str], word_doubt: Sequence[float] | None = None) -> list[Finding]:
    """What the model reads differently from ``example``'s annotation, biggest doubt first: each annotated span
    without an overlapping model span is ``extra``, each model span without an overlapping annotated one
    ``missing``; overlapping spans with the same words are ``other type``, else ``other boundary``.
    ``word_doubt[i]``: how much likelier the model finds its tag of word i than the annotation's (log-ratio)."""
    words, text = example.words, example.text
    doubt = list(word_doubt) if word_doubt is not None else [0.0] * len(words)
    given, read = word_spans(example.tags), word_spans(model_tags)

    def chars(span):
        return words[span[0]].start, words[span[1] - 1].end

    def cost(*spans):
        covered = {i for span in spans for i in range(span[0], span[1])}
        return round(sum(doubt[i] for i in covered), 4)

    found, matched = [], set()
    for span in given:
        overlapping = [other for other in read if other[0] < span[1] and span[0] < other[1]]
        start, end = chars(span)
        if not overlapping:
            found.append(Finding(EXTRA, text[start:end], span[2], start, end, doubt=cost(span)))
            continue
        for other in overlapping:
            matched.add(other)
            if other == span:
                continue
            m_start, m_end = chars(other)
            kind = OTHER_TYPE if other[:2] == span[:2] else OTHER_BOUNDARY
            found.append(Finding(kind, text[start:end], span[2], start, end, other[2], m_start, m_end,
                                 text[m_start:m_end], cost(span, other)))
    for other in read:
        if other not in matched:
            m_start, m_end = chars(other)
            found.append(Finding(MISSING, text[m_start:m_end], None, None, None, other[2], m_start, m_end,
                                 text[m_start:m_end], cost(other)))
    return sorted(found, key=lambda f: -f.doubt)


# --- annotator agreement -------------------------------------------------------------------------------------------
def annotation_spans(text: str, annotation: dict, schema: LabelSchema) -> set[tuple[int, int, str]]:
    """An annotation's spans as ``(start, end, type)``, cleaned as training cleans them, whitespace trimmed."""
    report = ConversionReport()
    spans = clean_spans(text, results_to_spans(annotation.get("result") or [], schema, report), schema.labels, report)
    trimmed = set()
    for span in spans:
        piece = text[span.start:span.end]
        start = span.start + len(piece) - len(piece.lstrip())
        trimmed.add((start, start + len(piece.strip()), span.label))
    return trimmed


def annotator_of(annotation: dict) -> Any:
    """Who submitted an annotation: Label Studio's ``completed_by`` (a user id, or a user object with its id)."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("id", who.get("email"))
    return who


@dataclass
class Tally:
    """Span counts of compared pairs: ``matched`` spans both marked, ``first`` / ``second`` spans each marked.
    F1 = 2 matched / (first + second); None when neither marked any span."""

    matched: int = 0
    first: int = 0
    second: int = 0
    pairs: int = 0

    def add(self, a: set, b: set) -> None:
        self.matched += len(a & b)
        self.first += len(a)
        self.second += len(b)

    @property
    def f1(self) -> float | None:
        marked = self.first + self.second
        return None if marked == 0 else round(2 * self.matched / marked, 4)

    def to_dict(self) -> dict[str, Any]:
        return {"f1": self.f1, "matched": self.matched, "spans": self.first + self.second, "pairs": self.pairs}


def _pair_f1(a: set, b: set) -> float:
    return 1.0 if not a and not b else 2 * len(a & b) / (len(a) + len(b))


@dataclass
class Agreement:
    """Span-level agreement between annotators over the tasks with 2+ submitted annotations by different people."""

    tasks: int = 0
    overall: Tally = field(default_factory=Tally)
    per_type: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    per_pair: dict[tuple[str, str], Tally] = field(default_factory=lambda: defaultdict(Tally))
    disagreements: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, limit: int | None = None) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "overall": self.overall.to_dict(),
            "per_type": {kind: tally.to_dict() for kind, tally in sorted(self.per_type.items())},
            "per_pair": [{"annotators": list(pair), **tally.to_dict()} for pair, tally in sorted(self.per_pair.items())],
            "disagreements": self.disagreements[:limit] if limit else self.disagreements,
        }


def agreement(tasks: Iterable[dict], schema: LabelSchema, names: dict[Any, str] | None = None) -> Agreement:
    """Pairwise span F1 between annotators: each task with submitted (not cancelled) annotations by two or more
    people (one's latest annotation counts when they submitted several) adds every pair of them, overall, per entity
    type (the spans of that type only) and per pair of annotators (named by ``names[user id]``, else ``user <id>``).
    ``disagreements``: the tasks whose pairs agree least (mean pair F1 below 1), least first, with each one's spans."""
    names = names or {}
    result = Agreement()
    for task in tasks:
        if not isinstance(task, dict):
            continue
        latest: dict[Any, dict] = {}
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, dict) or annotation.get("was_cancelled"):
                continue
            who = annotator_of(annotation)
            if who not in latest or _recency(annotation) > _recency(latest[who]):
                latest[who] = annotation
        if len(latest) < 2:
            continue
        text = task_text(task, schema.data_key)
        marked = {_name(who, names): annotation_spans(text, annotation, schema) for who, annotation in latest.items()}
        result.tasks += 1
        pair_scores = []
        for (first, a), (second, b) in itertools.combinations(sorted(marked.items()), 2):
            pair_scores.append(_pair_f1(a, b))
            for tally in (result.overall, result.per_pair[(first, second)]):
                tally.add(a, b)
                tally.pairs += 1
            for kind in {span[2] for span in a | b}:
                tally = result.per_type[kind]
                tally.add({s for s in a if s[2] == kind}, {s for s in b if s[2] == kind})
                tally.pairs += 1
        score = sum(pair_scores) / len(pair_scores)
        if score < 1:
            result.disagreements.append({
                "task": task.get("id"), "f1": round(score, 4),
                "annotators": {who: [{"start": s, "end": e, "label": label, "text": text[s:e]}
                                     for s, e, label in sorted(spans)] for who, spans in marked.items()}})
    result.disagreements.sort(key=lambda item: (item["f1"], str(item["task"])))
    return result


def _name(who: Any, names: dict[Any, str]) -> str:
    return names.get(who) or f"user {who}"
