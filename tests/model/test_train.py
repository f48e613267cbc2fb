"""Training: a tiny randomly initialised BERT really learns the synthetic restaurant sentences; the saved version
is self-contained; long texts are split into overlapping windows so no annotated word is lost."""
import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers import AutoConfig, AutoTokenizer

from backend.model.encoding import (Window, encode_word_lists, label_batch, length_grouped_batches, pad_batch,
                                    word_windows)
from backend.model.predict import Predictor
from backend.data.spans import Example, tokens_to_text
from backend.model.config import TrainingConfig
from backend.model.train import TrainingProgress, carve_validation, evaluate_model, planned_epochs, train_model
from tests.conftest import CARVE, TINY_RECIPE
from tests.helpers.synthetic import bio_labels, restaurant_examples


def test_trained_tiny_model_scores_well_above_chance_on_heldout_sentences(tiny_trained_model, tiny_base_model,
                                                                          synthetic_heldout, tmp_path):
    trained = evaluate_model(tiny_trained_model.model_dir, synthetic_heldout).overall.f1
    assert trained > 0.5
    # The same base model before training (random head) scores near nothing: the learning is real.
    untrained = train_model(restaurant_examples(20, seed=3), bio_labels(),
                            TrainingConfig(base_model=str(tiny_base_model), epochs=1, lr=1e-9, threads=2),
                            tmp_path / "untrained")
    assert evaluate_model(untrained.model_dir, synthetic_heldout).overall.f1 < 0.2 < trained


def test_saved_version_holds_weights_tokenizer_label_map_and_metrics(tiny_trained_model):
    folder = tiny_trained_model.model_dir
    assert (folder / "model.safetensors").is_file()
    config = AutoConfig.from_pretrained(folder)
    assert [config.id2label[i] for i in range(len(config.id2label))] == bio_labels()
    AutoTokenizer.from_pretrained(folder)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(tiny_trained_model.record()))
    assert set(metrics["selection_scores"]["overall"]) == {"precision", "recall", "f1", "support"}
    assert set(metrics["selection_scores"]["per_entity"]) <= {label[2:] for label in bio_labels() if label != "O"}
    assert metrics["train_size"] + metrics["validation_size"] == 300
    assert metrics["validation_size"] > 0
    for key in ("train_time_s", "samples_per_s", "best_epoch", "versions", "config", "device", "precision"):
        assert key in metrics
    assert metrics["versions"]["torch"] and metrics["versions"]["transformers"]
    assert 1 <= metrics["best_epoch"] <= metrics["epochs_run"]
    assert metrics["selection_scores"]["overall"]["f1"] == max(record["f1"] for record in metrics["history"])


def test_same_seed_gives_the_same_model(tiny_base_model, tmp_path):
    examples = restaurant_examples(40, seed=4)
    config = TrainingConfig(base_model=str(tiny_base_model), **{**TINY_RECIPE, "epochs": 1})
    first = train_model(examples, bio_labels(), config, tmp_path / "a")
    second = train_model(examples, bio_labels(), config, tmp_path / "b")
    assert (first.model_dir / "model.safetensors").read_bytes() == (second.model_dir / "model.safetensors").read_bytes()


def test_training_bounds_its_process_onednn_caches(tiny_base_model, tmp_path, monkeypatch):
    import os

    from backend.model.device import ONEDNN_CACHE_CAPACITY, ONEDNN_CACHE_VARIABLES

    for name in ONEDNN_CACHE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    config = TrainingConfig(base_model=str(tiny_base_model), **{**TINY_RECIPE, "epochs": 1})
    train_model(restaurant_examples(20, seed=4), bio_labels(), config, tmp_path / "m")
    assert [os.environ.get(name) for name in ONEDNN_CACHE_VARIABLES] == [str(ONEDNN_CACHE_CAPACITY)] * 2


@pytest.mark.parametrize("options", [{}, {"max_batch_tokens": 40}], ids=["plain", "token-capped-batches"])
def test_progress_reports_every_step_up_to_the_total(tiny_base_model, tmp_path, options):
    seen: list[TrainingProgress] = []
    config = TrainingConfig(base_model=str(tiny_base_model), **{**TINY_RECIPE, "epochs": 2, **options})
    result = train_model(restaurant_examples(40, seed=5), bio_labels(), config, tmp_path / "m", progress=seen.append)
    # The total is known before the first step (batches split by the token cap included), so progress ends at 100%.
    assert len({p.total_steps for p in seen}) == 1
    assert [p.step for p in seen] == list(range(1, seen[-1].total_steps + 1))
    assert result.optimizer_steps == seen[-1].total_steps
    assert {p.epoch for p in seen} == {1, 2} and seen[-1].elapsed_s > 0


def test_by_default_every_example_is_trained_on_and_the_last_epoch_kept(tiny_base_model, tmp_path):
    config = TrainingConfig(base_model=str(tiny_base_model), **{**TINY_RECIPE, "epochs": 3})
    result = train_model(restaurant_examples(40, seed=6), bio_labels(), config, tmp_path / "m")
    assert (result.train_size, result.validation_size) == (40, 0)
    assert (result.best_epoch, result.epochs_run) == (3, 3)
    assert result.selection_scores is None and "last epoch is kept" in result.scored_on


def test_given_validation_is_used_instead_of_a_carved_one(tiny_base_model, tmp_path):
    config = TrainingConfig(base_model=str(tiny_base_model), **{**TINY_RECIPE, "epochs": 1})
    result = train_model(restaurant_examples(30, seed=6), bio_labels(), config, tmp_path / "m",
                         validation=restaurant_examples(7, seed=7))
    assert (result.train_size, result.validation_size) == (30, 7)


def _without_entities(examples):
    return [Example(e.text, e.words, ["O"] * len(e.tags), source=e.source) for e in examples]


def test_a_validation_set_without_entities_keeps_the_last_epoch_instead_of_the_first(tiny_base_model, tmp_path):
    # Every epoch scores F1 0 on it, so ranking epochs by it would keep the first, barely trained one.
    config = TrainingConfig(base_model=str(tiny_base_model), **{**TINY_RECIPE, "epochs": 3})
    result = train_model(restaurant_examples(40, seed=6), bio_labels(), config, tmp_path / "m",
                         validation=_without_entities(restaurant_examples(7, seed=7)))
    assert (result.best_epoch, result.epochs_run) == (3, 3)
    assert result.selection_scores is None and result.validation_size == 0
    assert "no entities" in result.scored_on


def test_a_carved_validation_part_without_entities_goes_back_into_training(tiny_base_model, tmp_path):
    examples = restaurant_examples(60, seed=9)
    train, validation = carve_validation(examples, CARVE)
    assert train and validation
    # The carve is keyed by text, so the same texts are carved again, now without an entity among them.
    examples = train + _without_entities(validation)
    config = TrainingConfig(base_model=str(tiny_base_model), **{**TINY_RECIPE, "epochs": 2}, carve_fraction=CARVE)
    result = train_model(examples, bio_labels(), config, tmp_path / "m")
    assert (result.train_size, result.validation_size) == (60, 0)
    assert (result.best_epoch, result.epochs_run) == (2, 2)
    assert "carved validation part had no entities" in result.scored_on


def test_tags_outside_the_label_list_are_rejected_naming_the_example(tiny_base_model, tmp_path):
    text, words = tokens_to_text(["cheap", "thai"])
    bad = Example(text, words, ["O", "B-Cheese"], source="file.bio:3")
    with pytest.raises(ValueError, match="file.bio:3.*B-Cheese"):
        train_model([bad] * 4, bio_labels(), TrainingConfig(base_model=str(tiny_base_model), epochs=1), tmp_path / "m")


def test_small_data_gets_more_epochs_until_the_minimum_number_of_steps():
    config = TrainingConfig()
    assert planned_epochs(config, steps_per_epoch=200) == config.default_epochs
    assert planned_epochs(config, steps_per_epoch=10) * 10 >= config.min_steps
    assert planned_epochs(config, steps_per_epoch=1) == config.max_epochs
    assert planned_epochs(TrainingConfig(epochs=2), steps_per_epoch=1) == 2


def test_by_default_the_lowest_layer_is_fixed_on_large_data_only():
    from backend.model.train import default_frozen_layers

    config = TrainingConfig()
    assert config.frozen_layers is None
    assert default_frozen_layers(config, config.small_data_size - 1) == 0  # small data trains every layer
    assert default_frozen_layers(config, config.small_data_size) == 1
    assert default_frozen_layers(TrainingConfig(frozen_layers=0), 10_000) == 0  # a set value wins, 0 included
    assert default_frozen_layers(TrainingConfig(frozen_layers=3), 10) == 3


def test_frozen_layers_keep_their_base_weights_and_the_others_train(tiny_base_model, tmp_path):
    from safetensors.torch import load_file

    base = load_file(tiny_base_model / "model.safetensors")
    examples = restaurant_examples(40, seed=8)
    # The default on data as large as small_data_size (lowered here to 40 windows) fixes the lowest layer.
    cases = ((0, {"frozen_layers": 0}), (1, {"frozen_layers": 1}), (1, {"small_data_size": 40}))
    for case, (frozen, options) in enumerate(cases):
        config = TrainingConfig(base_model=str(tiny_base_model), **{**TINY_RECIPE, "epochs": 1, **options})
        result = train_model(examples, bio_labels(), config, tmp_path / str(case))
        assert result.frozen_layers == frozen
        trained = {name.removeprefix("bert."): weights  # the base is a plain BertModel, without the prefix
                   for name, weights in load_file(result.model_dir / "model.safetensors").items()}
        layer0 = [name for name in base if ".layer.0." in name]
        layer1 = [name for name in base if ".layer.1." in name and name.endswith("weight")]
        assert layer0 and layer1
        assert all(trained[name].equal(base[name]) for name in layer0) == bool(frozen)
        assert not any(trained[name].equal(base[name]) for name in layer1)


def test_bf32_training_runs_its_matrix_multiplies_in_bf16_and_restores_the_setting(tiny_base_model, tmp_path,
                                                                                     monkeypatch):
    # On this CPU without bf16 units PyTorch computes in fp32 anyway; what is checked is the switch and its scope.
    import torch

    from backend.model import device

    monkeypatch.setattr(device, "cpu_flags", lambda: {"amx_bf16"})
    before = torch.backends.mkldnn.matmul.fp32_precision
    during: set[str] = set()
    config = TrainingConfig(base_model=str(tiny_base_model), device="cpu", **{**TINY_RECIPE, "epochs": 1, "precision": "auto"})
    result = train_model(restaurant_examples(40, seed=6), bio_labels(), config, tmp_path / "m",
                         progress=lambda _: during.add(torch.backends.mkldnn.matmul.fp32_precision))
    assert during == {"bf16"}
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    assert result.precision == "bf32" and "bf16" in result.precision_reason


def test_a_saved_version_predicts_in_the_windows_it_was_trained_on(tiny_base_model, tmp_path):
    config = TrainingConfig(base_model=str(tiny_base_model), **{**TINY_RECIPE, "epochs": 1, "max_length": 24})
    result = train_model(restaurant_examples(40, seed=7), bio_labels(), config, tmp_path / "m")
    assert Predictor.load(result.model_dir).max_length == 24
    assert AutoTokenizer.from_pretrained(result.model_dir).model_max_length == 24


def test_validation_carve_is_deterministic_and_disjoint():
    examples = restaurant_examples(200, seed=8)
    train, validation = carve_validation(examples, 0.1)
    assert carve_validation(list(reversed(examples)), 0.1)[1] == list(reversed(validation))
    assert 5 < len(validation) < 40 and len(train) + len(validation) == 200
    assert not {e.text for e in train} & {e.text for e in validation}


def test_long_texts_become_overlapping_windows_that_keep_every_span_whole(tiny_base_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    long = [e for e in restaurant_examples(30, seed=9)]
    tokens = [t for e in long for t in e.tokens]
    tags = [t for e in long for t in e.tags]
    windows = encode_word_lists(tokenizer, [tokens], max_length=24)
    assert len(windows) > 3 and all(len(w.input_ids) <= 24 for w in windows)
    assert windows[0].first_word == 0 and windows[-1].end_word == len(tokens)
    covered = {i for w in windows for i in range(w.first_word, w.end_word)}
    assert covered == set(range(len(tokens)))
    # Every entity lies wholly inside at least one window.
    starts = [i for i, t in enumerate(tags) if t.startswith("B-")]
    for start in starts:
        end = start + 1
        while end < len(tags) and tags[end].startswith("I-"):
            end += 1
        assert any(w.first_word <= start and end <= w.end_word for w in windows), (start, end)


def test_word_windows_overlap_by_half_and_never_exceed_the_budget():
    rng = random.Random(3)
    lengths = [rng.randint(1, 4) for _ in range(100)]
    windows = word_windows(lengths, budget=16)
    assert all(sum(lengths[s:e]) <= 16 for s, e in windows)
    for (s1, e1), (s2, e2) in zip(windows, windows[1:]):
        assert s1 < s2 < e1  # consecutive windows overlap and move forward


def test_first_subword_of_each_word_carries_the_label(tiny_base_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base_model)
    # "sushiramen" is not in the vocabulary: it splits into several pieces, and only the first is marked.
    (window,) = encode_word_lists(tokenizer, [["cheap", "sushiramen", "food"]], max_length=32)
    pieces = tokenizer.convert_ids_to_tokens(window.input_ids)
    assert pieces[0] == "[CLS]" and pieces[-1] == "[SEP]"
    assert [pieces[p] for p in window.word_positions] == ["cheap", "sushi", "food"]
    assert window.word_positions == [1, 2, len(pieces) - 2]
    assert all(piece.startswith("##") for piece in pieces[3:-2])


def test_saved_weights_are_those_of_the_best_epoch(tiny_trained_model, synthetic_train):
    _, validation = carve_validation(synthetic_train, CARVE)
    saved = evaluate_model(Predictor.load(tiny_trained_model.model_dir, precision="fp32"), validation).overall.f1
    assert saved == pytest.approx(tiny_trained_model.selection_scores.overall.f1)


@given(st.lists(st.integers(1, 60), max_size=300), st.integers(1, 40), st.one_of(st.none(), st.integers(1, 400)))
def test_length_grouped_batches_cover_every_text_once_within_both_limits(lengths, batch_size, max_tokens):
    batches = length_grouped_batches(lengths, batch_size, random.Random(0), max_tokens=max_tokens)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert 1 <= len(batch) <= batch_size
        if max_tokens is not None and len(batch) > 1:  # one text longer than the cap still makes a batch
            assert len(batch) * max(lengths[i] for i in batch) <= max_tokens


@st.composite
def labelled_windows(draw):
    """Windows as encode_word_lists makes them: [CLS] subwords [SEP], a word's first subword at word_positions
    (-1 for a word without subwords), and each window's words' label ids."""
    windows, labels = [], []
    for sentence in range(draw(st.integers(1, 6))):
        pieces = draw(st.lists(st.integers(0, 3), max_size=12))  # subwords per word (0: dropped by the tokenizer)
        positions, at = [], 1
        for n in pieces:
            positions.append(at if n else -1)
            at += n
        ids = draw(st.lists(st.integers(5, 999), min_size=at + 1, max_size=at + 1))
        windows.append(Window(sentence, 0, ids, positions))
        labels.append(draw(st.lists(st.integers(0, 8), min_size=len(pieces), max_size=len(pieces))))
    return windows, labels


@given(labelled_windows())
def test_a_batch_pads_to_its_longest_window_and_labels_first_subwords_only(batch):
    windows, labels = batch
    ids, mask = pad_batch(windows, pad_id=0)
    targets = label_batch(windows, labels, ids.shape[1])
    assert ids.shape == mask.shape == targets.shape == (len(windows), max(len(w.input_ids) for w in windows))
    for row, (window, tags) in enumerate(zip(windows, labels)):
        n = len(window.input_ids)
        assert ids[row, :n].tolist() == window.input_ids and set(ids[row, n:].tolist()) <= {0}
        assert mask[row].tolist() == [1] * n + [0] * (ids.shape[1] - n)
        expected = [-100] * ids.shape[1]
        for position, tag in zip(window.word_positions, tags):
            if position >= 0:
                expected[position] = tag
        assert targets[row].tolist() == expected


def test_a_warm_start_from_a_saved_version_keeps_what_it_learned_head_included(tiny_trained_model, tmp_path,
                                                                              synthetic_heldout):
    # a "training" that cannot move the weights (lr 1e-9): a warm start from the version predicts as the version
    # does, so its head and body were loaded, not drawn anew (a new head scores near nothing: the test above)
    learned = evaluate_model(tiny_trained_model.model_dir, synthetic_heldout).overall.f1
    warm = train_model(restaurant_examples(20, seed=3), bio_labels(),
                       TrainingConfig(base_model=str(tiny_trained_model.model_dir), epochs=1, lr=1e-9, threads=2),
                       tmp_path / "warm")
    assert evaluate_model(warm.model_dir, synthetic_heldout).overall.f1 == pytest.approx(learned, abs=0.01)
    assert learned > 0.5
