"""A non-BERT base the whole way through the HTTP backend against a real Label Studio (issue 29): a tiny RoBERTa
(byte-level BPE, shipped without the word-start marker on pre-split words) is BASE_MODEL; Start Training reaches
the backend's /webhook, the run trains and promotes a version, and /predict answers with it: exact offsets on
awkward texts, the very spans the saved version predicts in-process (training, serving and publishing read the
same subwords), and the manifest says what the run did to fit the base.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from scripts.scenario import (backend_status, connect_backend, create_project, examples_to_tasks, import_tasks,
                              project_key, read_label_config, start_training, text_tasks, wait_until)
from scripts.stack import BackendServer, post_json
from tests.e2e.conftest import TINY_TRAINING_ENV, _running
from tests.helpers.awkward import AWKWARD_TEXTS

pytestmark = pytest.mark.e2e

N_ANNOTATED = 100
TRAINING_TIMEOUT_S = 300
# the unlabelled tasks: the awkward texts (the empty one goes to /predict only) and two ordinary ones
AWKWARD = [text for text in AWKWARD_TEXTS if text] + ["is there a cheap thai restaurant near me",
                                                      "does olive garden have outdoor seating"]


@dataclass
class Run:
    backend: BackendServer
    base: Path
    project_id: int
    project_key: str
    label_config: str
    version: str
    unlabelled: dict[int, str]
    ls: object


@pytest.fixture(scope="module")
def roberta_run(label_studio, tmp_path_factory) -> Run:
    from tests.helpers.synthetic import restaurant_examples
    from tests.helpers.tiny_model import build_tiny_base

    root = tmp_path_factory.mktemp("roberta-e2e")
    base = build_tiny_base("roberta", root / "base", [e.text for e in restaurant_examples(600, seed=11)])
    # a random tiny model learns only with its word embeddings trained (the default keeps them fixed)
    running = _running(BackendServer(label_studio.url, label_studio.token, root / "models", str(base),
                                     extra_env={**TINY_TRAINING_ENV, "TRAIN_FREEZE_EMBEDDINGS": "false"},
                                     log_path=root / "backend.log"))
    backend = next(running)
    try:
        ls = label_studio.client()
        label_config = read_label_config()
        project_id = create_project(ls, "E2E RoBERTa base", label_config)
        annotated = examples_to_tasks(restaurant_examples(N_ANNOTATED, seed=5), label_config)
        task_ids = import_tasks(ls, project_id, annotated + text_tasks(AWKWARD))
        unlabelled = dict(zip(task_ids[N_ANNOTATED:], AWKWARD))
        ml_id = connect_backend(ls, project_id, backend.url, title="NER backend (RoBERTa e2e)")
        start_training(ls, ml_id)  # Label Studio sends START_TRAINING to the backend's /webhook
        status = lambda: backend_status(backend.url, project_id)  # noqa: E731
        wait_until(lambda: status().runs_finished >= 1 and not status().running, TRAINING_TIMEOUT_S,
                   "the RoBERTa training run to finish")
        final = status()
        assert final.last_error is None and final.current_version, (final.raw, (root / "backend.log").read_text())
        yield Run(backend, base, project_id, project_key(ls, project_id), label_config, final.current_version,
                  unlabelled, ls)
    finally:
        running.close()  # stops the backend


def _predict(run: Run, texts: list[str]) -> list[dict]:
    body = {"tasks": [{"id": 20_000_000 + i, "data": {"text": text}, "annotations": [], "predictions": []}
                      for i, text in enumerate(texts)],
            "project": run.project_key, "label_config": run.label_config,
            "params": {"login": None, "password": None, "context": None}}
    return post_json(f"{run.backend.url}/predict", body, timeout=120.0)["results"]


def _version_dir(run: Run) -> Path:
    return run.backend.model_dir / str(run.project_id) / run.version


def test_start_training_through_the_webhook_trains_a_roberta_version_that_serves(roberta_run):
    manifest = json.loads((_version_dir(roberta_run) / "manifest.json").read_text())
    assert manifest["promoted"] and manifest["started_from"] == f"base model {roberta_run.base}"
    assert any("add_prefix_space" in note for note in manifest["settings"]["base_model_notes"])
    metrics = json.loads((_version_dir(roberta_run) / "metrics.json").read_text())
    assert metrics["tokenization"]["word_start_marker"] == "added" and metrics["head"] == "new"


def test_predict_answers_with_the_version_and_exact_offsets_on_awkward_texts(roberta_run):
    from backend.model.predict import Predictor

    texts = AWKWARD + [""]
    results = _predict(roberta_run, texts)
    assert len(results) == len(texts)
    # the version in this process, in the precision the server chooses on this machine
    local = Predictor.load(_version_dir(roberta_run), device="cpu").predict(texts)
    found, same = 0, 0
    for text, result, expected in zip(texts, results, local):
        assert result["model_version"] == roberta_run.version
        spans = [(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0]) for r in result["result"]]
        for r in result["result"]:
            assert text[r["value"]["start"]:r["value"]["end"]] == r["value"]["text"]
        same += spans == [(s.start, s.end, s.label) for s in expected.spans]
        found += len(spans)
    assert found > 0 and results[-1]["result"] == []
    # the server reads the subwords the run trained on: its spans are this process's (a pass's thread count may
    # differ, which can tip a near-tie of a tiny model's scores on one text at most)
    assert same >= len(texts) - 1


def test_the_promoted_roberta_version_is_published_with_exact_offsets(roberta_run):
    for task_id, text in roberta_run.unlabelled.items():
        predictions = [p for p in roberta_run.ls.predictions.list(task=task_id)
                       if p.model_version == roberta_run.version]
        assert len(predictions) == 1, task_id
        for region in predictions[0].result:
            value = region["value"]
            assert text[value["start"]:value["end"]] == value["text"]
