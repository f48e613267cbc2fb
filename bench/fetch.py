"""Fetching a project's annotated tasks for training from a real Label Studio: the filtered pages training reads
now (LabelStudioClient.annotated_tasks: pages of 500 annotated tasks that Label Studio filters) against the SDK's
unfiltered task pager used before the export, in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TRAIN_FILE, machine, print_result, read_examples  # noqa: E402

from scripts.scenario import create_project, examples_to_tasks, import_tasks, read_label_config, text_tasks  # noqa: E402
from scripts.stack import LabelStudioServer, free_port  # noqa: E402

PAGE_SIZE = 100


class CountingSdk:
    """label-studio-sdk's client, counting the HTTP requests it sends (httpx's request hook)."""

    def __init__(self, url: str, token: str):
        import httpx
        from label_studio_sdk import LabelStudio

        self.requests = 0
        client = httpx.Client(timeout=300, event_hooks={"request": [self._count]})
        self.sdk = LabelStudio(base_url=url, api_key=token, httpx_client=client)

    def _count(self, request) -> None:
        self.requests += 1


def timed(fetch, runs: int) -> dict:
    """Median seconds of ``fetch()`` over ``runs`` calls, with the task count and requests of one call."""
    seconds, requests, tasks = [], 0, 0
    for _ in range(runs):
        counting, started = fetch()
        seconds.append(time.perf_counter() - started)
        tasks, requests = counting
    return {"seconds": round(statistics.median(seconds), 2), "runs": [round(s, 2) for s in seconds],
            "annotated_tasks": tasks, "requests": requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotated", type=int, default=5000)
    parser.add_argument("--unlabelled", type=int, default=1000, help="tasks without annotations in the same project")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from backend.shared.labelstudio import Credentials, LabelStudioClient

    config = read_label_config()
    examples = read_examples(TRAIN_FILE, args.annotated)
    with tempfile.TemporaryDirectory() as work:
        ls = LabelStudioServer(data_dir=Path(work) / "label-studio", port=free_port())
        ls.start()
        try:
            sdk = ls.client()
            project = create_project(sdk, "fetch benchmark", config)
            started = time.perf_counter()
            import_tasks(sdk, project, examples_to_tasks(examples, config)
                         + text_tasks(e.text for e in read_examples(TRAIN_FILE, args.annotated + args.unlabelled)
                                      [args.annotated:]))
            import_s = time.perf_counter() - started

            def paged():
                counting = CountingSdk(ls.url, ls.token)
                client = LabelStudioClient(Credentials(ls.url, ls.token), sdk=counting.sdk)
                started = time.perf_counter()
                tasks = client.annotated_tasks(project)
                return (len(tasks), counting.requests), started

            def pager():
                counting = CountingSdk(ls.url, ls.token)
                started = time.perf_counter()
                tasks = [t for t in counting.sdk.tasks.list(project=project, fields="all", only_annotated=True,
                                                            page_size=PAGE_SIZE) if t.annotations]
                return (len(tasks), counting.requests), started

            ours, before = timed(paged, args.runs), timed(pager, args.runs)
        finally:
            ls.stop()
    print_result({
        "bench": "fetch", "annotated": args.annotated, "unlabelled": args.unlabelled, "import_s": round(import_s, 1),
        "filtered pages (now)": ours, "task pager (before)": before,
        "ratio": {"seconds": round(before["seconds"] / ours["seconds"], 2) if ours["seconds"] else None,
                  "requests": f"{ours['requests']} vs {before['requests']}"},
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
