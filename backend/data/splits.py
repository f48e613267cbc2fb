"""Deterministic train/validation/test assignment by a hash of each example's key (task id or sentence index).

The same key always lands in the same split, whatever else is in the data, so adding tasks never moves old ones.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Sequence, TypeVar

T = TypeVar("T")

# The validation carve hashes with its own salt: applied to a train split made by ``assign_split`` (which
# already selected keys by unsalted position), an unsalted carve would find no key in its range.
CARVE_SALT = "validation-carve:"

SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_SPLIT = "80/10/10"


def key_position(key: str | int, salt: str = "") -> float:
    """A number in [0, 1) fixed by ``key`` (and ``salt``) alone: the first 8 bytes of sha1(salt + str(key)) / 2**64.

    >>> key_position(17) == key_position("17")
    True
    """
    # surrogatepass: a text key holding a lone surrogate still hashes (to its own, stable value)
    digest = hashlib.sha1((salt + str(key)).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def parse_fractions(text: str, names: Sequence[str] = SPLIT_NAMES) -> list[tuple[str, float]]:
    """``"80/10/10"`` -> ``[("train", 0.8), ("validation", 0.1), ("test", 0.1)]`` (any positive weights).

    >>> parse_fractions("90/10")
    [('train', 0.9), ('validation', 0.1)]
    """
    parts = text.split("/")
    try:
        weights = [float(part) for part in parts]
    except ValueError:
        raise ValueError(f"split {text!r} must be numbers separated by '/', like 80/10/10") from None
    if not 1 <= len(weights) <= len(names) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"split {text!r} must be 1 to {len(names)} non-negative numbers with a positive sum, like 80/10/10")
    total = sum(weights)
    return [(name, weight / total) for name, weight in zip(names, weights)]


def assign_split(key: str | int, fractions: Sequence[tuple[str, float]]) -> str:
    """The split name of ``key``: its ``key_position`` falls into one of the cumulative ``fractions``.

    Fractions need not sum to 1 (they are normalised). Deterministic and independent of other keys.

    >>> assign_split("task 1", [("train", 1.0), ("test", 0.0)])
    'train'
    """
    total = sum(weight for _, weight in fractions)
    if not fractions or total <= 0:
        raise ValueError("fractions must hold at least one split with a positive weight")
    position, bound = key_position(key) * total, 0.0
    for name, weight in fractions:
        bound += weight
        if position < bound:
            return name
    # floating-point rounding can leave the very top uncovered; it belongs to the last non-empty split
    return next(name for name, weight in reversed(fractions) if weight > 0)


def split_keyed(keyed: Iterable[tuple[str | int, T]], fractions: Sequence[tuple[str, float]]) -> dict[str, list[T]]:
    """Group ``(key, item)`` pairs by ``assign_split``; every split name is present, input order kept."""
    groups: dict[str, list[T]] = {name: [] for name, _ in fractions}
    for key, item in keyed:
        groups[assign_split(key, fractions)].append(item)
    return groups


def split_examples(keyed_examples: Iterable[tuple[str | int, T]], validation_fraction: float) -> tuple[list[T], list[T]]:
    """``(train, validation)`` from ``(key, example)`` pairs; a key is in validation when its (salted) position
    is in the top ``validation_fraction`` of [0, 1). Independent of ``assign_split``, so it can carve a
    validation set out of a train split made by it.

    So that training can always measure itself, with two or more examples and a fraction above 0 neither side is
    left empty: the example with the highest (resp. lowest) position moves over. That fallback matters only for
    tiny data sets; with more data the split is the plain hash assignment.

    >>> train, validation = split_examples([(i, i) for i in range(100)], 0.2)
    >>> len(train) + len(validation), 0 < len(validation) < 40
    (100, True)
    """
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), not {validation_fraction}")
    items = [(key_position(key, CARVE_SALT), item) for key, item in keyed_examples]
    threshold = 1 - validation_fraction
    train = [pair for pair in items if pair[0] < threshold]
    validation = [pair for pair in items if pair[0] >= threshold]
    if validation_fraction > 0 and len(items) >= 2:
        if not validation:
            moved = max(train, key=lambda pair: pair[0])
            train = [pair for pair in train if pair is not moved]
            validation = [moved]
        elif not train:
            moved = min(validation, key=lambda pair: pair[0])
            validation = [pair for pair in validation if pair is not moved]
            train = [moved]
    return [item for _, item in train], [item for _, item in validation]
