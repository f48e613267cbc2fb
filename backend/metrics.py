"""Word-level NER scores: seqeval's entity matching over IOB2 word tags, overall and per entity type.

Counts follow seqeval's default (CoNLL ``conlleval``) mode, the one the tutorial's metric reports, so figures compare.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Sequence

from seqeval.metrics.sequence_labeling import get_entities


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
        # seqeval's get_entities reads one flat sequence; scoring per sentence keeps entities from joining
        # across a sentence boundary.
        gold_entities = set(get_entities(list(gold_tags)))
        predicted_entities = set(get_entities(list(predicted_tags)))
        found.update(label for label, _, _ in gold_entities)
        guessed.update(label for label, _, _ in predicted_entities)
        hits.update(label for label, _, _ in gold_entities & predicted_entities)
    labels = sorted(set(found) | set(guessed))
    per_entity = {label: EntityScore.from_counts(hits[label], guessed[label], found[label]) for label in labels}
    overall = EntityScore.from_counts(sum(hits.values()), sum(guessed.values()), sum(found.values()))
    return Scores(overall, per_entity)
