"""Shared fixtures: a tiny BERT base model (random weights, vocabulary from synthetic restaurant sentences) and a
version fine-tuned from it, each built once per test session; no hub access anywhere."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests import their helpers as `tests.helpers...` whether pytest was started as `pytest` or `python -m pytest`.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.helpers.synthetic import bio_labels, restaurant_examples  # noqa: E402
from tests.helpers.tiny_model import build_tiny_model  # noqa: E402

# A recipe that makes the randomly initialised tiny model learn in seconds: its word embeddings are random, so
# they must train (the default freezes them, which suits pretrained models), and a high learning rate.
# fp32 on every machine: tests that compare a saved model's scores with those of training need one arithmetic
# (on CPUs with bf16 units "auto" would train in bf32; its own test covers it).
TINY_RECIPE = dict(lr=3e-3, epochs=10, batch_size=16, threads=1, freeze_embeddings=False, precision="fp32")
CARVE = 0.1  # the share carved off to pick the best epoch, where a test asks for one (the default carves nothing)


@pytest.fixture(scope="session")
def synthetic_train():
    return restaurant_examples(300, seed=1)


@pytest.fixture(scope="session")
def synthetic_heldout():
    return restaurant_examples(80, seed=2)


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory, synthetic_train) -> Path:
    """Folder of an untrained tiny BERT + tokenizer, loadable with ``from_pretrained(folder)``."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-base"), [e.text for e in synthetic_train])


@pytest.fixture(scope="session")
def tiny_trained_model(tmp_path_factory, tiny_base_model, synthetic_train):
    """A version fine-tuned from ``tiny_base_model`` on the synthetic sentences, its best epoch picked on a 10%
    carve: (TrainingResult)."""
    from backend.model.config import TrainingConfig
    from backend.model.train import train_model

    config = TrainingConfig(base_model=str(tiny_base_model), **TINY_RECIPE, carve_fraction=CARVE)
    return train_model(synthetic_train, bio_labels(), config, tmp_path_factory.mktemp("tiny-trained"))
