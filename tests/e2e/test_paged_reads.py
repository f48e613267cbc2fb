"""Against a real Label Studio: with a client timeout that a whole-project request cannot meet, the paged reads
that training, publishing and the exporters make still finish the job.

The timeout is measured, not guessed: the whole JSON export of a project of a few thousand tasks is timed first
(a generous limit), and the client then gets a third of that per request. A page of 100 tasks is a small part
of the export's work, so it fits even on a busy machine; a page that does not fit is retried (the client's
back-off), which is part of what this shows.
"""
from __future__ import annotations

import json
import time

import pytest

from scripts.scenario import create_project, examples_to_tasks, import_tasks, read_label_config, text_tasks

pytestmark = pytest.mark.e2e

N_TASKS = 3000  # 10% annotated; the import takes ~10 s, the export a few seconds on a 2-core machine
PAGE_SIZE = 100


@pytest.fixture(scope="module")
def big_project(label_studio):
    from tests.helpers.synthetic import restaurant_examples

    ls = label_studio.client()
    config = read_label_config()
    project = create_project(ls, "paged reads", config)
    examples = restaurant_examples(N_TASKS // 10, seed=5)
    annotated = examples_to_tasks(examples, config)
    texts = [example.text for example in restaurant_examples(N_TASKS, seed=6)]
    tasks = [annotated[i // 10] if i % 10 == 0 else text_tasks([texts[i]])[0] for i in range(N_TASKS)]
    import_tasks(ls, project, tasks)
    return project, config


def _export_seconds(label_studio, project: int, timeout: float) -> float:
    from label_studio_sdk import LabelStudio

    sdk = LabelStudio(base_url=label_studio.url, api_key=label_studio.token, timeout=timeout)
    started = time.monotonic()
    chunks = sdk.projects.exports.download_sync(id=project, export_type="JSON", download_all_tasks=True)
    assert len(json.loads(b"".join(chunks))) == N_TASKS
    return time.monotonic() - started


def test_a_whole_project_request_times_out_where_the_paged_reads_finish(label_studio, big_project):
    import httpx

    from backend.shared.labelstudio import Credentials, LabelStudioClient

    project, _ = big_project
    whole_s = min(_export_seconds(label_studio, project, 120.0) for _ in range(2))
    timeout = max(0.3, whole_s / 3)
    with pytest.raises(httpx.TimeoutException):
        _export_seconds(label_studio, project, timeout)

    client = LabelStudioClient(Credentials(label_studio.url, label_studio.token), timeout=timeout,
                               page_size=PAGE_SIZE, retry_delays_s=(0.5, 1.0, 2.0))
    annotated = client.annotated_tasks(project)
    assert len(annotated) == N_TASKS // 10 and all(task["annotations"] for task in annotated)
    exported = client.export_project(project)  # what `exporters convert --url ... --project` reads
    assert exported.label_config.strip() == big_project[1].strip()  # Label Studio drops the final newline
    assert [t["id"] for t in exported.tasks] == [t["id"] for t in annotated]
    unlabelled = list(client.unlabelled_tasks(project, "v1"))
    assert len(unlabelled) == N_TASKS - N_TASKS // 10
    assert all(task["data"].get("text") and task["model_versions"] == [] for task in unlabelled)
    print(json.dumps({"whole_export_s": round(whole_s, 2), "client_timeout_s": round(timeout, 2),
                      **client.requests_summary()}))
