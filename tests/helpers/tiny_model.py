"""A tiny BERT built from a config with random weights and a word-piece vocabulary from the caller's texts.

Tests and demos use it instead of a hub model: it saves like a real one and loads with ``from_pretrained(folder)``.
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_vocabulary(texts: Iterable[str], min_count: int = 2) -> list[str]:
    """Special tokens, every character alone and as a ``##`` continuation, and the words seen ``min_count`` times.

    Rarer words are left out on purpose, so they split into several pieces and tests exercise subwords.
    """
    counts: Counter = Counter()
    characters: set[str] = set()
    for text in texts:
        # The same pre-tokenization as BERT: runs of word characters, every punctuation mark alone.
        for word in re.findall(r"\w+|[^\w\s]", text.lower()):
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


if __name__ == "__main__":
    # `python -m tests.helpers.tiny_model OUT_DIR`: a tiny base model from the synthetic sentences, for demos.
    import sys

    from tests.helpers.synthetic import restaurant_examples

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-model")
    print(build_tiny_model(target, [e.text for e in restaurant_examples(500, seed=1)]))
