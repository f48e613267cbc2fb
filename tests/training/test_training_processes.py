"""One training as two CPU processes (gloo), through the training run: one version like one process's, progress from
the main process only; a process killed mid-run fails the run, says which in the job status and on the model card,
and leaves no version behind."""
import json
import os
import signal

import psutil
import pytest

from backend.model.ranks import process_title
from backend.model.train import evaluate_model
from backend.shared.settings import Settings
from backend.shared.store import TEMPORARY_PREFIX, ModelStore
from backend.training.jobs import JobQueue
from backend.training.training_run import train_project
from tests.helpers.service_fakes import FakeLabelStudio
from tests.helpers.training_targets import ROOT, project_tasks, project_training
from tests.helpers.waits import bound, wait_for

pytestmark = pytest.mark.slow

RECIPE = {"TRAIN_LR": "3e-3", "TRAIN_BATCH_SIZE": "16", "TRAIN_THREADS": "1", "TRAIN_FREEZE_EMBEDDINGS": "false",
          "TRAIN_PRECISION": "fp32", "REPORT_TO_LABEL_STUDIO": "false", "PUBLISH_PREDICTIONS": "false"}


def _environment(tmp_path, base, processes, **more):
    return {"MODEL_DIR": str(tmp_path / "models"), "BASE_MODEL": str(base), **RECIPE,
            "TRAIN_PROCESSES": str(processes), **more}


def _train(tmp_path, base, processes):
    settings = Settings.from_env(_environment(tmp_path / f"p{processes}", base, processes, TRAIN_EPOCHS="6"))
    client = FakeLabelStudio(project_tasks(120), config=(ROOT / "label_config" / "restaurant.xml").read_text())
    store = ModelStore(settings.model_dir)
    seen = []
    summary = train_project(settings, "8", client, store, progress=lambda stage=None, **k: seen.append((stage, k)))
    return store, summary, [k for stage, k in seen if stage == "training" and k.get("step")]


def test_two_processes_make_one_version_like_one_process(tmp_path, tiny_base_model):
    one_store, one, one_steps = _train(tmp_path, tiny_base_model, 1)
    two_store, two, two_steps = _train(tmp_path, tiny_base_model, 2)
    assert (one["version"], two["version"]) == ("v1", "v1") and two["promoted"]
    assert two_store.version_names("8") == ["v1"]
    assert not list(two_store.project_dir("8").glob(TEMPORARY_PREFIX + "*"))
    folder_one, folder_two = one_store.version_dir("8", "v1"), two_store.version_dir("8", "v1")
    labels = [json.loads((f / "config.json").read_text())["id2label"] for f in (folder_one, folder_two)]
    assert labels[0] == labels[1] and len(labels[0]) == 17
    manifest_one, manifest_two = (vars(s.manifest("8", "v1")) for s in (one_store, two_store))
    assert set(manifest_one) == set(manifest_two)
    assert manifest_two["settings"]["training"]["processes"] == 2
    assert manifest_one["train_size"] == manifest_two["train_size"]
    metrics_one, metrics_two = (json.loads((f / "metrics.json").read_text()) for f in (folder_one, folder_two))
    assert set(metrics_one) == set(metrics_two)
    # the recipe means the same: as many optimizer steps of as many sentences, over as many epochs
    for key in ("optimizer_steps", "batch_size", "epochs_run", "train_windows"):
        assert metrics_one[key] == metrics_two[key], key
    # progress from the main process only: each step once, in order, up to the total
    total = metrics_two["optimizer_steps"]
    assert [k["step"] for k in two_steps] == list(range(1, total + 1))
    assert {k["total_steps"] for k in two_steps} == {total} and len(one_steps) == len(two_steps)
    # as well learnt: F1 on its training sentences within noise of one process's (the two differ only in the
    # order of the sums and each process's dropout draws)
    examples = _examples(120)
    f1_one, f1_two = (evaluate_model(f, examples).overall.f1 for f in (folder_one, folder_two))
    assert f1_one > 0.8 and abs(f1_one - f1_two) < 0.05, (f1_one, f1_two)


def _examples(n):
    from tests.helpers.synthetic import restaurant_examples

    return restaurant_examples(n, seed=3)


def _rank(title):
    """A process below this one (the job's child starts the training processes) named ``title``, or None."""
    for process in psutil.Process().children(recursive=True):
        try:
            if process.name() == title:
                return process
        except psutil.NoSuchProcess:
            pass
    return None


def _kill_rank_mid_run(tmp_path, tiny_base_model, rank: int):
    """A 2-process training of project 8 whose rank ``rank`` is killed (SIGKILL) once it has taken a step; the
    queue's status of the run once it ended."""
    environment = _environment(tmp_path, tiny_base_model, 2, TRAIN_EPOCHS="400", REPORT_TO_LABEL_STUDIO="true")
    payload = {"environment": environment, "tasks": 120, "titles": str(tmp_path / "titles.json")}
    queue = JobQueue(project_training, tmp_path / "jobs")
    try:
        assert queue.trigger("8", payload) == "started"
        assert wait_for(lambda: (queue.status("8").progress or None) is not None
                        and queue.status("8").progress.step > 0 and _rank(process_title(rank, 2)) is not None,
                        "child event")
        os.kill(_rank(process_title(rank, 2)).pid, signal.SIGKILL)
        assert queue.wait_idle("8", bound("child event"))
    finally:
        queue.shutdown()
    return queue.status("8")


def test_a_killed_training_process_fails_the_run_says_so_and_keeps_nothing(tmp_path, tiny_base_model):
    status = _kill_rank_mid_run(tmp_path, tiny_base_model, 1)
    assert status.last_error is not None and status.last_result is None
    assert "rank 1" in status.last_error and "SIGKILL" in status.last_error, status.last_error
    assert status.progress.stage == "failed"
    store = ModelStore(tmp_path / "models")
    assert store.version_names("8") == [] and store.current("8") is None
    assert not list(store.project_dir("8").glob(TEMPORARY_PREFIX + "*"))  # nothing half-written left
    titles = json.loads((tmp_path / "titles.json").read_text())
    assert titles[-1].startswith("NER · training failed") and "rank 1" in titles[-1], titles[-1]
    assert _rank(process_title(0, 2)) is None and _rank(process_title(1, 2)) is None  # no process left behind


def test_the_main_training_process_killed_mid_run_fails_the_run_named_and_keeps_nothing(tmp_path, tiny_base_model):
    status = _kill_rank_mid_run(tmp_path, tiny_base_model, 0)  # the one that scores, reports and saves
    assert "training process 0 of 2 (rank 0) was killed by signal 9 (SIGKILL)" in status.last_error, status.last_error
    store = ModelStore(tmp_path / "models")
    assert store.version_names("8") == [] and not list(store.project_dir("8").glob(TEMPORARY_PREFIX + "*"))
    titles = json.loads((tmp_path / "titles.json").read_text())
    assert titles[-1].startswith("NER · training failed") and "rank 0" in titles[-1], titles[-1]
    assert _rank(process_title(0, 2)) is None and _rank(process_title(1, 2)) is None
