"""Prediction with one saved model version: raw texts -> labelled character spans with scores.

Batched over length-sorted windows under ``torch.inference_mode``; a word's label scores are those of its first
subword, and the words of a text get the most probable valid BIO sequence (backend/model/decoding.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from backend.model.base_model import window_limit
from backend.model.decoding import DECODINGS, BioConstraints, constrained_decode, word_by_word
from backend.model.device import Placement, inference_placement, set_threads
from backend.model.encoding import centrality, encode_word_lists, pad_batch
from backend.data.spans import OUTSIDE, Span, bio_to_spans, entity_types, split_words


@dataclass
class TextPrediction:
    """The spans found in one text and the text's score.

    Each span's score is the mean over its words of the probability of the word's label. The text's ``score`` is
    its ``task_score`` (1.0 for a text without words): a low score flags a text worth a human look (uncertainty
    sampling). ``shown_score`` is what Label Studio shows and sorts by: the same order, on a scale a person reads.
    """

    spans: list[Span]
    score: float

    @property
    def shown_score(self) -> float:
        """The score as Label Studio stores, shows and sorts it: ``readable_score`` of ``score``, to 6 significant
        digits (finer than the 4 of the raw product it replaces, so no two tasks that were apart tie)."""
        return float(f"{readable_score(self.score):.6g}")


@dataclass
class LabellingScore:
    """A given labelling of a text against the model's best one: the best tags, and per word the log-probability of
    the given tag (``given``) and of the best tag (``best``). ``log_ratio`` (>= 0 for the BIO decoding's optimum) is
    how much likelier the model finds its own labelling: 0 when they agree."""

    best_tags: list[str]
    given: list[float]
    best: list[float]
    rows: list[list[float]] | None = None  # per word, every label's log-probability (the model's label order)

    @property
    def log_ratio(self) -> float:
        return max(0.0, sum(self.best) - sum(self.given))

    @property
    def worst_word(self) -> float:
        """The largest log-ratio of one word (its best tag's log-probability less its given tag's; 0 without words):
        a labelling is as doubtful as its most doubtful word (cleanlab's "min" pooling of token label quality), so
        a long phrase the model reads a little otherwise word after word does not outrank one clearly wrong word."""
        return max([0.0, *(best - given for best, given in zip(self.best, self.given))])


def least_certain_word(confidences: Sequence[float]) -> float:
    """The lowest probability of a word's label: the model's least certain decision, entity or not."""
    return min(confidences, default=1.0)


def whole_labelling(confidences: Sequence[float]) -> float:
    """The product of the words' label probabilities: how likely the model finds its whole labelling of the text
    right (least confidence of the sequence, Culotta & McCallum 2005). Every word adds doubt, so of two texts
    equally hard per word the longer one, with more to teach, scores lower."""
    return math.prod(confidences)


TASK_SCORES = {"least-word": least_certain_word, "whole-labelling": whole_labelling}


def task_score(confidences: Sequence[float]) -> float:
    """The score the backend serves for a text: the whole labelling's probability. In the annotation loop
    (bench/README.md) the tasks it puts first taught the model more per annotation than the least certain word's
    or a random order."""
    return whole_labelling(confidences)


def readable_score(score: float) -> float:
    """``score`` (the whole labelling's probability) as 1 / (1 + surprisal), the surprisal being -ln(score): a
    monotone transform, so tasks keep exactly their order, on a scale a person reads. 1: no doubt; 0.5: the labelling
    has probability 1/e; 0.05: surprisal 19. Lower means more doubt. On the stand-in model trained on 500 sentences
    and on the tests' tiny model, 93% and 100% of unlabelled tasks fall between 0.05 and 0.95 (docs/publishing.md)."""
    return 0.0 if score <= 0 else 1.0 / (1.0 - math.log(min(score, 1.0)))


def doubt_score(confidences: Sequence[float]) -> float:
    """The number the backend serves for a text (before its 6-digit rounding): ``readable_score`` of ``task_score``."""
    return readable_score(task_score(confidences))


def _labels_of(config) -> list[str]:
    return [config.id2label[i] for i in range(len(config.id2label))]


def quantize_linear_layers(model):
    """Dynamic int8 quantization of the transformer's nn.Linear layers for CPUs: weights int8 with one scale per
    output channel, activations quantized with one scale per batch (so a text's scores can move slightly with the
    other texts of its batch). The classifier head stays fp32: it is small, and its logits decide the labels."""
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    # One weight scale per output row, not one per matrix: on the stand-in model's full-data version, F1 0.7985
    # against 0.7953 (fp32 0.8013).
    names = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and not name.startswith("classifier")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch announces a future move of its quantized tensors; still supported
        return quantize_dynamic(model.eval(), names, dtype=torch.qint8)


class Predictor:
    """Runs a token-classification model over words; build it with ``Predictor.load(model_dir)``."""

    def __init__(
        self,
        model,
        tokenizer,
        placement: Placement | None = None,
        model_dir: Path | None = None,
        batch_size: int = 64,
        max_length: int | None = None,
        decoding: str = "bio",
    ) -> None:
        if decoding not in DECODINGS:
            raise ValueError(f"decoding {decoding!r} is not one of {DECODINGS}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.placement = placement or Placement(torch.device("cpu"), "fp32", "default")
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.bio_labels = _labels_of(model.config)
        self.entity_labels = entity_types(self.bio_labels)
        self.batch_size = batch_size
        self.decoding = decoding
        self._constraints = BioConstraints(self.bio_labels)
        # The saved tokenizer's model_max_length is the window length of training (backend.model.train sets it). Some
        # tokenizers report a huge sentinel there; the position table is then the real limit (RoBERTa's 514 rows
        # hold 512 positions: backend/model/base_model.py).
        limits = [window_limit(model), getattr(tokenizer, "model_max_length", None)]
        self.max_length = max_length or min(512, *[n for n in limits if isinstance(n, int) and n > 0])

    @classmethod
    def load(
        cls, model_dir: str | Path, device: str = "auto", precision: str = "auto", threads: int | None = None,
        decoding: str = "bio",
    ) -> "Predictor":
        """Load a saved version (weights, tokenizer, label map) for inference on ``device``."""
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        set_threads(threads)
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} holds no config.json: not a saved model version")
        placement = inference_placement(device, precision)
        model = AutoModelForTokenClassification.from_pretrained(
            model_dir, attn_implementation=placement.inference_attention)  # None: the library's default
        model.to(placement.device, dtype=placement.dtype)
        if placement.precision == "int8":
            model = quantize_linear_layers(model)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        return cls(model, tokenizer, placement, model_dir, decoding=decoding)

    def count_subwords(self, texts: Sequence[str]) -> int:
        """About how many subwords ``texts`` make (special tokens included): the size of a forward pass."""
        if not texts:
            return 0
        return sum(len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=True)["input_ids"])

    def predict(self, texts: Sequence[str]) -> list[TextPrediction]:
        """One ``TextPrediction`` per text, in order; spans carry exact character offsets into their text."""
        word_lists = [split_words(text) for text in texts]
        tagged = self.predict_words([[w.text for w in words] for words in word_lists])
        results = []
        for text, words, (tags, confidences) in zip(texts, word_lists, tagged):
            spans = bio_to_spans(text, words, tags, confidences)
            results.append(TextPrediction(spans, task_score(confidences)))
        return results

    def predict_tags(self, token_lists: Sequence[Sequence[str]]) -> list[list[str]]:
        """The BIO tag of every word of every pre-split word list (as in a BIO or CoNLL file)."""
        return [tags for tags, _ in self.predict_words(token_lists)]

    def predict_words(self, token_lists: Sequence[Sequence[str]]) -> list[tuple[list[str], list[float]]]:
        """Tags and their probabilities for every word.

        A word seen by several overlapping windows takes its label scores from the window where it sits furthest
        from a cut (most context on both sides). A word the tokenizer drops entirely is tagged ``O``. With
        ``decoding="bio"`` the tags are the most probable valid BIO sequence (backend/model/decoding.py); with
        ``"argmax"`` each word takes its top label on its own, as ``pipeline(aggregation_strategy="first")``.
        """
        scores = self.word_log_probs(token_lists)
        chosen = constrained_decode(scores, self._constraints) if self.decoding == "bio" else word_by_word(scores)
        results = []
        for per_word, ids in zip(scores, chosen):
            probabilities = per_word.gather(1, torch.tensor(ids, dtype=torch.long)[:, None]).exp().squeeze(1)
            results.append(([self.bio_labels[i] for i in ids], probabilities.tolist()))
        return results

    def score_labellings(self, token_lists: Sequence[Sequence[str]],
                         tag_lists: Sequence[Sequence[str]]) -> list[LabellingScore]:
        """How likely the model finds each given labelling against its own best one (the review,
        backend/training/review.py): per word the log-probability of the given tag and of the best sequence's tag.
        A given tag the model does not know scores as impossible (the log-probability of an unseen word's label)."""
        scores = self.word_log_probs(token_lists)
        chosen = constrained_decode(scores, self._constraints) if self.decoding == "bio" else word_by_word(scores)
        index = {label: i for i, label in enumerate(self.bio_labels)}
        results = []
        for per_word, ids, tags in zip(scores, chosen, tag_lists):
            if len(tags) != len(per_word):
                raise ValueError(f"{len(tags)} tags for {len(per_word)} words")
            best = per_word.gather(1, torch.tensor(ids, dtype=torch.long)[:, None]).squeeze(1).tolist()
            given = [float(row[index[tag]]) if tag in index else -1e4 for row, tag in zip(per_word, tags)]
            results.append(LabellingScore([self.bio_labels[i] for i in ids], given, best, per_word.tolist()))
        return results

    def word_log_probs(self, token_lists: Sequence[Sequence[str]]) -> list[torch.Tensor]:
        """Per text, one row of label log-probabilities (``bio_labels`` order) per word, as ``predict_words``
        decodes them: from the window where the word sits furthest from a cut; a word without subwords is O."""
        windows = encode_word_lists(self.tokenizer, token_lists, self.max_length)
        outside = self.bio_labels.index(OUTSIDE) if OUTSIDE in self.bio_labels else 0
        unseen = torch.full((len(self.bio_labels),), -1e4)
        unseen[outside] = 0.0  # log-probability rows: a word without subwords is O for sure
        best: list[list[tuple[int, torch.Tensor]]] = [[(-1, unseen)] * len(words) for words in token_lists]
        order = sorted(range(len(windows)), key=lambda i: len(windows[i].input_ids))
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with torch.inference_mode():
            for at in range(0, len(order), self.batch_size):
                batch = [windows[i] for i in order[at:at + self.batch_size]]
                rows = self._forward(batch, pad_id)
                k = 0
                for window in batch:
                    n_words = len(token_lists[window.sentence])
                    for offset, position in enumerate(window.word_positions):
                        if position < 0:
                            continue
                        word = window.first_word + offset
                        here = centrality(window, word, n_words)
                        if here > best[window.sentence][word][0]:
                            best[window.sentence][word] = (here, rows[k])
                        k += 1
        return [torch.stack([row for _, row in per_word])
                if per_word else unseen.new_zeros((0, len(unseen))) for per_word in best]

    def _forward(self, batch, pad_id: int) -> torch.Tensor:
        """Label log-probabilities at the first subword of every word of the batch, in reading order."""
        ids, mask = pad_batch(batch, pad_id)
        rows = [r for r, window in enumerate(batch) for p in window.word_positions if p >= 0]
        columns = [p for window in batch for p in window.word_positions if p >= 0]
        device = self.placement.device
        logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        # Softmax only where a word starts: the other positions are never read.
        # dtype given: a batch whose words all vanished in tokenisation (zero-width spaces...) has no rows
        first = logits[torch.tensor(rows, dtype=torch.long, device=device),
                       torch.tensor(columns, dtype=torch.long, device=device)].float()
        return first.log_softmax(-1).cpu()
