"""bench/annotation_loop.py --quick runs the loop end to end with the tiny model: rounds of picked, "corrected"
and retrained sentences for each strategy, one JSON line per round, a PNG plot."""
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_annotation_loop_writes_a_line_per_round_and_a_plot(tmp_path):
    plot = tmp_path / "loop.png"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "annotation_loop.py"), "--quick", "--plot", str(plot),
                           "--threads", "1", "--rebase-growth", "3"], capture_output=True, text=True, cwd=ROOT,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    rounds, summary = lines[:-1], lines[-1]
    for strategy in ("random", "doubt"):
        mine = [r for r in rounds if r["strategy"] == strategy]
        assert [r["annotations"] for r in mine] == [20, 40, 60]
        assert all(0 <= r["f1"] <= 1 and r["train_s"] > 0 for r in mine)
        assert mine[0]["work_saved"] is None and all(r["work_saved"] is not None for r in mine[1:])
        # warm starts, back to the base model once the annotations are 3 times those of its last run from it
        assert [r["started_from"] for r in mine] == ["base model", "warm start", "base model"]
    assert summary["bench"] == "annotation_loop" and set(summary["final"]) == {"random+warm", "doubt+warm"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def loop(monkeypatch):
    """bench/annotation_loop.py as a module."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import annotation_loop

    return annotation_loop


def _pool(names, width: int = 1):
    """One pool sentence per name: the name, then ``width - 1`` filler words, all tagged O."""
    from backend.data.spans import Example, tokens_to_text

    return [Example(*tokens_to_text([name] + ["x"] * (width - 1)), ["O"] * width) for name in names]


class _Doubts:
    """A stand-in serving model (unit test only): each pool sentence's word confidences are given."""

    def __init__(self, confidences):
        self.confidences = confidences

    def predict_words(self, token_lists):
        return [(["O"] * len(tokens), self.confidences[tokens[0]]) for tokens in token_lists]


def test_each_doubt_strategy_picks_the_lowest_scored_sentences_under_its_measure(loop):
    # Sentence 0: one very unsure word; sentence 1: many fairly unsure words; 2: sure; 3: already annotated.
    confidences = {"s0": [0.99, 0.3], "s1": [0.6] * 8, "s2": [0.99, 0.98], "s3": [0.1]}
    pool = _pool(confidences, width=2)
    doubts = _Doubts(confidences)
    pick = loop.pick
    rng = random.Random(0)
    assert pick("least-word", doubts, pool, {3}, 1, rng) == [0]
    assert pick("whole-labelling", doubts, pool, {3}, 1, rng) == [1]  # 0.6 ** 8 = 0.017 < 0.3
    assert pick("doubt", doubts, pool, {3}, 2, rng) == [1, 0]  # the served score: the whole labelling's
    assert sorted(pick("random", doubts, pool, {3}, 3, rng)) == [0, 1, 2]


def test_a_doubt_strategy_scores_a_random_sample_of_the_pool_or_all_of_it(loop):
    confidences = {f"s{i}": [0.5 + i / 100] for i in range(20)}  # s0 is the most doubtful sentence
    pool = _pool(confidences)
    doubts = _Doubts(confidences)
    pick = loop.pick
    for seed in range(5):
        assert pick("doubt", doubts, pool, {5}, 2, random.Random(seed), candidates=0) == [0, 1]  # the whole pool
    sampled = {tuple(pick("doubt", doubts, pool, {5}, 1, random.Random(seed), candidates=3)) for seed in range(30)}
    assert len(sampled) > 1 and all(i != 5 for (i,) in sampled)  # one of 3 random candidates, never an annotated one


def test_dropout_agreement_is_the_share_of_dropout_passes_that_agree_and_leaves_the_model_deterministic(
        loop, tiny_trained_model):
    import torch
    from backend.model.predict import Predictor
    from tests.helpers.synthetic import restaurant_examples

    predictor = Predictor.load(tiny_trained_model.model_dir, device="cpu", precision="fp32", threads=1)
    for module in predictor.model.modules():  # strong dropout: the passes must disagree somewhere
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.5
    words = [e.tokens for e in restaurant_examples(40, seed=7)]
    before = predictor.predict_tags(words)
    agreement = loop.dropout_agreement(predictor, words, passes=4)
    assert len(agreement) == len(words) and set(agreement) <= {0.25, 0.5, 0.75, 1.0}
    assert min(agreement) < 1.0
    assert not any(module.training for module in predictor.model.modules())
    assert predictor.predict_tags(words) == before  # dropout is off again: the served tags do not move


def test_mc_dropout_picks_the_least_agreed_sentences_and_breaks_ties_by_the_whole_labelling(loop, monkeypatch):
    confidences = {"s0": [0.9], "s1": [0.5], "s2": [0.99], "s3": [0.6]}
    agreement = {"s0": 0.4, "s1": 1.0, "s2": 0.4, "s3": 0.8}  # s1 is the least sure labelling, but every pass agrees
    pool = _pool(confidences)
    monkeypatch.setattr(loop, "dropout_agreement",
                        lambda predictor, token_lists: [agreement[tokens[0]] for tokens in token_lists])
    picked = loop.pick("mc-dropout", _Doubts(confidences), pool, set(), 3, random.Random(0))
    assert picked == [0, 2, 3]


def test_weighted_sample_draws_distinct_indices_by_weight_and_beta_sets_how_strongly(loop):
    weights = [8.0, 4.0, 2.0, 1.0, 0.5]
    for seed in range(20):
        drawn = loop.weighted_sample(weights, 1.0, 3, random.Random(seed))
        assert len(drawn) == len(set(drawn)) == 3 and set(drawn) <= set(range(5))
        assert loop.weighted_sample(weights, 50.0, 2, random.Random(seed)) == [0, 1]  # beta large: the heaviest
    firsts = Counter(loop.weighted_sample(weights, 1.0, 1, random.Random(seed))[0] for seed in range(2000))
    assert firsts[0] > firsts[1] > firsts[2] > firsts[4]  # chance ~ weight: 8/15.5 = 52% first, 0.5/15.5 = 3%
    assert 0.45 < firsts[0] / 2000 < 0.59
    even = Counter(loop.weighted_sample(weights, 0.0, 1, random.Random(seed))[0] for seed in range(2000))
    assert all(300 < even[i] < 500 for i in range(5))  # beta 0: every index alike


def test_doubt_sampled_favours_surprising_sentences_and_never_picks_an_annotated_one(loop):
    confidences = {"s0": [0.05], "s1": [0.5], "s2": [0.999], "s3": [0.01]}  # s3 is annotated
    pool = _pool(confidences)
    picks = Counter(loop.pick("doubt-sampled", _Doubts(confidences), pool, {3}, 1, random.Random(seed),
                              candidates=0, beta=1.0)[0] for seed in range(500))
    assert 3 not in picks and picks[0] > picks[1] > picks[2]  # surprisal 3.0 > 0.69 > 0.001


def test_serving_the_average_of_a_line_means_its_weights_and_keeps_the_rest_of_the_last_version(loop, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    dirs = []
    for k, value in enumerate((1.0, 2.0, 6.0)):
        folder = tmp_path / f"v{k}"
        folder.mkdir()
        save_file({"w": torch.full((2, 2), value), "steps": torch.tensor([k])}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"version": k}))
        dirs.append(folder)
    assert loop.averaged(dirs[-1:], tmp_path / "one") == dirs[-1]  # a single version serves as it is
    served = loop.averaged(dirs, tmp_path / "mean")
    weights = load_file(str(served / "model.safetensors"))
    assert torch.equal(weights["w"], torch.full((2, 2), 3.0)) and weights["steps"].tolist() == [2]
    assert json.loads((served / "config.json").read_text()) == {"version": 2}
    assert load_file(str(dirs[-1] / "model.safetensors"))["w"][0, 0] == 6.0  # the line's own weights stay
