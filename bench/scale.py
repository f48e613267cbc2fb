"""Scale benchmark: projects of 1,000 to 100,000 tasks (10% annotated) in a real Label Studio, through the running
backend (tiny model): the training run's fetch and total time to a serving version, a second run after 100 new
annotations, the "nothing new" answer, promotion until PUBLISH_MAX_TASKS unlabelled tasks carry the version, the
backend's peak RSS over all its processes, the longest single request to Label Studio and one-task /predict p95
meanwhile. One JSON line per size.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_FILE, machine, print_result, read_examples  # noqa: E402
from load import label_config  # noqa: E402

from scripts.scenario import (backend_status, connect_backend, create_project, examples_to_tasks,  # noqa: E402
                              percentile, start_training, text_tasks, wait_until)
from scripts.stack import (EFFICIENT_PREDICTION_IMPORT, BackendServer, LabelStudioServer, free_port,  # noqa: E402
                           post_json)
from tests.e2e.conftest import TINY_TRAINING_ENV  # noqa: E402

LABELS = ["Amenity", "Cuisine", "Dish", "Hours", "Location", "Price", "Rating", "Restaurant_Name"]
IMPORT_BATCH = 1000


class ProcessTreeRss:
    """Samples the summed RSS of a process and all its descendants every ``interval_s``; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.25):
        self.pid, self.interval_s = pid, interval_s
        self.peak_mb, self.peak_processes = 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                children.setdefault(int(fields[1]), []).append(int(entry))
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children.get(pid, [])
        return found

    def _loop(self) -> None:
        while not self._stop.is_set():
            total, count = 0, 0
            for pid in self._tree():
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
                            count += 1
                except OSError:
                    pass
            if total / 1024 > self.peak_mb:
                self.peak_mb, self.peak_processes = total / 1024, count
            self._stop.wait(self.interval_s)

    def start(self) -> "ProcessTreeRss":
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {"peak_rss_mb": round(self.peak_mb, 1), "processes_at_peak": self.peak_processes}


class PredictProbe:
    """One-task /predict requests back to back (one client) until stopped; latencies in ms."""

    def __init__(self, backend_url: str, project_key: str, config: str, texts: list[str]):
        self.url, self.project, self.config, self.texts = backend_url, project_key, config, texts
        self.samples: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        i = 0
        while not self._stop.is_set():
            text = self.texts[i % len(self.texts)]
            i += 1
            body = {"tasks": [{"id": 10_000_000 + i, "data": {"text": text}}], "project": self.project,
                    "label_config": self.config}
            started = time.perf_counter()
            try:
                post_json(f"{self.url}/predict", body, timeout=30)
                self.samples.append((time.perf_counter() - started) * 1000)
            except Exception:  # noqa: BLE001 - counted
                self.errors += 1
                self._stop.wait(0.2)
            self._stop.wait(0.05)

    def start(self) -> "PredictProbe":
        self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        p95 = percentile(self.samples, 95)
        return {"requests": len(self.samples), "errors": self.errors,
                "p50_ms": round(percentile(self.samples, 50) or 0, 1), "p95_ms": round(p95 or 0, 1)}


def import_project(ls, title: str, config: str, size: int, examples: list) -> tuple[int, list[int], float]:
    """A project of ``size`` tasks, every 10th one annotated (from the MIT training sentences, cycled); returns
    its id, the unlabelled task ids and the import seconds."""
    project = create_project(ls, title, config)
    annotated = examples_to_tasks(examples, config)
    texts = [" ".join(example.tokens) for example in examples]
    started = time.monotonic()
    unlabelled: list[int] = []
    for start in range(0, size, IMPORT_BATCH):
        batch = [annotated[i % len(annotated)] if i % 10 == 0 else text_tasks([texts[i % len(texts)]])[0]
                 for i in range(start, min(size, start + IMPORT_BATCH))]
        answer = ls.projects.import_tasks(id=project, request=batch, return_task_ids=True)
        ids = [int(task_id) for task_id in answer.task_ids]
        unlabelled += [task_id for i, task_id in zip(range(start, start + len(batch)), ids) if i % 10]
    return project, unlabelled, time.monotonic() - started


def run_status(backend_url: str, project: int) -> dict:
    return backend_status(backend_url, project).raw


def press_and_wait(ls, ml_id: int, backend_url: str, project: int, limit_s: float, publish: bool) -> dict:
    """Start Training, then wait for the run to finish (and, with ``publish``, for its version to be announced);
    returns the run's summary with the seconds to a serving version and to the announcement."""
    before = run_status(backend_url, project)
    finished_before = int(before.get("runs_finished") or 0)
    version_before = before.get("current_version")
    started = time.monotonic()
    start_training(ls, ml_id)
    serving_s = None

    def finished() -> bool:
        nonlocal serving_s
        status = run_status(backend_url, project)
        if serving_s is None and status.get("current_version") not in (None, version_before):
            serving_s = time.monotonic() - started
        return int(status.get("runs_finished") or 0) > finished_before

    wait_until(finished, limit_s, f"the training run of project {project}", interval_s=0.2)
    done_s = time.monotonic() - started
    status = run_status(backend_url, project)
    summary = status.get("last_result") or {}
    if status.get("last_error"):
        raise RuntimeError(f"project {project}: the run failed: {status['last_error']}")
    return {"summary": summary, "run_s": round(done_s, 2), "serving_s": round(serving_s, 2) if serving_s else None,
            "status": status}


def count_with_version(client, project: int, version: str, limit: int) -> int:
    """Unlabelled tasks (lowest id first, the first ``limit``) that carry ``version``."""
    count = read = 0
    for task in client.unlabelled_tasks(project, version):
        count += version in task["model_versions"]
        read += 1
        if read >= limit:
            break
    return count


def measure(size: int, ls_server, backend, ls, examples, config: str, limit_s: float, cap: int) -> dict:
    from backend.shared.labelstudio import Credentials, LabelStudioClient

    print(f"[{size}] importing ...", file=sys.stderr, flush=True)
    project, unlabelled, import_s = import_project(ls, f"scale {size}", config, size, examples)
    ml_id = connect_backend(ls, project, backend.url)
    key = f"{project}.0"
    texts = [" ".join(example.tokens) for example in examples[:200]]
    rss = ProcessTreeRss(backend.managed.pid).start()
    probe = PredictProbe(backend.url, key, config, texts).start()
    try:
        print(f"[{size}] first run ...", file=sys.stderr, flush=True)
        first = press_and_wait(ls, ml_id, backend.url, project, limit_s, publish=True)
        version = first["summary"].get("version")
        published = first["summary"].get("published") or {}
        client = LabelStudioClient(Credentials(ls_server.url, ls_server.token), timeout=limit_s)
        carrying = count_with_version(client, project, version, cap) if version else 0

        print(f"[{size}] 100 new annotations ...", file=sys.stderr, flush=True)
        annotate = examples_to_tasks(examples[:100], config)
        for task_id, task in zip(unlabelled[-100:], annotate):
            ls.annotations.create(id=task_id, result=task["annotations"][0]["result"])
        print(f"[{size}] second run ...", file=sys.stderr, flush=True)
        second = press_and_wait(ls, ml_id, backend.url, project, limit_s, publish=True)
        print(f"[{size}] nothing new ...", file=sys.stderr, flush=True)
        third = press_and_wait(ls, ml_id, backend.url, project, limit_s, publish=False)
    finally:
        during = probe.stop()
        memory = rss.stop()

    def run(result: dict) -> dict:
        summary = result["summary"]
        return {"fetch": summary.get("fetch"), "fetch_s": (summary.get("fetch") or {}).get("seconds"),
                "run_s": result["run_s"], "to_serving_s": result["serving_s"], "version": summary.get("version"),
                "decision": (summary.get("decision") or "")[:80], "label_studio": summary.get("label_studio")}

    first_publish = first["status"].get("publishing") or {}
    longest = max((r["summary"].get("label_studio") or {}).get("longest_s") or 0 for r in (first, second, third))
    return {"bench": "scale", "tasks": size, "annotated": len(range(0, size, 10)), "import_s": round(import_s, 1),
            "first_run": run(first), "second_run_after_100_annotations": run(second),
            "nothing_new": {"answer_s": third["run_s"], "decision": (third["summary"].get("decision") or "")[:60],
                            "fetch": third["summary"].get("fetch")},
            "promotion": {"published": published.get("published"), "over_the_cap": published.get("over_the_cap"),
                          "tasks_carrying_version": carrying, "cap": cap,
                          **{key: published.get(key) for key in ("read_s", "predict_s", "write_s")},
                          "publishing_s": _seconds_between(first_publish.get("started_at"),
                                                           first_publish.get("finished_at")),
                          "second_run_published": (second["summary"].get("published") or {}).get("published")},
            "backend_memory": memory, "longest_label_studio_request_s": longest,
            "predict_one_task_meanwhile": during}


def _seconds_between(start: str | None, end: str | None) -> float | None:
    from datetime import datetime

    if not start or not end:
        return None
    return round((datetime.fromisoformat(end.replace("Z", "+00:00"))
                  - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds(), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,10000,50000,100000")
    parser.add_argument("--seconds-limit", type=float, default=900, help="the most one run may take")
    parser.add_argument("--cap", type=int, default=10_000, help="PUBLISH_MAX_TASKS")
    parser.add_argument("--epochs", default="1")
    parser.add_argument("--label-studio-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable of the Label Studio server (repeatable); "
                             f"{EFFICIENT_PREDICTION_IMPORT}=false measures Label Studio 1.23's default prediction "
                             "import, which recounts every task of the project per request (scripts/stack.py turns "
                             "its newer import on)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: the servers are stopped too (finally)
    from label_studio_sdk import LabelStudio

    from tests.helpers.tiny_model import build_tiny_model

    examples = read_examples(TRAIN_FILE)  # never the validation file
    config = label_config(LABELS)
    with tempfile.TemporaryDirectory(prefix="ner-bench-scale-") as tmp:
        work = Path(tmp)
        base = build_tiny_model(work / "tiny", [" ".join(e.tokens) for e in examples[:600]])
        ls_server = LabelStudioServer(data_dir=work / "label-studio", port=free_port())
        extra = dict(item.split("=", 1) for item in args.label_studio_env)
        environment = ls_server.environment
        ls_server.environment = lambda: {**environment(), **extra}
        backend = BackendServer(ls_server.url, ls_server.token, work / "models", str(base), extra_env={
            **TINY_TRAINING_ENV, "TRAIN_EPOCHS": args.epochs, "TRAIN_BATCH_SIZE": "32",
            "PUBLISH_MAX_TASKS": str(args.cap), "BASE_MODEL": str(base)})
        try:
            print("starting Label Studio ...", file=sys.stderr, flush=True)
            ls_server.start()
            backend.start()
            ls = LabelStudio(base_url=ls_server.url, api_key=ls_server.token, timeout=args.seconds_limit)
            for size in (int(s) for s in args.sizes.split(",")):
                result = measure(size, ls_server, backend, ls, examples, config, args.seconds_limit, args.cap)
                log = (backend.model_dir / "backend.log").read_text(errors="replace")
                ls_log = (work / "label-studio" / "label-studio.log").read_text(errors="replace")
                result["backend_log_errors"] = sum(("ERROR" in line or "Traceback" in line)
                                                   for line in log.splitlines())
                result["label_studio_log_errors"] = sum(("ERROR" in line and "/api/tasks" in line)
                                                        or "Timeout" in line for line in ls_log.splitlines())
                result["label_studio_env"] = {EFFICIENT_PREDICTION_IMPORT: ls_server.environment().get(
                    EFFICIENT_PREDICTION_IMPORT), **extra}
                result["machine"] = machine()
                print_result(result)
        finally:
            backend.stop()
            ls_server.stop()


if __name__ == "__main__":
    main()
