"""What a person sees in Label Studio after Start Training: the Data Manager and an opened task, in headless Chromium.

The scenario runs once (module fixture) in a project of its own: 60 annotated + 10 unlabelled tasks, the backend
connected; half of the unlabelled tasks get predictions from the version before training ("Retrieve Predictions"),
the lead presses Start Training, a version is promoted. Then a browser logs in, reads the Data Manager (its prediction
columns shown, sorted doubt-first, as the demo opens it) and opens two unlabelled tasks: one that never had a prediction
and one that holds the old version's. Last, every training task's labels are made wrong and Start Training is pressed
again: that candidate is kept out, and what the backend wrote into Label Studio is read back. Each test states one thing a person relies on; every step leaves a full-page screenshot (the folder is
printed as ``screenshots: <path>``; env SCREENSHOT_DIR chooses it).

Two of them hold because the backend publishes each promoted version's predictions into Label Studio and makes it
the project's model version (without that, the score column is blank and the old version's task keeps its spans).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scripts.scenario import (
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
from scripts.scenario import DOUBT_FIRST, ls_api
from scripts.demo import doubt_first_view
from scripts.stack import BackendServer, post_json
from backend.shared.public import ABSOLUTE_PATH
from tests.helpers.browser import (
    PREDICTION_COLUMNS,
    PREDICTION_MODEL_VERSIONS,
    PREDICTION_SCORE,
    DataManagerRow,
    EntityTab,
    LabelStudioBrowser,
    Span,
    dm_api_tasks,
    entity_tabs,
    region_list,
    screenshot_dir,
    table_columns,
    table_rows,
    table_total,
    unavailable_reason,
    visible_spans,
)

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

N_ANNOTATED = 60
N_UNLABELLED = 10
TRAINING_TIMEOUT_S = 150

@dataclass
class OpenedTask:
    """What the labelling view showed for one task, and what the serving version predicts for it."""

    task_id: int
    text: str
    spans: list[Span]  # highlighted in the text of the selected annotation
    regions: list[Span]  # listed in the sidebar's Regions panel
    tabs: list[EntityTab]  # annotation and prediction tabs
    expected: list[Span]  # the serving version's /predict answer for this text
    screenshot: Path | None = None


@dataclass
class Seen:
    project_id: int
    task_ids: list[int]
    unlabelled: dict[int, str]
    early: list[int]  # unlabelled tasks given predictions before training
    version_before: str
    serving_version: str
    columns: list[tuple[str | None, str]] = field(default_factory=list)
    rows: dict[int, DataManagerRow] = field(default_factory=dict)
    api_tasks: dict[int, dict] = field(default_factory=dict)  # /api/tasks?fields=all, read with the table
    total: str = ""
    fresh: OpenedTask | None = None  # an unlabelled task that had no prediction before it was opened
    stale: OpenedTask | None = None  # an unlabelled task that held the old version's prediction
    shots: list[Path] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    view_ordering: list[str] = field(default_factory=list)  # the saved view's sort order, read back
    kept_out: dict = field(default_factory=dict)  # the second run's summary (/status last_result)
    written: dict[str, str] = field(default_factory=dict)  # every text the backend wrote into Label Studio, by place


@pytest.fixture(scope="session")
def browser_available():
    """Playwright and Chromium, checked before any server starts: a failure in CI, a skip in a local run."""
    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI"):  # as tests/e2e/conftest.py's `unavailable`: never skipped in CI
            pytest.fail(f"browser test cannot run in CI: {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def screenshots(request, tmp_path_factory) -> Path:
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # the path shows in CI logs, with or without -s
        print()
        return screenshot_dir(tmp_path_factory)


def _spans(results: list[dict]) -> list[Span]:
    ordered = sorted(results, key=lambda r: (r["value"]["start"], r["value"]["end"]))
    return [Span(r["value"]["labels"][0], r["value"]["text"]) for r in ordered]


def _serving_predictions(backend_url: str, key: str, label_config: str, tasks: dict[int, str]) -> dict[int, dict]:
    body = {"tasks": [{"id": task_id, "data": {"text": text}, "annotations": [], "predictions": []}
                      for task_id, text in tasks.items()],
            "project": key, "label_config": label_config, "params": {"login": None, "password": None, "context": None}}
    results = post_json(f"{backend_url}/predict", body, timeout=120.0)["results"]
    return dict(zip(tasks, results))


def _open(browser: LabelStudioBrowser, project_id: int, task_id: int, text: str, expected: dict) -> OpenedTask:
    page = browser.open_task(project_id, task_id)
    return OpenedTask(task_id, text, visible_spans(page), region_list(page), entity_tabs(page),
                      _spans(expected["result"]), browser.shots[-1])


@pytest.fixture(scope="module")
def ml_backend(label_studio, tiny_base_model_dir, tmp_path_factory):
    """conftest's backend, with every run trained from the base model and the strict gate: the mislabelled candidate
    then learns the wrong labels and scores below v1. With a warm start its one short epoch from v1 barely moved it,
    and whether it scored below v1 depended on the task ids (it was promoted, 0.195 against 0.186, when the browser
    test ran after another module's project)."""
    from tests.e2e.conftest import TINY_TRAINING_ENV, _running

    server = BackendServer(label_studio_url=label_studio.url, api_key=label_studio.token,
                           model_dir=tmp_path_factory.mktemp("models"), base_model=str(tiny_base_model_dir),
                           extra_env={**TINY_TRAINING_ENV, "WARM_START": "false", "PROMOTION_GATE": "strict"})
    yield from _running(server)


@pytest.fixture(scope="module")
def seen(browser_available, label_studio, ml_backend, screenshots) -> Seen:
    from tests.helpers.synthetic import restaurant_examples

    started = time.monotonic()
    ls = label_studio.client()
    label_config = read_label_config()
    project_id = create_project(ls, "Browser: restaurant reviews", label_config)
    annotated = examples_to_tasks(restaurant_examples(N_ANNOTATED, seed=21), label_config)
    texts = [example.text for example in restaurant_examples(N_UNLABELLED, seed=77)]
    task_ids = import_tasks(ls, project_id, annotated + text_tasks(texts))
    unlabelled = dict(zip(task_ids[N_ANNOTATED:], texts))
    ml_id = connect_backend(ls, project_id, ml_backend.url, title="NER backend (browser)")

    # what annotators were shown before any training: predictions of the version serving then
    early = list(unlabelled)[: N_UNLABELLED // 2]
    retrieve_predictions(ls, project_id, early)
    version_before = list(ls.predictions.list(task=early[0]))[0].model_version

    start_training(ls, ml_id)
    status = lambda: backend_status(ml_backend.url, project_id)  # noqa: E731
    wait_until(lambda: (lambda s: s.runs_finished >= 1 and not s.running and not s.pending)(status()),
               TRAINING_TIMEOUT_S, "the training run to finish")
    final = status()
    assert final.last_error is None, f"the training run failed: {final.last_error}"
    serving = final.current_version
    assert serving and serving != version_before, f"no new version was promoted: {final.raw}"
    trained_s = time.monotonic() - started

    key = project_key(ls, project_id)
    expected = _serving_predictions(ml_backend.url, key, label_config, unlabelled)
    assert {r["model_version"] for r in expected.values()} == {serving}, "/predict does not answer from the new version"
    late = [task_id for task_id in unlabelled if task_id not in early]
    # open tasks for which the new version finds something (when it finds something anywhere)
    fresh_id = max(late, key=lambda task_id: len(expected[task_id]["result"]))
    stale_id = max(early, key=lambda task_id: len(expected[task_id]["result"]))

    # the prediction columns are hidden by default: shown, and sorted doubt-first, as the demo opens its project
    doubt_first_view(label_studio.url, label_studio.token, project_id)
    result = Seen(project_id=project_id, task_ids=task_ids, unlabelled=unlabelled, early=early,
                  version_before=version_before, serving_version=serving)
    with LabelStudioBrowser(label_studio.url, label_studio.email, label_studio.password, screenshots) as browser:
        browser.login()
        page = browser.open_data_manager(project_id)
        result.columns = table_columns(page)
        result.rows = table_rows(page)
        result.total = table_total(page)
        result.api_tasks = dm_api_tasks(label_studio.url, label_studio.token, project_id)
        # opening a task that has no prediction makes Label Studio ask the backend (the new version) at once
        result.fresh = _open(browser, project_id, fresh_id, unlabelled[fresh_id], expected[fresh_id])
        result.stale = _open(browser, project_id, stale_id, unlabelled[stale_id], expected[stale_id])
        result.shots = list(browser.shots)
    views = ls_api(f"{label_studio.url}/api/dm/views?project={project_id}", label_studio.token)
    result.view_ordering = list((views[0].get("data") or {}).get("ordering") or []) if views else []

    # a candidate that must be kept out: every training task's spans get the wrong label (validation tasks untouched)
    _mislabel_training_tasks(ls, project_id, task_ids[:N_ANNOTATED])
    start_training(ls, ml_id)
    wait_until(lambda: (lambda s: s.runs_finished >= 2 and not s.running and not s.pending)(status()),
               TRAINING_TIMEOUT_S, "the second training run to finish")
    second = status()
    assert second.last_error is None, f"the second run failed: {second.last_error}"
    result.kept_out = second.raw.get("last_result") or {}
    result.written = _written_by_the_backend(ls, project_id)
    result.timings = {"to_promoted_s": round(trained_s, 1), "total_s": round(time.monotonic() - started, 1)}
    print(f"\nbrowser scenario: {result.timings}; screenshots: {[str(p) for p in result.shots]}")
    return result


def _mislabel_training_tasks(ls, project_id: int, annotated: list[int]) -> None:
    """Every span of the annotated tasks the backend trains on (not its validation tasks) relabelled wrong."""
    from backend.data.splits import split_examples
    from backend.shared.settings import Settings
    from tests.helpers.synthetic import LABELS

    train, _ = split_examples([(task_id, task_id) for task_id in annotated], Settings.validation_fraction)
    wrong = {label: LABELS[(i + 1) % len(LABELS)] for i, label in enumerate(LABELS)}
    for task_id in train:
        for annotation in ls.annotations.list(id=task_id):
            result = [{**r, "value": {**r["value"], "labels": [wrong[r["value"]["labels"][0]]]}}
                      for r in annotation.result or []]
            ls.annotations.update(id=annotation.id, result=result)


def _written_by_the_backend(ls, project_id: int) -> dict[str, str]:
    """The project's instructions, the ML record's title and description, the model version and every
    prediction's model version: all the text the backend writes into Label Studio."""
    project = ls.projects.get(id=project_id)
    written = {"instructions": project.expert_instruction or "", "project model_version": project.model_version or ""}
    for record in ls.ml.list(project=project_id):
        written[f"ml {record.id} title"] = record.title or ""
        written[f"ml {record.id} description"] = record.description or ""
    versions = {p.model_version or "" for task in ls.tasks.list(project=project_id) for p in ls.predictions.list(
        task=task.id)}
    written["prediction model versions"] = " ".join(sorted(versions))
    return written


# --- the Data Manager --------------------------------------------------------------------------------------------
def test_the_data_manager_lists_every_task_of_the_project(seen):
    assert set(seen.rows) == set(seen.task_ids), f"rows shown: {sorted(seen.rows)} ({seen.shots[1]})"
    n = len(seen.task_ids)
    assert seen.total == f"Tasks: {n} / {n}"
    for task_id, text in seen.unlabelled.items():
        assert seen.rows[task_id].cells.get("tasks:data.text") == text


def test_the_prediction_columns_are_shown_with_their_headers(seen):
    headers = {column_id: title for column_id, title in seen.columns if column_id}
    assert headers.get(PREDICTION_SCORE) == "Prediction score", headers
    assert headers.get(PREDICTION_MODEL_VERSIONS) == "Prediction model versions", headers
    assert all(column in headers for column in PREDICTION_COLUMNS), headers


def test_the_table_shows_what_the_data_manager_api_holds(seen):
    for task_id, row in seen.rows.items():
        task = seen.api_tasks[task_id]
        assert row.predictions == str(task["total_predictions"]), f"task {task_id}: {row.cells}"
        shown = {v.strip() for v in row.model_versions.split(",") if v.strip()}
        held = {v.strip() for v in (task["predictions_model_versions"] or "").split(",") if v.strip()}
        assert shown == held, f"task {task_id}: table {row.model_versions!r}, API {sorted(held)}"
        if task["predictions_score"] is None:
            assert row.score_value() is None, f"task {task_id}: {row.cells}"
        else:
            assert row.score_value() == pytest.approx(task["predictions_score"], abs=1e-3), f"task {task_id}"


def test_tasks_given_predictions_before_training_show_their_model_versions(seen):
    for task_id in seen.early:
        row = seen.rows[task_id]
        assert int(row.predictions) >= 1, f"task {task_id}: {row.cells}"
        shown = {v.strip() for v in row.model_versions.split(",") if v.strip()}
        assert shown and shown <= {seen.version_before, seen.serving_version}, f"task {task_id}: {row.cells}"


def test_each_task_holds_at_most_one_prediction_per_model_version(seen):
    # two predictions of one version show as two identical tabs, and count twice in the Predictions column
    for task_id, task in seen.api_tasks.items():
        versions = [p.get("model_version") for p in task.get("predictions") or []]
        repeated = sorted({v for v in versions if versions.count(v) > 1})
        assert not repeated, f"task {task_id} holds {len(versions)} predictions: {versions} ({seen.shots[1]})"
    for opened in (seen.fresh, seen.stale):
        names = [tab.name for tab in opened.tabs if tab.prediction]
        assert len(names) == len(set(names)), f"task {opened.task_id}: prediction tabs {names} ({opened.screenshot})"


def test_the_data_manager_shows_a_numeric_prediction_score_for_unlabelled_tasks_from_the_new_version(seen):
    for task_id in seen.unlabelled:
        row = seen.rows[task_id]
        assert row.score_value() is not None, f"task {task_id}: Prediction score is blank ({seen.shots[1]})"
        assert seen.serving_version in row.model_versions, f"task {task_id}: {row.cells}"


# --- an opened task ----------------------------------------------------------------------------------------------
def _check_spans_are_the_tasks_own(opened: OpenedTask) -> None:
    from tests.helpers.synthetic import LABELS

    for span in opened.spans:
        assert span.label in LABELS, f"task {opened.task_id}: unknown label {span}"
        assert span.text and span.text in opened.text, f"task {opened.task_id}: {span} is not in {opened.text!r}"


def test_an_unlabelled_task_opened_without_a_prediction_shows_the_new_versions_spans(seen):
    opened = seen.fresh
    assert opened.expected, f"the new version predicts no entity in {opened.text!r}: nothing to see"
    _check_spans_are_the_tasks_own(opened)
    assert opened.spans == opened.expected, f"shown {opened.spans}, new version {opened.expected} ({opened.screenshot})"
    assert opened.regions == opened.expected, f"Regions panel: {opened.regions}"
    assert any(tab.prediction and tab.names(seen.serving_version) for tab in opened.tabs), opened.tabs


def test_an_unlabelled_task_opened_from_the_data_manager_shows_the_new_versions_spans_after_a_promotion(seen):
    opened = seen.stale
    _check_spans_are_the_tasks_own(opened)
    assert any(tab.prediction and tab.names(seen.serving_version) for tab in opened.tabs), (
        f"no prediction of {seen.serving_version} among {opened.tabs} ({opened.screenshot})")
    assert opened.spans == opened.expected, f"shown {opened.spans}, new version {opened.expected} ({opened.screenshot})"


# --- what annotators and leads read (issue 31) --------------------------------------------------------------------
def test_the_prediction_score_column_is_shown_sorted_doubt_first_with_readable_values(seen):
    headers = {column_id: title for column_id, title in seen.columns if column_id}
    assert headers.get(PREDICTION_SCORE) == "Prediction score", headers
    assert seen.view_ordering == DOUBT_FIRST
    scores = [seen.rows[task_id].score_value() for task_id in seen.unlabelled]
    assert all(score is not None and 0.05 < score < 0.95 for score in scores), f"{scores} ({seen.shots[1]})"
    assert len(set(scores)) > 1, f"every task shows the same score: {scores}"


def test_the_task_tab_shows_the_same_score_as_the_data_manager(seen):
    for opened in (seen.fresh, seen.stale):
        tab = next(tab for tab in opened.tabs if tab.prediction and tab.names(seen.serving_version))
        assert tab.score.startswith("Prediction score = "), f"{opened.tabs} ({opened.screenshot})"
        shown = seen.rows[opened.task_id].score_value()
        # the Data Manager rounds the stored number to 3 decimals, the tab's title shows it whole
        assert shown == pytest.approx(float(tab.score.split("=")[1]), abs=5e-4), (tab, shown, opened.screenshot)


def test_the_instructions_lead_with_the_serving_version_after_a_run_that_was_kept_out(seen):
    result = seen.kept_out
    assert result.get("version") and not result.get("promoted"), f"the candidate was not kept out: {result}"
    block = seen.written["instructions"]
    heading = block[block.index("<h3>"):block.index("</h3>")]
    assert heading.startswith(f"<h3>NER model {seen.serving_version} serving: F1 "), block
    assert f"Candidate {result['version']}, kept out" in block and "reload" in block
    assert block.index(seen.serving_version) < block.index(result["version"])
    titles = [text for place, text in seen.written.items() if place.endswith("title")]
    assert any(t.startswith(f"NER · {seen.serving_version} serving") and "kept out" in t for t in titles), titles


def test_no_text_the_backend_wrote_into_label_studio_names_a_server_path(seen):
    for place, text in seen.written.items():
        assert not ABSOLUTE_PATH.search(text), f"{place}: {ABSOLUTE_PATH.search(text).group(0)!r} in {text!r}"
