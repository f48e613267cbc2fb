"""Word-level NER scores: seqeval's entity matching over IOB2 word tags, overall and per entity type.

Counts follow seqeval's default (CoNLL ``conlleval``) mode, the one the tutorial's metric reports, so figures compare.
The chunking is written out here rather than imported: ``seqeval.metrics`` pulls in scikit-learn and SciPy (about
130 MB in every training process). tests/model/test_metrics.py checks it against seqeval itself on random tag sequences.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Sequence


# seqeval's rules, by (previous tag, tag) letter: where an entity ends before the current word, or starts at it.
_ENDS = {("B", "B"), ("B", "S"), ("B", "O"), ("I", "B"), ("I", "S"), ("I", "O")}
_STARTS = {("E", "E"), ("E", "I"), ("S", "E"), ("S", "I"), ("O", "E"), ("O", "I")}


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(type, first word, last word)`` of every entity in one sentence's tags, chunked as seqeval's default mode.

    A tag is a letter (B, I, E, S or O) and a type after a dash. An entity also starts where the type changes,
    so ``I-x`` after ``O`` opens one (the lenient CoNLL reading).

    >>> entities(["B-Dish", "I-Dish", "O", "I-Price", "B-Price"])
    [('Dish', 0, 1), ('Price', 3, 3), ('Price', 4, 4)]
    """
    found = []
    previous_tag, previous_type, begin = "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, type_ = chunk[:1], chunk[1:].split("-", 1)[-1] or "_"
        type_changed = previous_type != type_
        if (previous_tag in ("E", "S") or (previous_tag, tag) in _ENDS
                or (previous_tag not in ("O", ".") and type_changed)):
            found.append((previous_type, begin, i - 1))
        if tag in ("B", "S") or (previous_tag, tag) in _STARTS or (tag not in ("O", ".") and type_changed):
            begin = i
        previous_tag, previous_type = tag, type_
    return found


@dataclass
class EntityScore:
    """Precision, recall and F1 of exactly matching entities; ``support`` = number of gold entities."""

    precision: float
    recall: float
    f1: float
    support: int

    @classmethod
    def from_counts(cls, true_positives: int, predicted: int, gold: int) -> "EntityScore":
        precision = true_positives / predicted if predicted else 0.0
        recall = true_positives / gold if gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return cls(precision, recall, f1, gold)


@dataclass
class Scores:
    """Micro-averaged ``overall`` score plus one score per entity type (sorted by name).

    ``counts``: per scored sentence (task), its (found, predicted, gold) entity counts, in the order scored: what a
    paired bootstrap resamples (``f1_difference``); not saved (``to_dict``).
    """

    overall: EntityScore
    per_entity: dict[str, EntityScore] = field(default_factory=dict)
    counts: list[tuple[int, int, int]] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"overall": asdict(self.overall), "per_entity": {k: asdict(v) for k, v in self.per_entity.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "Scores":
        return cls(
            EntityScore(**data["overall"]),
            {label: EntityScore(**score) for label, score in data.get("per_entity", {}).items()},
        )

    def table(self) -> str:
        """A fixed-width per-entity table, the overall row last."""
        rows = [f"{'entity':<18}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
        for label, s in [*self.per_entity.items(), ("overall", self.overall)]:
            rows.append(f"{label:<18}{s.precision:>10.4f}{s.recall:>10.4f}{s.f1:>10.4f}{s.support:>9d}")
        return "\n".join(rows)


def score_tags(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> Scores:
    """Score predicted word tags against gold word tags, one list per sentence, entity by entity.

    An entity counts as found only when its type, first word and last word all match.

    >>> s = score_tags([["B-Dish", "I-Dish", "O"]], [["B-Dish", "O", "O"]])
    >>> (s.overall.precision, s.overall.recall, s.overall.support)
    (0.0, 0.0, 1)
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold sentences but {len(predicted)} predicted ones")
    found, guessed, hits = Counter(), Counter(), Counter()
    counts = []
    for i, (gold_tags, predicted_tags) in enumerate(zip(gold, predicted)):
        if len(gold_tags) != len(predicted_tags):
            raise ValueError(f"sentence {i}: {len(gold_tags)} gold tags but {len(predicted_tags)} predicted")
        # Per sentence: entities never join across a sentence boundary (as in seqeval's nested-list input).
        gold_entities = set(entities(gold_tags))
        predicted_entities = set(entities(predicted_tags))
        found.update(label for label, _, _ in gold_entities)
        guessed.update(label for label, _, _ in predicted_entities)
        hits.update(label for label, _, _ in gold_entities & predicted_entities)
        counts.append((len(gold_entities & predicted_entities), len(predicted_entities), len(gold_entities)))
    labels = sorted(set(found) | set(guessed))
    per_entity = {label: EntityScore.from_counts(hits[label], guessed[label], found[label]) for label in labels}
    overall = EntityScore.from_counts(sum(hits.values()), sum(guessed.values()), sum(found.values()))
    return Scores(overall, per_entity, counts)


@dataclass(frozen=True)
class F1Difference:
    """Candidate F1 minus the previous model's, on the same tasks, with a ``level`` interval from a paired
    bootstrap over the tasks (``rounds`` resamples)."""

    delta: float
    low: float
    high: float
    level: float = 0.90
    rounds: int = 0
    tasks: int = 0

    @property
    def worse_beyond_noise(self) -> bool:
        """The whole interval lies below 0: the candidate is worse on these tasks, beyond resampling noise."""
        return self.high < 0

    def text(self) -> str:
        """``ΔF1 -0.010, 90% -0.041 to +0.020``"""
        return f"ΔF1 {self.delta:+.3f}, {self.level:.0%} {self.low:+.3f} to {self.high:+.3f}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "F1Difference":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def f1_difference(candidate: Scores, previous: Scores, rounds: int = 2000, level: float = 0.90,
                  seed: int = 0) -> F1Difference | None:
    """The paired bootstrap of candidate-minus-previous micro F1 over the tasks both were scored on: each round
    draws the tasks with replacement, the same draw for both models (Koehn 2004; Berg-Kirkpatrick et al. 2012).
    None when the two were not scored on the same tasks (no per-task counts, or different numbers of tasks).

    >>> same = score_tags([["B-Dish"], ["O"]], [["B-Dish"], ["O"]])
    >>> f1_difference(same, same).text()
    'ΔF1 +0.000, 90% +0.000 to +0.000'
    """
    import numpy as np

    if not candidate.counts or len(candidate.counts) != len(previous.counts):
        return None
    ours, theirs = np.asarray(candidate.counts, dtype=np.int64), np.asarray(previous.counts, dtype=np.int64)
    draws = np.random.default_rng(seed).integers(0, len(ours), size=(rounds, len(ours)))

    def f1(counts: "np.ndarray") -> "np.ndarray":  # rows of (found, predicted, gold) summed per round
        found, predicted, gold = (counts[draws, column].sum(axis=1) for column in range(3))
        total = predicted + gold
        return np.where(total > 0, 2 * found / np.maximum(total, 1), 0.0)

    deltas = f1(ours) - f1(theirs)
    tail = (1 - level) / 2
    low, high = np.quantile(deltas, [tail, 1 - tail])
    delta = candidate.overall.f1 - previous.overall.f1
    return F1Difference(round(float(delta), 4), round(float(low), 4), round(float(high), 4), level, rounds, len(ours))
