"""Tiny models built from configs with random weights and vocabularies learnt from the caller's texts: a BERT
(``build_tiny_model``) and one of each architecture of the base-model matrix (``build_tiny_base``), each with the
kind of tokenizer its real checkpoints have (WordPiece, byte-level BPE, SentencePiece-style unigram).

Tests and demos use them instead of hub models: they save like real ones and load with ``from_pretrained(folder)``.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_vocabulary(texts: Iterable[str], min_count: int = 2, lowercase: bool = True) -> list[str]:
    """Special tokens, every character alone and as a ``##`` continuation, and the words seen ``min_count`` times
    (lower-cased first unless ``lowercase`` is False: the vocabulary of a cased model).

    Rarer words are left out on purpose, so they split into several pieces and tests exercise subwords.
    """
    counts: Counter = Counter()
    characters: set[str] = set()
    for text in texts:
        # The same pre-tokenization as BERT: runs of word characters, every punctuation mark alone.
        for word in re.findall(r"\w+|[^\w\s]", text.lower() if lowercase else text):
            counts[word] += 1
            characters.update(word)
    pieces = sorted(characters) + ["##" + c for c in sorted(characters)]
    words = sorted(w for w, n in counts.items() if n >= min_count and len(w) > 1)
    seen, vocabulary = set(), []
    for token in SPECIAL_TOKENS + pieces + words:
        if token not in seen:
            seen.add(token)
            vocabulary.append(token)
    return vocabulary


def build_tiny_model(out_dir: Path, texts: Iterable[str], max_length: int = 128, seed: int = 0) -> Path:
    """Save a 2-layer BERT (hidden 64) and its tokenizer in ``out_dir``; return ``out_dir``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocabulary = {token: i for i, token in enumerate(build_vocabulary(texts))}
    tokenizer = BertTokenizerFast(vocab=vocabulary, do_lower_case=True, model_max_length=max_length)
    tokenizer.save_pretrained(out_dir)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=max_length,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(out_dir)
    return out_dir

# --- the base-model matrix: one tiny model of each architecture a user may bring ---

# The architectures of the matrix, each as its real checkpoints come: bert-uncased / bert-cased / distilbert /
# electra with WordPiece, roberta and modernbert with byte-level BPE (no word-start marker on pre-split words unless
# asked: add_prefix_space False, as roberta-base and ModernBERT-base ship), xlm-roberta and deberta-v2 with a
# unigram SentencePiece-style vocabulary, and a multilingual-style cased DistilBERT that already has a 9-label
# CoNLL head (the tutorial's first example model is such a checkpoint).
ARCHITECTURES = ("bert-uncased", "bert-cased", "distilbert", "roberta", "xlm-roberta", "deberta-v2", "electra",
                 "modernbert", "distilbert-conll-head")
CONLL_LABELS = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"]


def _wordpiece_tokenizer(texts: list[str], lowercase: bool, max_length: int):
    from transformers import BertTokenizerFast

    vocabulary = {token: i for i, token in enumerate(build_vocabulary(texts, lowercase=lowercase))}
    return BertTokenizerFast(vocab=vocabulary, do_lower_case=lowercase, model_max_length=max_length)


def _byte_level_bpe(texts: list[str], special: list[str], vocab_size: int = 600):
    """A byte-level BPE learnt from ``texts`` (every byte is in its alphabet: no text is unknown to it)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def _unigram_vocabulary(texts: list[str], special: list[str], unk: str, vocab_size: int = 400) -> list[tuple]:
    """``(piece, log-probability)`` of a unigram model learnt from ``texts``, SentencePiece style (``▁`` marks a
    word start), special tokens first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=special, unk_token=unk,
                                      show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    learnt = json.loads(tokenizer.to_str())["model"]["vocab"]
    return [(piece, 0.0) for piece in special] + [(piece, score) for piece, score in learnt if piece not in special]


def _tokenizer(kind: str, texts: list[str], max_length: int):
    """The tokenizer of ``kind``, its class chosen as transformers' AutoTokenizer would for the real model."""
    from transformers import DebertaV2Tokenizer, PreTrainedTokenizerFast, RobertaTokenizer, XLMRobertaTokenizer

    if kind in ("bert-uncased", "distilbert", "electra"):
        return _wordpiece_tokenizer(texts, lowercase=True, max_length=max_length)
    if kind in ("bert-cased", "distilbert-conll-head"):
        return _wordpiece_tokenizer(texts, lowercase=False, max_length=max_length)
    if kind == "roberta":
        special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        model = json.loads(_byte_level_bpe(texts, special).to_str())["model"]
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
        return RobertaTokenizer(vocab=model["vocab"], merges=merges, model_max_length=max_length)
    if kind == "modernbert":  # ModernBERT-base ships a generic PreTrainedTokenizerFast over a byte-level BPE
        from tokenizers import processors

        special = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
        backend = _byte_level_bpe(texts, special)
        cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", cls_token="[CLS]",
                                       sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]",
                                       model_max_length=max_length)
    if kind == "xlm-roberta":
        special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        return XLMRobertaTokenizer(vocab=_unigram_vocabulary(texts, special, "<unk>"), model_max_length=max_length)
    if kind == "deberta-v2":
        special = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
        return DebertaV2Tokenizer(vocab=_unigram_vocabulary(texts, special, "[UNK]"), model_max_length=max_length)
    raise ValueError(f"unknown architecture {kind!r}; one of {', '.join(ARCHITECTURES)}")


def _model(kind: str, tokenizer, hidden: int, layers: int, max_positions: int):
    """A random model of ``kind`` as its checkpoints come: a masked-LM body (the hub's pretrained ones), or a token
    classifier with the CoNLL labels."""
    from transformers import (BertConfig, BertForMaskedLM, DebertaV2Config, DebertaV2ForMaskedLM, DistilBertConfig,
                              DistilBertForMaskedLM, DistilBertForTokenClassification, ElectraConfig,
                              ElectraForMaskedLM, ModernBertConfig, ModernBertForMaskedLM, RobertaConfig,
                              RobertaForMaskedLM, XLMRobertaConfig, XLMRobertaForMaskedLM)

    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    sizes = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=2 * hidden)
    if kind in ("bert-uncased", "bert-cased"):
        return BertForMaskedLM(BertConfig(**ids, **sizes, max_position_embeddings=max_positions))
    if kind in ("distilbert", "distilbert-conll-head"):
        config = DistilBertConfig(**ids, dim=hidden, n_layers=layers, n_heads=2, hidden_dim=2 * hidden,
                                  max_position_embeddings=max_positions)
        if kind == "distilbert":
            return DistilBertForMaskedLM(config)
        config.id2label = dict(enumerate(CONLL_LABELS))
        config.label2id = {label: i for i, label in enumerate(CONLL_LABELS)}
        return DistilBertForTokenClassification(config)
    if kind in ("roberta", "xlm-roberta"):
        # Positions count from the padding index + 1, as in roberta-base (514 rows for 512 positions).
        config_class, model_class = ((RobertaConfig, RobertaForMaskedLM) if kind == "roberta"
                                     else (XLMRobertaConfig, XLMRobertaForMaskedLM))
        return model_class(config_class(**ids, **sizes, max_position_embeddings=max_positions + ids["pad_token_id"] + 1,
                                        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id))
    if kind == "deberta-v2":  # as deberta-v3: relative positions only, no absolute position table
        return DebertaV2ForMaskedLM(DebertaV2Config(
            **ids, **sizes, max_position_embeddings=max_positions, relative_attention=True,
            position_biased_input=False, pos_att_type=["p2c", "c2p"], position_buckets=32, max_relative_positions=-1,
            norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0))
    if kind == "electra":  # as electra-small: embeddings narrower than the hidden size, projected up
        return ElectraForMaskedLM(ElectraConfig(**ids, **sizes, embedding_size=hidden // 2,
                                                max_position_embeddings=max_positions))
    if kind == "modernbert":  # rotary positions; layers alternate global and local (sliding window) attention
        return ModernBertForMaskedLM(ModernBertConfig(
            **ids, **sizes, max_position_embeddings=max_positions, global_attn_every_n_layers=2, local_attention=16,
            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
            cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id))
    raise ValueError(f"unknown architecture {kind!r}; one of {', '.join(ARCHITECTURES)}")


def build_tiny_base(kind: str, out_dir: Path, texts: Iterable[str], hidden: int = 32, layers: int = 2,
                    max_positions: int = 128, seed: int = 0) -> Path:
    """Save a tiny random model of architecture ``kind`` (one of ``ARCHITECTURES``) and its tokenizer, learnt from
    ``texts``, in ``out_dir``; return ``out_dir``. ``max_positions``: the positions its table covers."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = list(texts)
    tokenizer = _tokenizer(kind, texts, max_positions)
    tokenizer.save_pretrained(out_dir)
    torch.manual_seed(seed)
    _model(kind, tokenizer, hidden, layers, max_positions).save_pretrained(out_dir)
    return out_dir



if __name__ == "__main__":
    # `python -m tests.helpers.tiny_model OUT_DIR`: a tiny base model from the synthetic sentences, for demos.
    import sys

    from tests.helpers.synthetic import restaurant_examples

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-model")
    print(build_tiny_model(target, [e.text for e in restaurant_examples(500, seed=1)]))
