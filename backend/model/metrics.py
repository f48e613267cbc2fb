"""Word-level NER scores: seqeval's entity matching over IOB2 word tags, overall and per entity type.

Counts follow seqeval's default (CoNLL ``conlleval``) mode, the one the tutorial's metric reports, so figures compare.
The chunking is written out here rather than imported: ``seqeval.metrics`` pulls in scikit-learn and SciPy (about
130 MB in every training process). tests/test_metrics.py checks it against seqeval itself on random tag sequences.
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
    """Micro-averaged ``overall`` score plus one score per entity type (sorted by name)."""

    overall: EntityScore
    per_entity: dict[str, EntityScore] = field(default_factory=dict)

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
    for i, (gold_tags, predicted_tags) in enumerate(zip(gold, predicted)):
        if len(gold_tags) != len(predicted_tags):
            raise ValueError(f"sentence {i}: {len(gold_tags)} gold tags but {len(predicted_tags)} predicted")
        # Per sentence: entities never join across a sentence boundary (as in seqeval's nested-list input).
        gold_entities = set(entities(gold_tags))
        predicted_entities = set(entities(predicted_tags))
        found.update(label for label, _, _ in gold_entities)
        guessed.update(label for label, _, _ in predicted_entities)
        hits.update(label for label, _, _ in gold_entities & predicted_entities)
    labels = sorted(set(found) | set(guessed))
    per_entity = {label: EntityScore.from_counts(hits[label], guessed[label], found[label]) for label in labels}
    overall = EntityScore.from_counts(sum(hits.values()), sum(guessed.values()), sum(found.values()))
    return Scores(overall, per_entity)
