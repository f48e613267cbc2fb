#!/usr/bin/env bash
# GPU throughput of this project's training and prediction at DistilBERT size, on a CUDA machine with no network.
#
# Needs: this repository (run from its root), ../shared/data/mit_restaurant/{restauranttrain,restaurantvalid}.bio,
# Python with torch (CUDA build), transformers and accelerate (requirements.txt); beyond those only
# `safetensors`/`tokenizers` (installed with transformers). No hub access, no label-studio-sdk:
# the model is DistilBERT's architecture (6 layers, hidden 768, 66M parameters) built from a config with random
# weights, and its word-piece vocabulary is built from the training data (padded to DistilBERT's 30522 entries).
# Random weights make the F1 meaningless: this measures speed only.
#
# Usage: bash bench/gpu.sh [EPOCHS] [multi]   (default 3). Last output line: one JSON object.
# multi: one training on 1 GPU, then the same training as one process per GPU on all of them (TRAIN_PROCESSES,
# docs/deploy.md), both in this run: samples/s of each and their ratio (no prediction timing).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
EPOCHS="${1:-3}" MODE="${2:-one}" python - <<'PY'
import json, os, sys, tempfile, time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import BertTokenizerFast, DistilBertConfig, DistilBertModel

sys.path.insert(0, ".")
from backend.data.formats import read_bio  # imports nothing beyond the standard library and backend/
from backend.model.predict import Predictor
from backend.model.config import TrainingConfig
from backend.model.train import train_model
from tests.helpers.tiny_model import build_vocabulary

assert torch.cuda.is_available(), "no CUDA GPU visible to torch"
data = Path("..") / "shared" / "data" / "mit_restaurant"
train, valid = read_bio(data / "restauranttrain.bio"), read_bio(data / "restaurantvalid.bio")
labels = sorted({t[2:] for e in train for t in e.tags if t != "O"})
bio = ["O"] + [f"{p}-{label}" for label in labels for p in ("B", "I")]
scratch = Path(tempfile.mkdtemp())
base = scratch / "distilbert-random"
vocab = build_vocabulary([e.text for e in train], min_count=1)
vocab += [f"[unused{i}]" for i in range(30522 - len(vocab))]
tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True, model_max_length=512)
tokenizer.save_pretrained(base)
torch.manual_seed(0)
DistilBertModel(DistilBertConfig(vocab_size=len(vocab))).save_pretrained(base)

gpu = torch.cuda.get_device_name(0)
config = TrainingConfig(base_model=str(base), epochs=int(os.environ["EPOCHS"]), device="cuda", precision="bf16",
                        batch_size=32, early_stopping_patience=0)
if os.environ["MODE"] == "multi":
    gpus = torch.cuda.device_count()
    sides = {}
    for processes in dict.fromkeys((1, gpus)):  # the same recipe: 32 sentences a step, shared among the GPUs
        started = time.perf_counter()
        m = train_model(train, bio, replace(config, processes=processes), scratch / f"trained-{processes}").record()
        sides[f"{processes} GPU(s)"] = {"train_s": m["train_time_s"], "samples_per_s": m["samples_per_s"],
                                        "wall_s": round(time.perf_counter() - started, 1), "precision": m["precision"],
                                        "optimizer_steps": m["optimizer_steps"], "epochs": m["epochs_run"]}
    rates = [side["samples_per_s"] for side in sides.values()]
    print(json.dumps({"gpu": gpu, "gpus": gpus, "model": "DistilBERT-sized (6x768, random weights)",
                      "train_sentences": len(train), **sides, "speed_up": round(rates[-1] / rates[0], 2),
                      "versions": m["versions"]}))
    sys.exit(0)
result = train_model(train, bio, config, scratch / "trained")
m = result.record()

predictor = Predictor.load(result.model_dir, device="cuda", precision="auto")
predictor.batch_size = 128
texts = [e.text for e in valid] * 10  # 8150 texts: long enough to time a GPU
predictor.predict(texts[:256])
torch.cuda.synchronize()
started = time.perf_counter()
predictor.predict(texts)
torch.cuda.synchronize()
predict_s = time.perf_counter() - started
single = []
for text in texts[:200]:
    t = time.perf_counter(); predictor.predict([text]); torch.cuda.synchronize()
    single.append((time.perf_counter() - t) * 1000)
single.sort()
print(json.dumps({
    "gpu": gpu, "model": "DistilBERT-sized (6x768, random weights)",
    "train": {"epochs": m["epochs_run"], "train_s": m["train_time_s"], "samples_per_s": m["samples_per_s"],
              "precision": m["precision"], "train_sentences": m["train_size"]},
    "predict": {"sentences_per_s": round(len(texts) / predict_s, 1), "precision": predictor.placement.precision,
                "batch_size": predictor.batch_size, "single_p50_ms": round(single[len(single) // 2], 2)},
    "versions": m["versions"],
}))
PY
