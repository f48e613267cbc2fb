"""A real training run of a project against a fake Label Studio, as the local job queue's child runs it: the target
of tests that run training through the job path (a spawned child imports it by name).

``project_training(project, payload, progress)``: the project's annotated tasks are the synthetic restaurant
sentences (``payload["tasks"]`` of them), the settings are ``payload["environment"]``; the model card's titles are
written to ``payload["titles"]`` (JSON) however the run ends, so the test can read what Label Studio was shown.
"""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def project_tasks(n: int, seed: int = 3) -> list[dict]:
    """``n`` annotated tasks of the restaurant label config, ids 1..n, annotation ids 500..."""
    from backend.data.schema import load_label_config
    from backend.data.tasks import example_to_task
    from tests.helpers.synthetic import restaurant_examples

    schema = load_label_config(ROOT / "label_config" / "restaurant.xml")
    tasks = []
    for i, example in enumerate(restaurant_examples(n, seed=seed)):
        task = example_to_task(example, schema)
        task["id"] = i + 1
        task["annotations"][0]["id"] = 500 + i
        tasks.append(task)
    return tasks


def project_training(project: str, payload: dict, progress) -> dict:
    import backend.shared.card as card_module
    from backend.shared.settings import Settings
    from backend.training.training_run import run_training_job
    from tests.helpers.service_fakes import FakeLabelStudio

    client = FakeLabelStudio(project_tasks(payload["tasks"]),
                             config=(ROOT / "label_config" / "restaurant.xml").read_text())
    card_module.LabelStudioClient = lambda credentials, **_: client  # the card and the run talk to the fake
    settings = Settings.from_env(payload["environment"])
    try:
        return run_training_job(settings, project, {"hostname": "http://ls:8080", "access_token": "t"}, progress)
    finally:
        Path(payload["titles"]).write_text(json.dumps(client.titles))


def project_review(project: str, payload: dict, progress) -> dict:
    """A real review of the project (``project_tasks(payload["tasks"])``, fold models trained from the settings'
    BASE_MODEL) as the job's child runs it; its process id is written to ``payload["pid"]`` first, so that a test can
    kill it, and the card's titles to ``payload["titles"]`` however it ends (but killed)."""
    import os

    import backend.shared.card as card_module
    from backend.shared.settings import Settings
    from backend.training.training_run import run_training_job
    from tests.helpers.service_fakes import FakeLabelStudio

    Path(payload["pid"]).write_text(str(os.getpid()))
    client = FakeLabelStudio(project_tasks(payload["tasks"]),
                             config=(ROOT / "label_config" / "restaurant.xml").read_text())
    card_module.LabelStudioClient = lambda credentials, **_: client
    settings = Settings.from_env(payload["environment"])
    try:
        return run_training_job(settings, project, {"hostname": "http://ls:8080", "access_token": "t",
                                                    "action": payload["action"]}, progress)
    finally:
        Path(payload["titles"]).write_text(json.dumps(client.titles))
