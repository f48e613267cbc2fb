"""Fixtures of the end-to-end test: a real Label Studio server, a tiny base model and the ML backend, each started once.

In CI (env CI set) a missing piece FAILS the test with what to install; only a local run without it skips.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `scripts.*` and `tests.helpers.*` are imported from the repo root
    sys.path.insert(0, str(REPO_ROOT))

from scripts.stack import BackendServer, LabelStudioServer, StackError, label_studio_bin  # noqa: E402

# Small training knobs so that one run of the tiny model takes seconds on 2 shared cores.
TINY_TRAINING_ENV = {
    "TRAIN_EPOCHS": "20",
    "TRAIN_BATCH_SIZE": "16",
    "TRAIN_LR": "0.005",  # a randomly initialised model with frozen word embeddings learns only at a high rate
    "TRAIN_THREADS": "1",
    "TRAIN_SEED": "7",
    "TRAIN_EVERY_N": "0",  # only the Start Training button trains: the test counts runs exactly
    "HF_HUB_OFFLINE": "1",
}


_TIMINGS = pytest.StashKey[dict]()


def unavailable(reason: str) -> None:
    """Fail in CI (the e2e test must never be skipped there), skip in a local run."""
    if os.environ.get("CI"):
        pytest.fail(f"end-to-end test cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _running(server):
    """Yield ``server`` started (a failed start fails the test with the launcher's message); stop it afterwards."""
    try:
        server.start()
    except StackError as error:
        server.stop()
        pytest.fail(str(error), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    executable = label_studio_bin()
    if not executable.exists():
        unavailable(f"{executable} is missing: run `make setup` (creates .venv-ls) or set LABEL_STUDIO_BIN")
    yield from _running(LabelStudioServer(data_dir=tmp_path_factory.mktemp("label-studio")))


@pytest.fixture(scope="session")
def tiny_base_model_dir(tmp_path_factory) -> Path:
    from tests.helpers.synthetic import restaurant_examples
    from tests.helpers.tiny_model import build_tiny_model

    texts = [example.text for example in restaurant_examples(600, seed=11)]
    return build_tiny_model(tmp_path_factory.mktemp("tiny-base-model"), texts)


@pytest.fixture(scope="module")
def ml_backend(label_studio, tiny_base_model_dir, tmp_path_factory):
    server = BackendServer(
        label_studio_url=label_studio.url,
        api_key=label_studio.token,
        model_dir=tmp_path_factory.mktemp("models"),
        base_model=str(tiny_base_model_dir),
        extra_env=TINY_TRAINING_ENV,
    )
    yield from _running(server)


@pytest.fixture(scope="session")
def record_timings(request, tmp_path_factory):
    """Store the scenario's timings: shown in the terminal summary (also without -s) and written as JSON."""
    def record(timings: dict) -> Path:
        path = tmp_path_factory.mktemp("e2e-report") / "timings.json"
        path.write_text(json.dumps(timings, indent=1))
        request.config.stash[_TIMINGS] = {"file": str(path), **timings}
        return path

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    timings = config.stash.get(_TIMINGS, None)
    if timings:
        terminalreporter.section("end-to-end timings (Label Studio + ML backend)")
        for line in json.dumps(timings, indent=1).splitlines():
            terminalreporter.write_line(line)
