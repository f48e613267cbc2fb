"""Word-level scores: entity-exact matching, identical to seqeval's default mode, overall and per entity."""
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from seqeval.metrics import f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities

from backend.model.metrics import EntityScore, Scores, entities, score_tags

# Every letter seqeval knows (IOB2, IOBES, bare letters, its "." oddity), types with dashes, and garbage.
ANY_TAG = st.sampled_from(["O", "B-Dish", "I-Dish", "E-Dish", "S-Dish", "B-Price", "I-Price", "B-a-b", "I-a-b",
                           "B", "I", "E", "S", ".", "X-Dish", "Dish", "I-"])


def test_perfect_prediction_scores_one_for_every_entity():
    gold = [["B-Dish", "I-Dish", "O", "B-Price"], ["O", "B-Dish"]]
    scores = score_tags(gold, gold)
    assert scores.overall.f1 == 1.0
    assert scores.per_entity["Dish"].support == 2
    assert scores.per_entity["Price"].support == 1


def test_an_entity_with_a_wrong_boundary_counts_as_missed_and_as_spurious():
    scores = score_tags([["B-Dish", "I-Dish", "O"]], [["B-Dish", "O", "O"]])
    assert scores.overall == EntityScore(0.0, 0.0, 0.0, 1)


def test_entities_do_not_join_across_sentence_boundaries():
    gold = [["O", "B-Dish"], ["I-Dish", "O"]]
    scores = score_tags(gold, gold)
    assert scores.overall.support == 2


def test_scores_equal_seqeval_on_random_tag_sequences():
    rng = random.Random(7)
    tags = ["O", "O", "O", "B-Dish", "I-Dish", "B-Price", "I-Price", "B-Hours", "I-Hours"]
    gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(200)]
    predicted = [[t if rng.random() < 0.7 else rng.choice(tags) for t in sentence] for sentence in gold]
    scores = score_tags(gold, predicted)
    assert scores.overall.f1 == pytest.approx(f1_score(gold, predicted))
    assert scores.overall.precision == pytest.approx(precision_score(gold, predicted))
    assert scores.overall.recall == pytest.approx(recall_score(gold, predicted))


@given(st.lists(ANY_TAG, max_size=14))
def test_entities_are_chunked_exactly_as_seqeval_does(tags):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns about the garbage tags, and still chunks them
        assert entities(tags) == get_entities(list(tags))


def test_no_entities_anywhere_scores_zero_without_error():
    assert score_tags([["O", "O"]], [["O", "O"]]).overall == EntityScore(0.0, 0.0, 0.0, 0)


def test_scores_round_trip_through_a_dict():
    scores = score_tags([["B-Dish", "O", "B-Price"]], [["B-Dish", "O", "O"]])
    assert Scores.from_dict(scores.to_dict()) == scores
    assert set(scores.to_dict()["overall"]) == {"precision", "recall", "f1", "support"}


def test_table_lists_every_entity_and_the_overall_row():
    table = score_tags([["B-Dish", "O", "B-Price"]], [["B-Dish", "O", "O"]]).table()
    assert [line.split()[0] for line in table.splitlines()[1:]] == ["Dish", "Price", "overall"]


def test_sentences_of_different_lengths_are_rejected_with_their_index():
    with pytest.raises(ValueError, match="sentence 1"):
        score_tags([["O"], ["O", "O"]], [["O"], ["O"]])
