"""Publishing benchmark: our publishing of a version's predictions into a real Label Studio (the training child's
``publish`` call, niced, in a spawned process) against Label Studio's own "Retrieve Predictions" action over the
same tasks through a running backend, and the one-task /predict latency of that backend while ours publishes.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import VALID_FILE, machine, print_result, read_examples, stand_in_model  # noqa: E402
from load import (PREDICT, Target, TextCycle, cached_quick_model, label_config, model_labels,  # noqa: E402
                  predict_outcome, prepare, summary, timed)

from scripts.scenario import (connect_backend, create_project, import_tasks, retrieve_predictions,  # noqa: E402
                              text_tasks, wait_until)
from scripts.stack import BackendServer, LabelStudioServer, free_port  # noqa: E402

VERSION = "v-bench"


def publish_child(ls_url: str, token: str, project: int, model_dir: str, store_root: str, answer) -> None:
    """What the training child does after a promotion: niced, then ``publish``; sends back its outcome and time."""
    os.nice(10)
    from backend.shared.labelstudio import Credentials, LabelStudioClient
    from backend.training.publishing import publish
    from backend.shared.settings import Settings
    from backend.shared.store import ModelStore

    store = ModelStore(store_root)
    store.project_dir(str(project)).mkdir(parents=True, exist_ok=True)
    client = LabelStudioClient(Credentials(ls_url, token))
    started = time.perf_counter()
    outcome = publish(Settings(model_dir=Path(store_root)), str(project), VERSION, Path(model_dir), client, store,
                      lambda *args, **kwargs: None)
    answer.send({"outcome": outcome, "publish_call_seconds": round(time.perf_counter() - started, 2)})


def prediction_versions(ls, project: int) -> tuple[int, Counter]:
    """(tasks with at least one prediction, tasks per model_version among their predictions), read via the SDK."""
    with_any, versions = 0, Counter()
    for task in ls.tasks.list(project=project, fields="all", page_size=100):
        found = {p["model_version"] if isinstance(p, dict) else p.model_version for p in task.predictions or []}
        with_any += bool(found)
        versions.update(found)
    return with_any, versions


def run_ours(ls_server: LabelStudioServer, ls, project: int, model: Path, limit_s: float, work: Path) -> dict:
    receive, send = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("spawn").Process(
        target=publish_child, args=(ls_server.url, ls_server.token, project, str(model), str(work / "store"), send))
    started = time.monotonic()
    child.start()
    child.join(limit_s)
    seconds = time.monotonic() - started
    if child.is_alive():
        child.kill()  # our own child, by its handle
        child.join()
        raise SystemExit(f"our publishing did not finish within --seconds-limit {limit_s:.0f} s")
    if child.exitcode != 0 or not receive.poll():
        raise SystemExit(f"the publishing child failed with exit code {child.exitcode}")
    answer = receive.recv()
    _, versions = prediction_versions(ls, project)
    return {"seconds": round(seconds, 2), "publish_call_seconds": answer["publish_call_seconds"],
            "tasks_with_version": versions[VERSION], "tasks_per_s": round(versions[VERSION] / seconds, 1),
            "outcome": answer["outcome"]}


def run_label_studio(ls, project: int, n: int, limit_s: float) -> dict:
    started = time.monotonic()
    retrieve_predictions(ls, project)  # synchronous in Label Studio 1.23 without a job queue; waited for anyway
    action_s = time.monotonic() - started
    wait_until(lambda: prediction_versions(ls, project)[0] >= n, limit_s, "Label Studio's predictions")
    seconds = time.monotonic() - started
    with_any, versions = prediction_versions(ls, project)
    return {"seconds": round(seconds, 2), "action_call_seconds": round(action_s, 2), "tasks_with_predictions": with_any,
            "tasks_per_s": round(with_any / seconds, 1), "model_versions": dict(versions)}


def predict_probe(target: Target, texts: list[str], stop: threading.Event, samples: list) -> None:
    """One client, one-task /predict requests back to back until ``stop``."""
    session, cycle = target.session(), TextCycle(texts)
    while not stop.is_set():
        first, batch = cycle.take(1)
        samples.append(timed(session, PREDICT, f"{target.url}/predict", predict_outcome(1),
                             body=target.predict_body(first, batch)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seconds-limit", type=float, default=600, help="the most each side may take")
    args = parser.parse_args()
    from label_studio_sdk import LabelStudio

    model = cached_quick_model().resolve()
    config = label_config(model_labels(model))
    sentences = [" ".join(example.tokens) for example in read_examples(VALID_FILE)]
    texts = [sentences[i % len(sentences)] for i in range(args.tasks)]
    with tempfile.TemporaryDirectory(prefix="ner-bench-publish-") as tmp:
        work = Path(tmp)
        ls_server = LabelStudioServer(data_dir=work / "label-studio", port=free_port())
        backend = BackendServer(ls_server.url, ls_server.token, work / "models", stand_in_model(), extra_env={
            "START_MODEL": str(model), "PUBLISH_PREDICTIONS": "false", "TRAIN_EVERY_N": "0"})
        try:
            print("starting Label Studio ...", file=sys.stderr)
            ls_server.start()
            backend.start()
            ls = LabelStudio(base_url=ls_server.url, api_key=ls_server.token, timeout=args.seconds_limit)
            ours_project, theirs_project = (create_project(ls, title, config) for title in ("ours", "retrieve"))
            for project in (ours_project, theirs_project):
                import_tasks(ls, project, text_tasks(texts))
            connect_backend(ls, theirs_project, backend.url)

            target = Target(backend.url, theirs_project, config, None)
            warmup = prepare(target, texts[0])
            stop, samples = threading.Event(), []
            probe = threading.Thread(target=predict_probe, args=(target, sentences[1:], stop, samples), daemon=True)
            print(f"publishing {args.tasks} tasks (ours) ...", file=sys.stderr)
            probe_started = time.monotonic()
            probe.start()
            try:
                ours = run_ours(ls_server, ls, ours_project, model, args.seconds_limit, work)
            finally:
                stop.set()
                probe.join()
            probe_s = time.monotonic() - probe_started
            print("Retrieve Predictions (Label Studio) ...", file=sys.stderr)
            theirs = run_label_studio(ls, theirs_project, args.tasks, args.seconds_limit)
        finally:
            backend.stop()
            ls_server.stop()

    during = {key: value for key, value in summary(samples, probe_s).items()
              if key in ("requests", "answered", "p50_ms", "p95_ms", "max_ms", "errors")}
    print_result({"bench": "publish", "tasks": args.tasks, "ours": ours, "label_studio_retrieve_predictions": theirs,
                  "ratio": round(theirs["seconds"] / ours["seconds"], 2),
                  "predict_while_publishing": {**during, **warmup}, "model": str(model), "machine": machine()})


if __name__ == "__main__":
    main()
