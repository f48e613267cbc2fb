"""Word labels from per-word label scores: the best tag sequence that is valid BIO.

Taking each word's top label on its own can produce sequences such as ``O I-Dish`` or ``B-Dish I-Price``, which
cut one entity into fragments. Here every ``I-x`` must follow ``B-x`` or ``I-x``; among the sequences that obey
this, the one with the highest summed log-probability is chosen (Viterbi). When the word-by-word choice is
already valid it is that optimum, so the result only differs where the word-by-word choice breaks an entity.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # torch is imported where it is used, so the CLI can read DECODINGS without loading it
    import torch

DECODINGS = ("bio", "argmax")  # the best valid BIO sequence / each word's top label (the pipeline's rule)
_FORBIDDEN = -1e9  # added to the score of a forbidden transition: never chosen while an allowed one exists


class BioConstraints:
    """Which labels may open a sentence (``may_start``) and follow which (``may_follow[prev, cur]``), as tensors
    and lists, with the score penalties the decoder adds: built once per label list (per loaded model).

    ``I-x`` may only follow ``B-x`` or ``I-x`` and may not open a sentence. Labels of any other form (``O``,
    ``B-x``, or a scheme this does not know) are unconstrained, and so is ``I-x`` when there is no ``B-x``.

    >>> rules = BioConstraints(["O", "B-Dish", "I-Dish"])
    >>> rules.start_ok, rules.follow_ok
    ([True, True, False], [[True, True, False], [True, True, True], [True, True, True]])
    """

    def __init__(self, labels: Sequence[str]) -> None:
        import torch

        n = len(labels)
        self.may_start = torch.ones(n, dtype=torch.bool)
        self.may_follow = torch.ones(n, n, dtype=torch.bool)
        for cur, tag in enumerate(labels):
            if not tag.startswith("I-") or f"B-{tag[2:]}" not in labels:
                continue
            self.may_start[cur] = False
            self.may_follow[:, cur] = torch.tensor([prev in (f"B-{tag[2:]}", tag) for prev in labels])
        self.start_ok, self.follow_ok = self.may_start.tolist(), self.may_follow.tolist()
        self.start_penalty = torch.where(self.may_start, 0.0, _FORBIDDEN)
        # [current, previous]: the decoder's reduction over the previous label runs along contiguous memory.
        self.step_penalty = torch.where(self.may_follow, 0.0, _FORBIDDEN).T.contiguous()

    def allows(self, ids: Sequence[int]) -> bool:
        return not ids or (self.start_ok[ids[0]] and all(self.follow_ok[a][b] for a, b in zip(ids, ids[1:])))


def word_by_word(log_probs: Sequence["torch.Tensor"]) -> list[list[int]]:
    """Each word's top label on its own (the rule of ``pipeline(aggregation_strategy="first")``)."""
    return [lp.argmax(dim=1).tolist() if len(lp) else [] for lp in log_probs]


def constrained_decode(log_probs: Sequence["torch.Tensor"], rules: BioConstraints, chunk: int = 256) -> list[list[int]]:
    """The best allowed label ids for each sentence; ``log_probs[s]`` has one row of label scores per word.

    A sentence whose word-by-word top labels already form an allowed sequence keeps them (they are the optimum);
    the others are decoded together, ``chunk`` at a time, padded to the longest: a padded step keeps the path as
    it is, so a short sentence ends where its words end.
    """
    import torch

    results = word_by_word(log_probs)
    broken = sorted((s for s, ids in enumerate(results) if not rules.allows(ids)), key=lambda s: len(log_probs[s]))
    stay = torch.arange(rules.may_start.shape[0])
    for at in range(0, len(broken), chunk):
        members = broken[at:at + chunk]
        lengths = [len(log_probs[s]) for s in members]
        emissions = torch.nn.utils.rnn.pad_sequence([log_probs[s].float() for s in members], batch_first=True)
        score = emissions[:, 0] + rules.start_penalty
        back = []
        for t in range(1, emissions.shape[1]):
            best, previous = (score[:, None, :] + rules.step_penalty).max(dim=2)
            active = torch.tensor([t < n for n in lengths])[:, None]
            score = torch.where(active, best + emissions[:, t], score)
            back.append(torch.where(active, previous, stay))
        label = score.argmax(dim=1)
        path = [label]
        for pointers in reversed(back):
            label = pointers.gather(1, label[:, None]).squeeze(1)
            path.append(label)
        rows = torch.stack(path[::-1], dim=1).tolist()
        for s, row, n in zip(members, rows, lengths):
            results[s] = row[:n]
    return results
