"""Words -> model inputs shared by training and prediction: subword windows that fit the model, and padded batches.

Each word is represented by its FIRST subword; texts longer than the model's maximum become overlapping windows.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from backend.data.spans import replace_lone_surrogates


@dataclass
class Window:
    """A run of consecutive words of one word list, as one model input.

    ``input_ids`` holds the special tokens around the words' subwords; ``word_positions[k]`` is the position of
    the first subword of word ``first_word + k`` in ``input_ids``, or -1 when the tokenizer produced no subword
    for it (e.g. a lone control character).
    """

    sentence: int
    first_word: int
    input_ids: list[int]
    word_positions: list[int]

    @property
    def end_word(self) -> int:
        return self.first_word + len(self.word_positions)


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after a single sequence ([CLS] / [SEP] for BERT-style models)."""
    # Read off by tokenizing one word with and without special tokens (works for any tokenizer family).
    full = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    for at in range(len(full) - len(bare) + 1):
        if full[at:at + len(bare)] == bare:
            return full[:at], full[at + len(bare):]
    raise ValueError(f"cannot find where {type(tokenizer).__name__} puts its special tokens")


def word_windows(lengths: Sequence[int], budget: int) -> list[tuple[int, int]]:
    """Cut words with ``lengths`` subwords each into windows ``[start, end)`` of at most ``budget`` subwords.

    Consecutive windows overlap by half, so every span shorter than half a window lies whole in one window and
    every word sits near the middle of some window.

    >>> word_windows([1, 1, 1], budget=8)
    [(0, 3)]
    >>> word_windows([2, 2, 2, 2, 2], budget=4)
    [(0, 2), (1, 3), (2, 4), (3, 5)]
    """
    n = len(lengths)
    windows: list[tuple[int, int]] = []
    start = 0
    while start < n:
        end, used = start, 0
        while end < n and used + lengths[end] <= budget:
            used += lengths[end]
            end += 1
        end = max(end, start + 1)  # a word longer than the budget was truncated by the caller; never stall
        windows.append((start, end))
        if end >= n:
            break
        start = max(start + 1, start + (end - start) // 2)
    return windows


def encode_word_lists(tokenizer, word_lists: Sequence[Sequence[str]], max_length: int) -> list[Window]:
    """Tokenize word lists (one tokenizer call for all) and cut each into windows of at most ``max_length`` ids."""
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for words next to the special tokens")
    nonempty = [i for i, words in enumerate(word_lists) if len(words)]
    if not nonempty:
        return []
    encoded = tokenizer(
        [[replace_lone_surrogates(word) for word in word_lists[i]] for i in nonempty],
        is_split_into_words=True,
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,  # no "longer than the maximum" warning: long texts are cut into windows below
    )
    windows: list[Window] = []
    for row, sentence in enumerate(nonempty):
        pieces: list[list[int]] = [[] for _ in word_lists[sentence]]
        for token_id, word_id in zip(encoded["input_ids"][row], encoded.word_ids(row)):
            if word_id is not None:
                pieces[word_id].append(token_id)
        pieces = [p[:budget] for p in pieces]
        for start, end in word_windows([len(p) for p in pieces], budget):
            ids, positions = list(prefix), []
            for piece in pieces[start:end]:
                positions.append(len(ids) if piece else -1)
                ids.extend(piece)
            ids.extend(suffix)
            windows.append(Window(sentence, start, ids, positions))
    return windows


def centrality(window: Window, word: int, n_words: int) -> int:
    """How far ``word`` is from the nearest cut of ``window`` (a text boundary is not a cut: no context is lost)."""
    left = word - window.first_word if window.first_word > 0 else n_words
    right = window.end_word - 1 - word if window.end_word < n_words else n_words
    return min(left, right)


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: random.Random, chunk_batches: int = 50,
    max_tokens: int | None = None,
) -> list[list[int]]:
    """Shuffle indices, sort each chunk of ``chunk_batches`` batches by length, cut batches, shuffle the batches.

    Batches of similar lengths waste little compute on padding, while the order stays random from epoch to epoch.
    With ``max_tokens`` a batch also stops growing before its padded size (sentences x longest length) would pass
    it: batches of long texts hold fewer of them, which bounds the memory of one step.

    >>> batches = length_grouped_batches([3, 3, 3, 3, 9, 9], batch_size=4, rng=random.Random(0), max_tokens=12)
    >>> sorted(sorted(batch) for batch in batches)  # four 3s fill 12 tokens; two 9s would pad to 18
    [[0, 1, 2, 3], [4], [5]]
    """
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * chunk_batches
    batches: list[list[int]] = []
    for i in range(0, len(order), chunk):
        batch: list[int] = []
        for j in sorted(order[i:i + chunk], key=lambda j: lengths[j]):
            too_wide = max_tokens is not None and batch and (len(batch) + 1) * lengths[j] > max_tokens
            if len(batch) == batch_size or too_wide:
                batches.append(batch)
                batch = []
            batch.append(j)
        if batch:
            batches.append(batch)
    rng.shuffle(batches)
    return batches


def pad_batch(windows: Sequence[Window], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of windows padded on the right to the longest of them."""
    width = max(len(w.input_ids) for w in windows)
    # Rows built as lists and made a tensor once: a slice assignment per row is a tensor copy each (~30 us).
    ids = [w.input_ids + [pad_id] * (width - len(w.input_ids)) for w in windows]
    mask = [[1] * len(w.input_ids) + [0] * (width - len(w.input_ids)) for w in windows]
    return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def label_batch(windows: Sequence[Window], word_labels: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    """Training targets: each word's label id at its first subword, -100 (ignored by the loss) elsewhere."""
    rows = []
    for window, tags in zip(windows, word_labels):
        row = [-100] * width
        for k, position in enumerate(window.word_positions):
            if position >= 0:
                row[position] = tags[window.first_word + k]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)
