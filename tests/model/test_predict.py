"""Prediction: with word-by-word decoding the same entities as transformers' pipeline(aggregation_strategy="first");
with the default BIO decoding the same wherever that is a valid BIO sequence and never a fragment elsewhere; exact
character offsets on any text, windows for long texts, per-span and per-text scores."""
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

from backend.data.spans import entity_types
from backend.model.predict import TASK_SCORES, Predictor, TextPrediction, least_certain_word, whole_labelling
from backend.data.spans import repair_bio, split_words
from tests.helpers.synthetic import LABELS, restaurant_examples


@pytest.fixture(scope="module")
def predictor(tiny_trained_model):
    return Predictor.load(tiny_trained_model.model_dir, device="cpu", precision="fp32", threads=1)


def _is_valid_bio(tags):
    return repair_bio(tags) == list(tags)  # IOB2 already: nothing to repair


def test_argmax_predictions_match_the_transformers_pipeline_with_first_aggregation(tiny_trained_model):
    folder = tiny_trained_model.model_dir
    predictor = Predictor.load(folder, device="cpu", precision="fp32", threads=1, decoding="argmax")
    reference = pipeline("ner", model=AutoModelForTokenClassification.from_pretrained(folder),
                         tokenizer=AutoTokenizer.from_pretrained(folder), aggregation_strategy="first", device="cpu")
    # Held-out sentences plus unseen words (split into subwords), all lowercase and space-separated.
    texts = [e.text for e in restaurant_examples(40, seed=11)]
    texts += ["is there a cheap sushiramen place near me", "find olive garden downtown for breakfast tonight"]
    ours = predictor.predict(texts)
    compared = 0
    for text, prediction in zip(texts, ours):
        entities = reference(text)
        expected = [(e["start"], e["end"], e["entity_group"]) for e in entities]
        assert [(s.start, s.end, s.label) for s in prediction.spans] == expected, text
        expected_scores = [float(e["score"]) for e in entities]
        assert [s.score for s in prediction.spans] == pytest.approx(expected_scores, abs=1e-4)
        compared += len(expected)
    assert compared > 20  # the model found entities: the comparison is not vacuous


def test_bio_decoding_changes_only_sentences_whose_word_by_word_tags_are_invalid(predictor, tiny_trained_model):
    argmax = Predictor.load(tiny_trained_model.model_dir, device="cpu", precision="fp32", threads=1,
                            decoding="argmax")
    sentences = [e.tokens for e in restaurant_examples(60, seed=12)]
    sentences += [["cheap", "sushiramen", "olive", "garden", "downtown", "tonight", "near", "me"] * 3]
    plain, constrained = argmax.predict_words(sentences), predictor.predict_words(sentences)
    for (plain_tags, plain_p), (tags, p) in zip(plain, constrained):
        assert _is_valid_bio(tags)
        if _is_valid_bio(plain_tags):
            assert tags == plain_tags and p == pytest.approx(plain_p)


def test_span_offsets_are_exact_on_irregular_text(predictor):
    texts = ["  Cheap   THAI food,\tnear me!! ", "joe's pizza: $10-$15\nopen late", "café près d'ici 🍕 sushi"]
    for text, prediction in zip(texts, predictor.predict(texts)):
        for span in prediction.spans:
            assert text[span.start:span.end] == span.text and span.label in LABELS


def test_one_prediction_per_text_in_order_and_empty_texts_have_no_spans(predictor):
    texts = ["", "is mcdonalds cheap", "   ", "find thai food near me"]
    results = predictor.predict(texts)
    assert len(results) == 4 and all(isinstance(r, TextPrediction) for r in results)
    assert results[0] == TextPrediction([], 1.0) and results[2] == TextPrediction([], 1.0)
    alone = predictor.predict([texts[3]])[0]
    assert [(s.start, s.end, s.label) for s in alone.spans] == [(s.start, s.end, s.label) for s in results[3].spans]


def test_scores_are_probabilities_and_the_text_score_is_the_probability_of_its_whole_labelling(predictor):
    text = "show me highly rated korean barbecue places with live music"
    (prediction,) = predictor.predict([text])
    (tags, confidences), = predictor.predict_words([[w.text for w in split_words(text)]])
    assert prediction.spans and all(0 < s.score <= 1 for s in prediction.spans)
    assert prediction.score == pytest.approx(math.prod(confidences))
    assert prediction.shown_score == pytest.approx(1 / (1 - math.log(prediction.score)), rel=1e-5)


def test_the_shown_score_reads_as_one_over_one_plus_the_surprisal_and_keeps_tiny_scores_apart():
    assert TextPrediction([], math.exp(-1)).shown_score == 0.5 and TextPrediction([], 1.0).shown_score == 1.0
    assert TextPrediction([], 0.000012345).shown_score > TextPrediction([], 0.00001234).shown_score
    assert TextPrediction([], 0.0).shown_score == 0.0


@given(st.lists(st.floats(1e-12, 1.0), min_size=2, max_size=40))
def test_the_shown_score_keeps_exactly_the_order_of_the_raw_score_apart_to_its_4_significant_digits(scores):
    # the raw product was stored to 4 significant digits: tasks apart there stay apart, in the same order
    raw = sorted({float(f"{s:.4g}") for s in scores})
    shown = [TextPrediction([], s).shown_score for s in raw]
    assert shown == sorted(shown) and len(set(shown)) == len(shown)


@given(st.lists(st.floats(0.01, 1.0), max_size=30), st.floats(0.01, 0.99))
def test_the_doubt_measures_are_probabilities_and_every_uncertain_word_adds_doubt_to_the_whole(confidences, extra):
    for measure in TASK_SCORES.values():
        assert 0.0 <= measure(confidences) <= 1.0 and measure([]) == 1.0
    assert least_certain_word(confidences) == min(confidences, default=1.0)
    assert whole_labelling(confidences) == pytest.approx(math.prod(confidences))
    # One more word the model is unsure of: the whole labelling is less likely right; the least word may not move.
    assert whole_labelling(confidences + [extra]) < whole_labelling(confidences)
    assert whole_labelling(confidences) <= least_certain_word(confidences) + 1e-12


def test_texts_longer_than_the_model_maximum_are_predicted_to_the_end(tiny_trained_model):
    short = Predictor.load(tiny_trained_model.model_dir, device="cpu", precision="fp32")
    short.max_length = 16
    sentence = "is there a cheap thai restaurant near me"
    text = " ".join([sentence] * 12)
    (prediction,) = short.predict([text])
    spans_per_copy = [(s.start - s.start % (len(sentence) + 1), s.label) for s in prediction.spans]
    last_copy_start = (len(sentence) + 1) * 11
    assert any(start == last_copy_start for start, _ in spans_per_copy)
    (unwindowed,) = Predictor.load(tiny_trained_model.model_dir, device="cpu", precision="fp32").predict([sentence])
    first_copy = [(s.start, s.end, s.label) for s in prediction.spans if s.end <= len(sentence)]
    assert first_copy == [(s.start, s.end, s.label) for s in unwindowed.spans]


def test_predict_tags_gives_one_tag_per_given_word(predictor):
    token_lists = [["cheap", "thai", "food"], [], ["a"] * 5]
    assert [len(tags) for tags in predictor.predict_tags(token_lists)] == [3, 0, 5]


def test_predictor_knows_its_labels_from_the_saved_label_map(predictor, tiny_trained_model):
    assert predictor.model_dir == tiny_trained_model.model_dir
    assert predictor.bio_labels[0] == "O" and predictor.entity_labels == list(LABELS)
    assert entity_types(["O", "B-Dish", "I-Dish", "B-Price"]) == ["Dish", "Price"]


def test_bf16_prediction_agrees_with_fp32_on_almost_every_word(tiny_trained_model, predictor):
    bf16 = Predictor.load(tiny_trained_model.model_dir, device="cpu", precision="bf16")
    token_lists = [e.tokens for e in restaurant_examples(40, seed=12)]
    pairs = [(a, b) for x, y in zip(predictor.predict_tags(token_lists), bf16.predict_tags(token_lists))
             for a, b in zip(x, y)]
    assert sum(a == b for a, b in pairs) / len(pairs) > 0.97


def test_the_cpu_predictor_runs_plain_attention_with_the_same_results_as_the_fused_kernel(tiny_trained_model,
                                                                                          predictor):
    assert predictor.model.config._attn_implementation == "eager"
    fused = AutoModelForTokenClassification.from_pretrained(tiny_trained_model.model_dir, attn_implementation="sdpa")
    reference = Predictor(fused, AutoTokenizer.from_pretrained(tiny_trained_model.model_dir))
    token_lists = [e.tokens for e in restaurant_examples(40, seed=14)]
    for (tags, p), (expected_tags, expected_p) in zip(predictor.predict_words(token_lists),
                                                      reference.predict_words(token_lists)):
        assert tags == expected_tags and p == pytest.approx(expected_p, abs=1e-5)


def test_loading_a_folder_without_a_model_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved model"):
        Predictor.load(tmp_path)


def test_int8_prediction_is_an_opt_in_that_still_agrees_on_most_words(tiny_trained_model, predictor):
    int8 = Predictor.load(tiny_trained_model.model_dir, device="cpu", precision="int8")
    assert int8.placement.precision == "int8" and predictor.placement.precision == "fp32"
    token_lists = [e.tokens for e in restaurant_examples(40, seed=13)]
    pairs = [(a, b) for x, y in zip(predictor.predict_tags(token_lists), int8.predict_tags(token_lists))
             for a, b in zip(x, y)]
    assert sum(a == b for a, b in pairs) / len(pairs) > 0.9


def test_a_lone_surrogate_in_a_text_does_not_take_its_batch_down(predictor):
    texts = ["cheap \ud800 thai food", "italian food"]
    first, second = predictor.predict(texts)
    assert second.spans == predictor.predict(["italian food"])[0].spans
    for span in first.spans:
        assert texts[0][span.start:span.end] == span.text


def test_a_labelling_is_scored_against_the_models_best_one(predictor):
    # the review's score (backend/training/review.py): 0 for the model's own labelling, the summed log-ratio of the
    # words it reads otherwise for another; the per-word figures are the log-probabilities predict_words decodes
    words = "cheap thai food near me".split()
    (best_tags, confidences), = predictor.predict_words([words])
    (own,) = predictor.score_labellings([words], [best_tags])
    assert own.best_tags == best_tags and own.log_ratio == 0.0
    assert [round(math.exp(b), 5) for b in own.best] == [round(c, 5) for c in confidences]
    changed = list(best_tags)
    changed[1] = "B-Dish" if best_tags[1] != "B-Dish" else "B-Price"
    (other,) = predictor.score_labellings([words], [changed])
    assert other.log_ratio == pytest.approx(other.best[1] - other.given[1], abs=1e-4) and other.log_ratio > 0
    with pytest.raises(ValueError, match="4 tags for 5 words"):
        predictor.score_labellings([words], [best_tags[:4]])


def test_a_labelling_is_as_doubtful_as_its_most_doubtful_word():
    from backend.model.predict import LabellingScore

    one_wrong_word = LabellingScore(["O", "B-Dish"], given=[-0.1, -6.0], best=[-0.1, -0.2])
    a_long_vague_phrase = LabellingScore(["B-Dish"] * 6, given=[-1.5] * 6, best=[-0.5] * 6)
    assert one_wrong_word.worst_word == pytest.approx(5.8) and a_long_vague_phrase.worst_word == pytest.approx(1.0)
    assert a_long_vague_phrase.log_ratio > one_wrong_word.log_ratio  # the whole sequences rank them the other way
    assert LabellingScore([], [], []).worst_word == 0.0
