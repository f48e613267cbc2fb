"""BIO decoding: the most probable tag sequence in which every I-x follows B-x or I-x (checked by brute force)."""
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.model.decoding import BioConstraints, constrained_decode
from backend.data.spans import repair_bio

LABELS = ["O", "B-Dish", "I-Dish", "B-Price", "I-Price"]


def valid(tags):
    return repair_bio(tags) == list(tags)  # IOB2 already: nothing to repair


def brute_force(scores):
    candidates = (seq for seq in itertools.product(range(len(LABELS)), repeat=len(scores))
                  if valid([LABELS[i] for i in seq]))
    return max(candidates, key=lambda seq: sum(scores[k][i] for k, i in enumerate(seq)))


sentence = st.lists(st.lists(st.floats(-8, 0), min_size=len(LABELS), max_size=len(LABELS)), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(st.lists(sentence, min_size=1, max_size=6))
def test_decoding_finds_the_best_valid_sequence_of_every_sentence_of_a_batch(sentences):
    log_probs = [torch.tensor(s, dtype=torch.float32) for s in sentences]
    decoded = constrained_decode(log_probs, BioConstraints(LABELS), chunk=4)
    for scores, ids in zip(sentences, decoded):
        assert len(ids) == len(scores) and valid([LABELS[i] for i in ids])
        best = brute_force(scores)
        total = sum(scores[k][i] for k, i in enumerate(ids))
        assert total == pytest.approx(sum(scores[k][i] for k, i in enumerate(best)), abs=1e-4)


def test_a_fragment_is_repaired_the_cheapest_way():
    # Word by word: "O I-Dish" (a fragment). Best valid: "B-Dish I-Dish" (its first word was nearly B-Dish).
    scores = torch.log(torch.tensor([[0.50, 0.45, 0.01, 0.02, 0.02], [0.05, 0.05, 0.80, 0.05, 0.05]]))
    assert constrained_decode([scores], BioConstraints(LABELS)) == [[1, 2]]


def test_empty_sentences_and_unknown_schemes_pass_through():
    assert constrained_decode([torch.zeros(0, 5)], BioConstraints(LABELS)) == [[]]
    rules = BioConstraints(["O", "I-Dish", "S-Price"])  # no B-Dish: nothing to constrain
    assert rules.may_start.all() and rules.may_follow.all()
