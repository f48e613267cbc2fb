"""Any base model a user brings trains and serves right (issue 29): a matrix of tiny random models built from
configs (no hub), one per architecture, each with the kind of tokenizer its real checkpoints ship, trained on one
shared small set. Each one trains, learns, predicts exact character offsets on awkward texts, keeps its fixed
layers bit-identical, and reads pre-split words as it reads running text (the byte-level BPE ones with the
word-start marker on every word); bad bases are refused with one clear line.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from backend.cli import main
from backend.data.spans import Example, split_words, tokens_to_text
from backend.model.base_model import (BaseModelError, check_base_model, load_token_classifier, load_tokenizer,
                                      reads_words_as_in_text)
from backend.model.config import TrainingConfig
from backend.model.encoding import encode_word_lists
from backend.model.predict import Predictor
from backend.model.train import TrainingResult, evaluate_model, train_model
from tests.helpers.awkward import AWKWARD_TEXTS as AWKWARD
from tests.helpers.synthetic import LABELS, bio_labels, restaurant_examples, write_bio
from tests.helpers.tiny_model import ARCHITECTURES, CONLL_LABELS, build_tiny_base

# Every base fine-tunes its embeddings (they are random here) with its lowest layer fixed: the layer must come out
# bit-identical while the model learns.
RECIPE = dict(lr=3e-3, epochs=8, batch_size=16, threads=1, freeze_embeddings=False, frozen_layers=1, precision="fp32",
              device="cpu")
BYTE_LEVEL = ("roberta", "modernbert")
UNCASED = ("bert-uncased", "distilbert", "electra")
LAYER = {kind: ("layers" if kind == "modernbert" else "layer") for kind in ARCHITECTURES}  # the test's own oracle



def _cased(example: Example, n: int) -> Example:
    """Every other sentence with a capital first word and restaurant names in title case: data a cased base can
    tell apart from an uncased one's."""
    if n % 2:
        return example
    tokens = [token.title() if tag.endswith("Restaurant_Name") or i == 0 else token
              for i, (token, tag) in enumerate(zip(example.tokens, example.tags))]
    text, words = tokens_to_text(tokens)
    return Example(text, words, list(example.tags))


TRAIN = [_cased(example, n) for n, example in enumerate(restaurant_examples(150, seed=1))]


@dataclass
class Trained:
    base: Path
    result: TrainingResult

    @property
    def version(self) -> Path:
        return self.result.model_dir


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """``matrix(kind)``: the tiny base of ``kind`` and the version trained from it on ``TRAIN``, built once."""
    built: dict[str, Trained] = {}

    def get(kind: str) -> Trained:
        if kind not in built:
            root = tmp_path_factory.mktemp(kind)
            base = build_tiny_base(kind, root / "base", [e.text for e in TRAIN])
            result = train_model(TRAIN, bio_labels(), TrainingConfig(base_model=str(base), **RECIPE), root / "version")
            built[kind] = Trained(base, result)
        return built[kind]

    return get


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_each_base_trains_and_learns_its_own_training_data(matrix, kind):
    trained = matrix(kind)
    assert trained.result.optimizer_steps > 0 and trained.result.frozen_layers == 1
    assert evaluate_model(trained.version, TRAIN).overall.f1 > 0.25  # a new head alone scores ~0
    assert [AutoConfig.from_pretrained(trained.version).id2label[i] for i in range(len(bio_labels()))] == bio_labels()


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_each_base_predicts_exact_character_offsets_on_awkward_texts(matrix, kind):
    predictor = Predictor.load(matrix(kind).version, device="cpu", precision="fp32", threads=1)
    texts = AWKWARD + [e.text for e in TRAIN[:30]]
    predictions = predictor.predict(texts)
    assert len(predictions) == len(texts)
    assert predictions[AWKWARD.index("")].spans == [] and predictions[AWKWARD.index("")].score == 1.0
    found = 0
    for text, prediction in zip(texts, predictions):
        starts = {w.start for w in split_words(text)}
        ends = {w.end for w in split_words(text)}
        end_of_last = 0
        for span in prediction.spans:
            assert 0 <= span.start < span.end <= len(text) and text[span.start:span.end] == span.text, (kind, text)
            assert span.start in starts and span.end in ends and span.start >= end_of_last, (kind, text)
            assert span.label in LABELS and 0 < span.score <= 1
            end_of_last = span.end
        found += len(prediction.spans)
        assert 0 <= prediction.score <= 1
    assert found > 0


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_each_base_keeps_its_fixed_layers_bit_identical_and_trains_the_rest(matrix, kind):
    trained = matrix(kind)
    base, version = _weights(trained.base), _weights(trained.version)
    layer0 = [name for name in base if f".{LAYER[kind]}.0." in name]
    layer1 = [name for name in base if f".{LAYER[kind]}.1." in name and name.endswith("weight")]
    assert layer0 and layer1 and set(layer0) <= set(version)
    assert all(torch.equal(version[name], base[name]) for name in layer0), kind
    assert not any(torch.equal(version[name], base[name]) for name in layer1), kind


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_each_base_keeps_its_embedding_block_fixed_when_asked(tmp_path, matrix, kind):
    base = matrix(kind).base
    config = TrainingConfig(base_model=str(base), **{**RECIPE, "epochs": 1, "freeze_embeddings": True})
    result = train_model(TRAIN[:40], bio_labels(), config, tmp_path / "m")
    before, after = _weights(base), _weights(result.model_dir)
    # the embedding block: everything before the first layer (ELECTRA's projection to the hidden size included)
    block = [name for name in before if ".embeddings." in name or "embeddings_project" in name]
    fixed = block + [name for name in before if f".{LAYER[kind]}.0." in name]
    assert block and all(torch.equal(after[name], before[name]) for name in fixed), kind
    assert result.notes == matrix(kind).result.notes  # the fixed embedding block needs no note


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_training_and_the_saved_version_read_words_with_the_same_subwords(matrix, kind):
    trained = matrix(kind)
    training_tokenizer, _ = load_tokenizer(str(trained.base))
    saved = Predictor.load(trained.version, device="cpu", precision="fp32").tokenizer
    word_lists = [e.tokens for e in TRAIN[:40]] + [[w.text for w in split_words(text)] for text in AWKWARD]
    assert encode_word_lists(training_tokenizer, word_lists, 128) == encode_word_lists(saved, word_lists, 128)
    assert reads_words_as_in_text(saved), kind


@pytest.mark.parametrize("kind", BYTE_LEVEL)
def test_byte_level_bases_carry_the_word_start_marker_on_every_word(matrix, kind):
    trained = matrix(kind)
    words = ["good", "thai", "food", "Olive", "Garden", "tonight"]
    # as shipped, the tokenizer reads a pre-split word as the middle of the one before it
    raw = AutoTokenizer.from_pretrained(trained.base)
    (window,) = encode_word_lists(raw, [words], 64)
    assert not any(raw.convert_ids_to_tokens(window.input_ids)[p].startswith("Ġ") for p in window.word_positions)
    saved = AutoTokenizer.from_pretrained(trained.version)
    (window,) = encode_word_lists(saved, [words + ["北京", "🍕"]], 64)
    pieces = saved.convert_ids_to_tokens(window.input_ids)
    assert all(pieces[p].startswith("Ġ") for p in window.word_positions), pieces
    assert trained.result.tokenization["word_start_marker"] == "added"
    assert any("add_prefix_space" in note for note in trained.result.notes)


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_cased_bases_keep_case_and_uncased_ones_lower_case_as_their_tokenizer_says(matrix, kind):
    trained = matrix(kind)
    saved = AutoTokenizer.from_pretrained(trained.version)
    same = saved("Thai", add_special_tokens=False)["input_ids"] == saved("thai", add_special_tokens=False)["input_ids"]
    assert same == (kind in UNCASED) == trained.result.tokenization["lowercase"], kind


def test_a_head_of_other_labels_is_replaced_and_the_run_says_so(matrix):
    trained = matrix("distilbert-conll-head")
    assert trained.result.head == "replaced"
    assert "9: O, B-PER" in trained.result.head_note and "17 labels" in trained.result.head_note
    assert trained.result.notes == [trained.result.head_note]
    assert all(matrix(kind).result.head == "new" for kind in ("bert-uncased", "roberta", "modernbert"))


def test_a_head_of_other_labels_of_the_same_size_is_drawn_again(matrix):
    # four entity types make 9 BIO labels, as CoNLL's: the sizes fit, the labels do not
    labels = ["O"] + [f"{p}-{t}" for t in ("Cuisine", "Dish", "Price", "Location") for p in ("B", "I")]
    base = str(matrix("distilbert-conll-head").base)
    own = _weights(base)["classifier.weight"]
    torch.manual_seed(0)
    model, head = load_token_classifier(base, check_base_model(base), labels)
    assert head.outcome == "replaced" and model.classifier.weight.shape == own.shape
    assert not torch.equal(model.classifier.weight.detach(), own) and not model.classifier.bias.any()
    assert model.classifier.weight.std().item() == pytest.approx(0.02, rel=0.5)  # the model's own init


def test_a_head_that_predicts_exactly_the_projects_labels_is_kept(matrix, tmp_path):
    base = str(matrix("distilbert-conll-head").base)
    model, head = load_token_classifier(base, check_base_model(base), CONLL_LABELS)
    assert head.outcome == "kept" and "warm start" in head.note
    assert torch.equal(model.classifier.weight.detach(), _weights(base)["classifier.weight"])


def test_a_position_table_shorter_than_max_length_gets_windows_that_fit(tmp_path, caplog):
    # RoBERTa counts positions from its padding index + 1: 34 rows hold 32 positions
    base = build_tiny_base("roberta", tmp_path / "base", [e.text for e in TRAIN], max_positions=32)
    config = TrainingConfig(base_model=str(base), **{**RECIPE, "epochs": 1, "max_length": 128})
    long_examples = [Example(*tokens_to_text(sum((e.tokens for e in TRAIN[i:i + 6]), [])),
                             sum((e.tags for e in TRAIN[i:i + 6]), [])) for i in range(0, 60, 6)]
    with caplog.at_level(logging.INFO, logger="backend.model"):
        result = train_model(long_examples, bio_labels(), config, tmp_path / "m")
    assert result.window_length == 32 and result.train_windows > len(long_examples)
    assert any("max_length 128" in note and "32 positions" in note for note in result.notes)
    assert "windows of 32 subwords" in caplog.text
    predictor = Predictor.load(result.model_dir, device="cpu", precision="fp32")
    assert predictor.max_length == 32
    text = " ".join(e.text for e in TRAIN[:12])
    assert len(predictor.predict([text])) == 1  # no index error past the table


def test_a_knob_that_cannot_apply_to_an_architecture_is_said_not_ignored(tmp_path, caplog):
    # ALBERT shares one layer across its depth: there is no lowest layer to keep fixed
    from transformers import AlbertConfig, AlbertModel

    texts = [e.text for e in TRAIN]
    bert = build_tiny_base("bert-uncased", tmp_path / "bert", texts)
    albert = tmp_path / "albert"
    AutoTokenizer.from_pretrained(bert).save_pretrained(albert)
    AlbertModel(AlbertConfig(vocab_size=len(AutoTokenizer.from_pretrained(bert)), embedding_size=16, hidden_size=32,
                             num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             max_position_embeddings=128)).save_pretrained(albert)
    config = TrainingConfig(base_model=str(albert), **{**RECIPE, "epochs": 1, "freeze_embeddings": True})
    with caplog.at_level(logging.INFO, logger="backend.model"):
        result = train_model(TRAIN[:20], bio_labels(), config, tmp_path / "m")
    assert result.frozen_layers == 0
    assert any(note.startswith("frozen_layers 1: no stack of transformer layers") for note in result.notes)
    assert any(note.startswith("freeze_embeddings:") for note in result.notes)
    assert "frozen_layers 1: no stack" in caplog.text and any(r.levelno == logging.WARNING for r in caplog.records)


def test_more_fixed_layers_than_the_base_has_fixes_them_all_and_says_so(matrix, tmp_path):
    config = TrainingConfig(base_model=str(matrix("modernbert").base), **{**RECIPE, "epochs": 1, "frozen_layers": 5})
    result = train_model(TRAIN[:20], bio_labels(), config, tmp_path / "m")
    assert result.frozen_layers == 2
    assert any("frozen_layers 5: the model has 2 transformer layers" in note for note in result.notes)


def _bad_bases(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Folders a user might give as the base model, and what the error line must say of each."""
    from transformers import BartConfig, BertConfig, ByT5Tokenizer

    empty = tmp_path / "weights-only"
    empty.mkdir()
    (empty / "model.safetensors").write_bytes(b"")
    bart = tmp_path / "bart"
    BartConfig(vocab_size=100, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
               decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16).save_pretrained(bart)
    slow = tmp_path / "slow-tokenizer"
    ByT5Tokenizer().save_pretrained(slow)  # a Python-only tokenizer: no word ids
    BertConfig(vocab_size=384, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32).save_pretrained(slow)
    return {"no config": (empty, "holds no config.json"),
            "no token-classification head": (bart, "'bart' model, for which transformers has no token-classification"),
            "slow tokenizer": (slow, "ByT5Tokenizer) is a slow, Python-only one")}


def test_bad_bases_get_one_clear_error_line(tmp_path, capsys):
    data = tmp_path / "train.bio"
    write_bio(TRAIN[:10], data)
    for case, (folder, says) in _bad_bases(tmp_path).items():
        with pytest.raises(BaseModelError, match="base model"):
            train_model(TRAIN[:10], bio_labels(), TrainingConfig(base_model=str(folder), **RECIPE), tmp_path / "x")
        assert main(["train", "--data", str(data), "--base-model", str(folder), "--out", str(tmp_path / case)]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
        assert line.startswith(f"error: base model {folder}") and says in line, (case, line)
        assert not (tmp_path / case).exists()


def test_the_command_line_shows_what_training_did_to_fit_the_base(matrix, tmp_path, capsys):
    data = tmp_path / "train.bio"
    write_bio(TRAIN[:20], data)
    base = matrix("distilbert-conll-head").base
    assert main(["train", "--data", str(data), "--base-model", str(base), "--out", str(tmp_path / "m"),
                 "--epochs", "1", "--threads", "1", "--precision", "fp32", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "note: base model: its token-classification head of other labels (9: O, B-PER" in err


def test_a_training_run_records_in_the_manifest_what_it_did_to_fit_the_base(matrix, tmp_path):
    # the service's run from BASE_MODEL = a checkpoint with a CoNLL head: its manifest says the head was replaced
    from backend.model.config import RecipeOverrides
    from backend.shared.settings import Settings
    from backend.shared.store import ModelStore
    from backend.training.training_run import train_project
    from tests.helpers.service_fakes import FakeLabelStudio, annotated_task

    base = matrix("distilbert-conll-head").base
    texts = ["cheap thai pizza", "sushi is cheap", "thai sushi near me", "a cheap pizza place", "pizza tonight"] * 4
    client = FakeLabelStudio([annotated_task(i + 1, text) for i, text in enumerate(texts)])
    settings = Settings(model_dir=tmp_path / "models", base_model=str(base), report_to_label_studio=False,
                        publish_predictions=False, training=RecipeOverrides.of(**{**RECIPE, "epochs": 1}))
    store = ModelStore(settings.model_dir)
    summary = train_project(settings, "3", client, store)
    manifest = store.manifest("3", summary["version"])
    assert manifest.started_from.startswith(f"base model {base}; its token-classification head of other labels (9:")
    assert manifest.started_from == summary["started_from"]
    assert manifest.settings["base_model_notes"] == [manifest.started_from.split("; ", 1)[1]]
