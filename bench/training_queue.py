"""Training queue benchmark: N projects press Start Training at once (real Label Studio, tiny model), trained by
the one-process default with TRAIN_CONCURRENCY=1 and by two RQ workers on a real Redis, in one run: total wall
time, the most runs seen at once, runs lost, and the queue places /status showed.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_result  # noqa: E402

from scripts.scenario import (backend_status, connect_backend, create_project, examples_to_tasks,  # noqa: E402
                              import_tasks, read_label_config, start_training)
from scripts.stack import BackendServer, LabelStudioServer, RedisServer, TrainingWorker  # noqa: E402
from tests.e2e.conftest import TINY_TRAINING_ENV  # noqa: E402

POLL_S = 0.2


def run_case(name: str, ls_server: LabelStudioServer, backend: BackendServer, projects: int, tasks: int,
             limit_s: float) -> dict:
    from tests.helpers.synthetic import restaurant_examples

    ls = ls_server.client()
    config = read_label_config()
    ids = []
    for i in range(projects):
        project = create_project(ls, f"{name} {i + 1}", config)
        import_tasks(ls, project, examples_to_tasks(restaurant_examples(tasks, seed=100 + i), config))
        ids.append((project, connect_backend(ls, project, backend.url, title=f"NER {name} {i + 1}")))
    pressed = time.monotonic()
    for _, ml_id in ids:
        start_training(ls, ml_id)
    press_s = time.monotonic() - pressed
    started, ended, places = {}, {}, set()
    while len(ended) < projects and time.monotonic() - pressed < limit_s:
        now = time.monotonic() - pressed
        for project, _ in ids:
            status = backend_status(backend.url, project)
            stage = status.progress.get("stage")
            if stage == "queued":
                places.add(status.progress.get("message"))
            elif status.running and project not in started:
                started[project] = now
            if status.runs_finished >= 1 and project not in ended:
                ended[project] = now
                started.setdefault(project, now)
        time.sleep(POLL_S)
    errors = [backend_status(backend.url, p).last_error for p, _ in ids]
    at_once = max((sum(1 for p in ended if started[p] <= started[q] < ended[p]) for q in ended), default=0)
    return {"wall_s": round(max(ended.values(), default=float("nan")), 1), "presses_s": round(press_s, 2),
            "runs_finished": len(ended), "runs_lost": projects - len(ended), "most_at_once": at_once,
            "errors": [e for e in errors if e], "queue_places_seen": sorted(p for p in places if p),
            "runs": [{"project": p, "start_s": round(started[p], 1), "end_s": round(ended[p], 1)} for p in sorted(ended)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--projects", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=60, help="annotated tasks per project")
    parser.add_argument("--seconds-limit", type=float, default=900)
    args = parser.parse_args()
    from tests.helpers.synthetic import restaurant_examples
    from tests.helpers.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="ner-bench-queue-") as tmp:
        work = Path(tmp)
        base = build_tiny_model(work / "tiny", [e.text for e in restaurant_examples(600, seed=11)])
        ls_server = LabelStudioServer(data_dir=work / "label-studio")
        redis = RedisServer(work / "redis")
        processes = [ls_server, redis]
        try:
            print("starting Label Studio and Redis ...", file=sys.stderr)
            ls_server.start()
            redis.start()
            embedded = BackendServer(ls_server.url, ls_server.token, work / "embedded", str(base),
                                     extra_env={**TINY_TRAINING_ENV, "TRAIN_CONCURRENCY": "1"})
            processes.append(embedded)
            embedded.start()
            print(f"{args.projects} projects, one process, TRAIN_CONCURRENCY=1 ...", file=sys.stderr)
            one = run_case("embedded", ls_server, embedded, args.projects, args.tasks, args.seconds_limit)
            embedded.stop()
            queued = BackendServer(ls_server.url, ls_server.token, work / "queued", str(base),
                                   extra_env={**TINY_TRAINING_ENV, "TRAINING_QUEUE": redis.url})
            processes.append(queued)
            queued.start()
            for i in range(2):
                worker = TrainingWorker(redis.url, work / "queued", ls_server.url, ls_server.token,
                                        extra_env={**TINY_TRAINING_ENV, "BASE_MODEL": str(base),
                                                   "BACKEND_URL": queued.url},
                                        log_path=work / f"worker-{i}.log")
                processes.append(worker)
                worker.start()
            print(f"{args.projects} projects, RQ with 2 workers ...", file=sys.stderr)
            two = run_case("rq", ls_server, queued, args.projects, args.tasks, args.seconds_limit)
        finally:
            for process in reversed(processes):
                process.stop()
    print_result({"bench": "training_queue", "projects": args.projects, "annotated_tasks_each": args.tasks,
                  "model": "tiny BERT (tests/helpers/tiny_model.py), TRAIN_THREADS=1",
                  "one_process_train_concurrency_1": one, "rq_2_workers": two,
                  "wall_ratio": round(one["wall_s"] / two["wall_s"], 2) if two["wall_s"] else None,
                  "machine": machine()})


if __name__ == "__main__":
    main()
