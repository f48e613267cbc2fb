"""What annotators kept of the suggestions: each annotated task that carried a prediction made before its
annotation, the suggested spans against the submitted ones, per entity and per model version.

A suggested span is *kept* (the same start, end and label is in the annotation), *relabelled* (the same start and
end under another label), *resized* (an annotated span of the same label overlaps it, with other bounds), or
*deleted* (none of these). An annotated span that no suggested span accounts for is *added*. Each annotated span
accounts for one suggestion at most. This is the model's quality on the work people actually did.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from backend.data.schema import LabelSchema
from backend.data.spans import Span
from backend.data.tasks import _timestamp, choose_annotation, results_to_spans

OUTCOMES = ("kept", "relabelled", "resized", "deleted", "added")


@dataclass
class SuggestionOutcomes:
    """Counts of each outcome per model version and entity label, and how many tasks they come from."""

    counts: dict[str, dict[str, Counter]] = field(default_factory=dict)  # version -> label -> outcome -> n
    tasks: Counter = field(default_factory=Counter)  # version -> tasks compared

    def add(self, version: str, label: str, outcome: str) -> None:
        self.counts.setdefault(version, {}).setdefault(label, Counter())[outcome] += 1

    def totals(self, version: str) -> Counter:
        """Every outcome of ``version`` over its labels."""
        total: Counter = Counter()
        for per_label in self.counts.get(version, {}).values():
            total.update(per_label)
        return total

    def kept_share(self, version: str) -> float | None:
        """Suggested spans kept exactly, over every suggested span of ``version`` (None without any)."""
        total = self.totals(version)
        suggested = sum(total[o] for o in ("kept", "relabelled", "resized", "deleted"))
        return total["kept"] / suggested if suggested else None

    def to_dict(self) -> dict:
        return {"tasks": dict(self.tasks), "versions": {
            version: {label: {o: counter[o] for o in OUTCOMES} for label, counter in sorted(per_label.items())}
            for version, per_label in sorted(self.counts.items())}}


def compare_spans(suggested: Iterable[Span], annotated: Iterable[Span]) -> list[tuple[str, str]]:
    """``(label, outcome)`` for every suggested span, then ``(label, "added")`` for every annotated span left over.

    >>> s = [Span(0, 5, "Dish"), Span(6, 10, "Price"), Span(11, 15, "Dish"), Span(20, 24, "Hours")]
    >>> a = [Span(0, 5, "Dish"), Span(6, 10, "Rating"), Span(11, 18, "Dish"), Span(30, 34, "Cuisine")]
    >>> compare_spans(s, a)
    [('Dish', 'kept'), ('Price', 'relabelled'), ('Dish', 'resized'), ('Hours', 'deleted'), ('Cuisine', 'added')]
    """
    left = list(annotated)
    outcomes = []
    for span in suggested:
        for outcome, matches in (("kept", lambda a: (a.start, a.end, a.label) == (span.start, span.end, span.label)),
                                 ("relabelled", lambda a: (a.start, a.end) == (span.start, span.end)),
                                 ("resized", lambda a: a.label == span.label and a.start < span.end
                                  and span.start < a.end)):
            match = next((a for a in left if matches(a)), None)
            if match is not None:
                left.remove(match)
                outcomes.append((span.label, outcome))
                break
        else:
            outcomes.append((span.label, "deleted"))
    return outcomes + [(a.label, "added") for a in left]


def shown_prediction(task: dict, annotation: dict) -> dict | None:
    """The task's newest prediction made before ``annotation`` was created (what the annotator was shown), or None
    when no prediction precedes it (or the times are missing)."""
    made = _timestamp(annotation.get("created_at"))
    before = [p for p in task.get("predictions") or []
              if isinstance(p, dict) and p.get("created_at") and _timestamp(p["created_at"]) < made]
    return max(before, key=lambda p: _timestamp(p["created_at"]), default=None)


def suggestion_outcomes(tasks: Iterable[dict], schema: LabelSchema,
                        predictions: Iterable[dict] | None = None) -> SuggestionOutcomes:
    """Compare, for every annotated task shown a suggestion, what was suggested with what was submitted.
    ``predictions``: the project's predictions, each naming its ``task`` (Label Studio's export names a task's
    predictions by id only); without them, the predictions inside the tasks."""
    outcomes = SuggestionOutcomes()
    by_task: dict = {}
    for prediction in predictions or ():
        if isinstance(prediction, dict):
            by_task.setdefault(prediction.get("task"), []).append(prediction)
    for task in tasks:
        annotation = choose_annotation(task) if isinstance(task, dict) else None
        if annotation and predictions is not None:
            task = {**task, "predictions": by_task.get(task.get("id"), [])}
        prediction = shown_prediction(task, annotation) if annotation else None
        if prediction is None:
            continue
        version = str(prediction.get("model_version") or "unknown")
        suggested = results_to_spans(prediction.get("result") or [], schema)
        submitted = results_to_spans(annotation.get("result") or [], schema)
        outcomes.tasks[version] += 1
        for label, outcome in compare_spans(suggested, submitted):
            outcomes.add(version, label, outcome)
    return outcomes
