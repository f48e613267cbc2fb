"""End to end against a real Label Studio: import, connect the backend, Start Training, retrieve predictions.

One scenario runs once (module fixture); each test states one thing Label Studio users rely on. Its timings
appear in the terminal summary and as JSON among the test's temporary files.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from scripts.scenario import (
    LatencyProbe,
    backend_status,
    connect_backend,
    create_project,
    examples_to_tasks,
    import_tasks,
    project_key,
    read_label_config,
    retrieve_predictions,
    start_training,
    text_tasks,
    wait_until,
)
from scripts.stack import get_json, post_json
from tests.helpers.waits import bound

pytestmark = pytest.mark.e2e

N_ANNOTATED = 200
N_UNLABELLED = 20
LEAD_INSTRUCTION = "<p>Label every dish and cuisine. <b>Written by the project lead.</b></p>"
TRAINING_TIMEOUT_S = 300


@dataclass
class ScenarioOutcome:
    """Everything the scenario observed; the tests below only read it."""

    unlabelled: dict[int, str]  # task id -> text
    labels: set[str]
    version_before: str | None
    serving_version: str
    predictions: dict[int, list] = field(default_factory=dict)  # task id -> Label Studio prediction objects
    published: dict[int, list] = field(default_factory=dict)  # the same, before anyone asked for predictions
    project_model_version: str | None = None
    scores: dict[int, object] = field(default_factory=dict)  # task id -> the Data Manager's "Prediction score"
    versions: list[dict] = field(default_factory=list)
    runs_started: int = 0
    runs_finished: int = 0
    pending_after_second_press: bool = False
    last_error: str | None = None
    nothing_new: dict = field(default_factory=dict)  # /status's last result after a press with nothing new
    instruction: str = ""
    ml_description: str = ""
    ml_title: str = ""
    project_id: int = 0
    timings: dict = field(default_factory=dict)


def _setup_version(backend_url: str, body: dict) -> str | None:
    return post_json(f"{backend_url}/setup", body, timeout=10.0).get("model_version")


@pytest.fixture(scope="module")
def outcome(label_studio, ml_backend, record_timings) -> ScenarioOutcome:
    from tests.helpers.synthetic import LABELS, restaurant_examples

    ls = label_studio.client()
    label_config = read_label_config()
    project_id = create_project(ls, "E2E restaurant reviews", label_config, instruction=LEAD_INSTRUCTION)
    annotated = examples_to_tasks(restaurant_examples(N_ANNOTATED, seed=5), label_config)
    unlabelled_texts = [example.text for example in restaurant_examples(N_UNLABELLED, seed=99)]
    # one more task, annotated while the first run trains: the run that follows has something new to train on
    late = examples_to_tasks(restaurant_examples(1, seed=123), label_config)[0]
    task_ids = import_tasks(ls, project_id, annotated + text_tasks(unlabelled_texts) + text_tasks([late["data"]["text"]]))
    unlabelled = dict(zip(task_ids[N_ANNOTATED:N_ANNOTATED + N_UNLABELLED], unlabelled_texts))
    late_task = task_ids[-1]
    ml_id = connect_backend(ls, project_id, ml_backend.url, title="NER backend (e2e)")

    key = project_key(ls, project_id)
    probe = LatencyProbe(ml_backend.url, key, label_config, unlabelled_texts,
                         ls_url=label_studio.url, token=label_studio.token)
    setup_body = probe.setup_body  # what Label Studio sends to /setup
    version_before = _setup_version(ml_backend.url, setup_body)
    status = lambda: backend_status(ml_backend.url, project_id)  # noqa: E731

    pressed = time.monotonic()
    start_training(ls, ml_id)
    wait_until(lambda: status().runs_started >= 1, bound("run started"), "the first training run to start")
    probe.start()  # /setup, /webhook and /predict latency while training runs
    # Two more presses while the first run is going: they must coalesce into exactly one more run.
    wait_until(lambda: status().progress.get("stage") not in (None, "starting", "fetching"), bound("run stage"),
               "the first run to have read the annotations")
    ls.annotations.create(id=late_task, result=late["annotations"][0]["result"], was_cancelled=False)
    start_training(ls, ml_id)
    start_training(ls, ml_id)
    after_presses = status()
    wait_until(lambda: probe.predicted_version() not in (None, version_before),
               TRAINING_TIMEOUT_S, "predictions from the first trained version", interval_s=0.25)
    time_to_serving_s = time.monotonic() - pressed
    wait_until(lambda: (lambda s: not s.running and not s.pending and s.runs_finished >= s.runs_started)(status()),
               TRAINING_TIMEOUT_S, "training to finish (both runs)")
    all_runs_s = time.monotonic() - pressed
    training_latency = probe.stop().summary()
    # nothing changed since the serving version was trained: a press makes no version
    finished = status().runs_finished
    start_training(ls, ml_id)
    wait_until(lambda: status().runs_finished > finished, TRAINING_TIMEOUT_S, "the press with nothing new")
    nothing_new = status().raw.get("last_result") or {}

    idle = LatencyProbe(ml_backend.url, key, label_config, unlabelled_texts)
    idle_latency = idle.sample(rounds=20).summary()

    final = status()
    versions_body = get_json(f"{ml_backend.url}/versions?project={project_id}")
    serving_version = _setup_version(ml_backend.url, setup_body)
    published = {task_id: list(ls.predictions.list(task=task_id)) for task_id in unlabelled}
    model_version = ls.projects.get(id=project_id).model_version
    table = get_json(f"{label_studio.url}/api/tasks?project={project_id}&fields=all&page_size=1000",
                     headers={"Authorization": f"Token {label_studio.token}"})
    scores = {task["id"]: task.get("predictions_score") for task in table.get("tasks", [])
              if task["id"] in unlabelled}
    retrieve_predictions(ls, project_id, list(unlabelled))
    predictions = {task_id: list(ls.predictions.list(task=task_id)) for task_id in unlabelled}
    project = ls.projects.get(id=project_id)
    record = ls.ml.get(id=ml_id)
    versions = versions_body.get("details", [])

    result = ScenarioOutcome(
        unlabelled=unlabelled, labels=set(LABELS), version_before=version_before, serving_version=serving_version,
        predictions=predictions, published=published, project_model_version=model_version, scores=scores,
        versions=versions, runs_started=final.runs_started, runs_finished=final.runs_finished,
        pending_after_second_press=after_presses.pending, last_error=final.last_error, nothing_new=nothing_new,
        instruction=project.expert_instruction or "", ml_description=record.description or "",
        ml_title=record.title or "",
        project_id=project_id,
        timings={
            "start_training_to_new_version_serving_s": round(time_to_serving_s, 1),
            "start_training_to_both_runs_done_s": round(all_runs_s, 1),
            "latency_while_training": training_latency,
            "latency_idle": idle_latency,
            "versions": [{name: v.get(name) for name in ("version", "f1", "promoted")} for v in versions],
            "annotated_tasks": N_ANNOTATED, "model": "tiny BERT (tests/helpers/tiny_model.py)",
        },
    )
    record_timings(result.timings)
    return result


def test_start_training_produces_a_new_version_that_serves(outcome):
    assert outcome.last_error is None, f"a training run failed: {outcome.last_error}"
    assert outcome.serving_version, "/setup names no model version after training"
    assert outcome.serving_version != outcome.version_before


def test_the_annotated_tasks_are_read_in_filtered_pages_never_an_export(label_studio, outcome):
    # Label Studio filters the pages (tasks with annotations only), so the unlabelled ones are never read
    from label_studio_sdk import LabelStudio

    from backend.shared.labelstudio import Credentials, LabelStudioClient

    sdk = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)

    def no_export(**kwargs):
        raise AssertionError("the annotated tasks were exported in one request")

    sdk.projects.exports.download_sync = no_export
    client = LabelStudioClient(Credentials(label_studio.url, label_studio.token), sdk=sdk, page_size=50)
    tasks = client.annotated_tasks(outcome.project_id)
    assert len(tasks) == N_ANNOTATED + 1 and all(task["annotations"] for task in tasks)  # with the late one
    assert [task["id"] for task in tasks] == sorted(task["id"] for task in tasks)
    assert client.annotated_count(outcome.project_id) == N_ANNOTATED + 1
    assert client.requests == 5 + 1  # 201 tasks in pages of 50, and the count


def test_second_start_training_during_a_run_coalesces_into_exactly_one_more_run(outcome):
    assert outcome.pending_after_second_press, "presses during the first run did not schedule another run"
    assert (outcome.runs_started, outcome.runs_finished) == (3, 3)  # the two runs, and the press with nothing new
    assert len(outcome.versions) == 2, f"expected one version per run, /versions has {outcome.versions}"


def test_start_training_with_nothing_new_since_the_serving_version_makes_no_version(outcome):
    assert outcome.nothing_new.get("version") is None
    assert outcome.nothing_new.get("decision", "").startswith("nothing new since v"), outcome.nothing_new


def _promoted(outcome) -> list[str]:
    return [v["version"] for v in outcome.versions if v.get("promoted")]


def test_every_promoted_version_is_published_for_every_unlabelled_task_without_anyone_asking(outcome):
    assert outcome.serving_version in _promoted(outcome)
    for task_id, predictions in outcome.published.items():
        assert sorted(p.model_version for p in predictions) == sorted(_promoted(outcome)), f"task {task_id}"
    # the labeling stream and the Data Manager's score column follow the project's model version
    assert outcome.project_model_version == outcome.serving_version


def test_the_data_managers_prediction_score_is_the_serving_versions_score(outcome):
    for task_id, predictions in outcome.published.items():
        serving = [p.score for p in predictions if p.model_version == outcome.serving_version]
        assert outcome.scores[task_id] is not None, f"task {task_id}: blank Prediction score"
        assert abs(float(outcome.scores[task_id]) - serving[0]) < 1e-6


def test_retrieve_predictions_afterwards_writes_no_second_prediction_of_a_version(outcome):
    for task_id, predictions in outcome.predictions.items():
        versions = [p.model_version for p in predictions]
        assert len(versions) == len(set(versions)) and outcome.serving_version in versions, f"task {task_id}"


def _serving(outcome, predictions):
    return next(p for p in predictions if p.model_version == outcome.serving_version)


def test_predicted_spans_have_exact_offsets_and_known_labels(outcome):
    spans = 0
    for task_id, predictions in outcome.predictions.items():
        text = outcome.unlabelled[task_id]
        for result in _serving(outcome, predictions).result:
            value = result["value"]
            assert text[value["start"]:value["end"]] == value["text"], f"task {task_id}: {value}"
            assert set(value["labels"]) <= outcome.labels
            spans += 1
    # the synthetic sentences are easy: a trained model that finds nothing at all did not learn
    assert spans > 0, "the trained model predicted no entity in any of the unlabelled tasks"


def test_scores_are_in_the_project_instructions_and_the_ml_record(outcome):
    assert outcome.instruction.startswith(LEAD_INSTRUCTION), "the lead's own instructions were changed"
    latest = outcome.versions[-1]["version"]  # the block reports the last run, promoted or not
    f1 = f"{outcome.versions[-1]['f1']:.3f}"  # backend/shared/report.py writes scores with 3 decimals
    assert latest in outcome.instruction and f"F1 {f1}" in outcome.instruction
    missing = [label for label in outcome.labels if label not in outcome.instruction]
    assert not missing, f"the per-entity table lacks {missing}"
    assert latest in outcome.ml_description and f"F1 {f1}" in outcome.ml_description


def test_the_model_card_title_says_which_version_serves(outcome):
    # the last press had nothing new: the card says so, and which version serves
    assert outcome.ml_title == f"NER · {outcome.serving_version} serving · nothing new", outcome.ml_title
