"""Specification of backend/data/splits.py: deterministic splits by hash of a key, stable when data is added."""
from __future__ import annotations

import pytest

from backend.data.splits import assign_split, parse_fractions, split_examples, split_keyed

FRACTIONS = parse_fractions("80/10/10")


def test_the_same_key_always_lands_in_the_same_split():
    assert [assign_split(k, FRACTIONS) for k in range(200)] == [assign_split(k, FRACTIONS) for k in range(200)]


def test_adding_keys_moves_no_existing_key():
    before = split_keyed([(k, k) for k in range(300)], FRACTIONS)
    after = split_keyed([(k, k) for k in range(1000, 1500)] + [(k, k) for k in range(300)], FRACTIONS)
    for name, items in before.items():
        assert set(items) <= set(after[name])


def test_split_sizes_follow_the_fractions():
    groups = split_keyed([(k, k) for k in range(5000)], FRACTIONS)
    sizes = {name: len(items) / 5000 for name, items in groups.items()}
    assert abs(sizes["train"] - 0.8) < 0.03 and abs(sizes["validation"] - 0.1) < 0.02 and abs(sizes["test"] - 0.1) < 0.02


def test_every_split_name_is_present_even_when_empty():
    assert split_keyed([], FRACTIONS) == {"train": [], "validation": [], "test": []}


def test_zero_fraction_split_gets_nothing():
    groups = split_keyed([(k, k) for k in range(500)], parse_fractions("90/0/10"))
    assert groups["validation"] == [] and len(groups["train"]) > 400


def test_parse_fractions_normalises_weights():
    assert [name for name, _ in parse_fractions("8/1/1")] == ["train", "validation", "test"]
    assert [w for _, w in parse_fractions("8/1/1")] == pytest.approx([0.8, 0.1, 0.1])
    assert [name for name, _ in parse_fractions("90/10")] == ["train", "validation"]


@pytest.mark.parametrize("text", ["", "80/x", "50/50/50/50", "-1/2", "0/0"])
def test_bad_split_text_is_refused(text):
    with pytest.raises(ValueError):
        parse_fractions(text)


def test_validation_carve_is_deterministic_and_partitions_the_examples():
    keyed = [(f"task {k}", k) for k in range(1000)]
    train, validation = split_examples(keyed, 0.1)
    assert (train, validation) == split_examples(list(reversed(keyed))[::-1], 0.1)
    assert sorted(train + validation) == list(range(1000))
    assert 60 < len(validation) < 140


def test_validation_carve_finds_examples_inside_a_train_split():
    train_split = split_keyed([(k, (k, k)) for k in range(2000)], FRACTIONS)["train"]
    _, validation = split_examples(train_split, 0.1)
    assert len(validation) > 0.05 * len(train_split)


def test_tiny_data_still_gets_both_sides():
    train, validation = split_examples([(1, "a"), (2, "b")], 0.1)
    assert len(train) == 1 and len(validation) == 1
    assert split_examples([(1, "a"), (2, "b")], 0.0) == (["a", "b"], [])


def test_a_key_with_a_lone_surrogate_hashes_to_a_stable_position():
    from backend.data.splits import key_position

    assert key_position("pho \ud83d") == key_position("pho \ud83d") != key_position("pho \ufffd")
