"""The review as a job of the training loop (``run_training_job`` with a review payload, or a training press that a
review waited behind): what the job's error, the model card and the Instructions say when the review fails, alone or
after a training that went well. Fold trainings that fail are real ones here (a base model that is not there), or a
stand-in that fails only the folds where the training before them must succeed."""
from pathlib import Path
from types import SimpleNamespace

import pytest

import backend.model.train as train_module
from backend.shared.labelstudio import REPORT_START, REVIEW_START
from backend.shared.settings import Settings
from backend.shared.store import TEMPORARY_PREFIX, ModelStore
from backend.training.jobs import REVIEW
from backend.training.training_run import run_training_job
from tests.helpers.service_fakes import FakeLabelStudio, annotated_task, write_model_folder

PAYLOAD = {"hostname": "http://ls:8080", "access_token": "t"}
TEXTS = ["cheap pizza near me", "thai food please", "sushi for two", "best thai pizza", "pizza and sushi",
         "cheap eats downtown", "thai curry", "open late", "a quiet pizza place", "cheap sushi", "thai sushi",
         "where can i get cheap sushi"]


@pytest.fixture
def client(monkeypatch):
    import backend.shared.card as card_module

    client = FakeLabelStudio([annotated_task(i, text) for i, text in enumerate(TEXTS, start=1)])
    monkeypatch.setattr(card_module, "LabelStudioClient", lambda credentials, **_: client)
    return client


def _settings(tmp_path, **extra):
    return Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "BASE_MODEL": str(tmp_path / "no-such-model"),
                              "PUBLISH_PREDICTIONS": "false", **extra})


def _nothing(*args, **kwargs):
    return None


def test_a_review_whose_fold_cannot_train_fails_the_job_as_a_review_and_says_so_on_the_card(tmp_path, client):
    settings = _settings(tmp_path)
    store = ModelStore(settings.model_dir)
    store.record_review("3", {"project": "3", "state": "done", "tasks": [{"task": 1, "score": 2.0}]})
    with pytest.raises(Exception) as failure:
        run_training_job(settings, "3", {**PAYLOAD, "action": REVIEW}, _nothing)
    message = str(failure.value)
    assert message.startswith("the review of project 3 failed: ") and "no-such-model" in message, message
    # the card no longer says the review is fetching or going: it failed, and why
    assert client.titles[-1].startswith("NER · review failed: "), client.titles
    assert "training failed" not in client.instruction  # no training ran, so none is said to have failed
    assert store.review("3")["tasks"] == [{"task": 1, "score": 2.0}]  # the last review is kept as it was
    assert not list(store.project_dir("3").glob(TEMPORARY_PREFIX + "*"))


def test_a_review_that_fails_after_a_training_that_went_well_does_not_report_a_failed_training(tmp_path, client,
                                                                                                 monkeypatch):
    def train(examples, bio_labels, config, out_dir, validation=None, progress=None):
        if Path(out_dir).name.startswith("fold-"):
            raise RuntimeError("fold training ran out of memory")
        write_model_folder(Path(out_dir), [t[2:] for t in bio_labels[1::2]])
        return SimpleNamespace(model_dir=Path(out_dir), head="new")

    monkeypatch.setattr(train_module, "train_model", train)
    monkeypatch.setattr(train_module, "evaluate_model", lambda model_dir, examples: None)
    settings = _settings(tmp_path)
    with pytest.raises(Exception) as failure:
        run_training_job(settings, "3", {**PAYLOAD, REVIEW: True}, _nothing)
    store = ModelStore(settings.model_dir)
    assert store.current("3") == "v1"  # the training promoted its version
    # the training's report stays in the Instructions; the card says the review failed, not the training
    assert REPORT_START in client.instruction and "training failed" not in client.instruction
    assert not any(title.startswith("NER · training failed") for title in client.titles), client.titles
    assert client.titles[-1].startswith("NER · review failed: "), client.titles
    assert REVIEW_START not in client.instruction
    message = str(failure.value)  # /status: the review failed, and what the training before it did
    assert message.startswith("the review of project 3 failed: ") and "out of memory" in message, message
    assert "the training before it finished: v1, promoted" in message, message


TINY = {"TRAIN_LR": "3e-3", "TRAIN_BATCH_SIZE": "16", "TRAIN_THREADS": "1", "TRAIN_FREEZE_EMBEDDINGS": "false",
        "TRAIN_PRECISION": "fp32", "PUBLISH_PREDICTIONS": "false", "LABEL_STUDIO_URL": "http://ls:8080",
        "LABEL_STUDIO_API_KEY": "k"}


@pytest.mark.slow
def test_a_review_child_killed_mid_fold_fails_clearly_and_leaves_the_last_review_and_no_folder(tmp_path, monkeypatch,
                                                                                               tiny_base_model):
    import functools
    import os
    import signal

    import backend.shared.card as card_module
    from backend.training.jobs import JobQueue, report_abandoned
    from tests.helpers.training_targets import project_review
    from tests.helpers.waits import bound, wait_for

    environment = {"MODEL_DIR": str(tmp_path / "models"), "BASE_MODEL": str(tiny_base_model), **TINY,
                   "TRAIN_EPOCHS": "400"}
    settings = Settings.from_env(environment)
    store = ModelStore(settings.model_dir)
    store.record_review("8", {"project": "8", "state": "done", "tasks": [{"task": 3, "score": 1.5}]})
    earlier = (store.project_dir("8") / "review.json").read_bytes()
    card = FakeLabelStudio([])  # what the serving process tells Label Studio of the child that died
    monkeypatch.setattr(card_module, "LabelStudioClient", lambda credentials, **_: card)
    # the queue as job_queue makes it for the serving process, with the review of the tests' target
    queue = JobQueue(project_review, tmp_path / "jobs", on_abandoned=functools.partial(report_abandoned, settings),
                     tidy=store.clean_temporary)
    payload = {"environment": environment, "tasks": 40, "titles": str(tmp_path / "titles.json"),
               "pid": str(tmp_path / "pid"), "action": REVIEW}
    try:
        assert queue.trigger("8", payload) == "started"
        def fold_training() -> bool:
            progress = queue.status("8").progress
            return progress is not None and progress.stage == "reviewing" and progress.step > 0 and bool(
                list(store.project_dir("8").glob(TEMPORARY_PREFIX + "*")))

        assert wait_for(fold_training, "child event")
        os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)  # mid-fold, by its process id
        assert queue.wait_idle("8", bound("child event"))
    finally:
        queue.shutdown()
    status = queue.status("8")
    assert status.last_error.startswith("the review process was killed by signal 9"), status.last_error
    assert status.progress.stage == "failed" and status.last_result is None
    assert (store.project_dir("8") / "review.json").read_bytes() == earlier  # never half-written, never lost
    assert not list(store.project_dir("8").glob(TEMPORARY_PREFIX + "*"))  # the fold models went with it
    assert card.titles[-1].startswith("NER · review failed: the review process was killed by signal 9"), card.titles
    assert "training failed" not in card.instruction
    # a killed review is not run again by itself (a server stopped mid-review runs it again: test_jobs.py)
    assert JobQueue(project_review, tmp_path / "jobs").resume() == {}


def test_a_review_whose_worker_died_shows_on_the_card_and_leaves_the_training_report(tmp_path, monkeypatch):
    import backend.shared.card as card_module
    from backend.shared.labelstudio import REPORT_END
    from backend.training.jobs import report_abandoned
    from backend.training.queue import ENDED

    instruction = f"<p>Label dishes.</p>\n{REPORT_START}v2 serving: F1 0.8{REPORT_END}"
    client = FakeLabelStudio([], instruction=instruction)
    monkeypatch.setattr(card_module, "LabelStudioClient", lambda credentials, **_: client)
    settings = _settings(tmp_path, LABEL_STUDIO_URL="http://ls:8080", LABEL_STUDIO_API_KEY="k")
    # what the Redis queue's watchdog does with a review job whose worker was killed
    report_abandoned(settings, "3", {"action": REVIEW}, ENDED["failed"])
    assert client.instruction == instruction and client.descriptions == []  # no training failed
    assert client.titles == [f"NER · review failed: {ENDED['failed'][:160]}"]
    report_abandoned(settings, "3", {}, ENDED["failed"])  # a training's: as before
    assert "training failed" in client.instruction and client.titles[-1].startswith("NER · training failed")


def test_the_serving_processs_queue_tidies_after_a_failed_child_and_reports_one_that_died(tmp_path):
    from backend.training.jobs import job_queue

    settings = _settings(tmp_path)
    queue = job_queue(settings, tmp_path / "models" / ".jobs")
    assert queue.on_abandoned is not None and queue.tidy.__self__.root == settings.model_dir
    assert queue.tidy.__func__ is ModelStore.clean_temporary


def test_a_review_asked_during_a_training_that_then_fails_still_runs(tmp_path, client, monkeypatch):
    import backend.training.review as review_module
    from tests.training.test_review import RecordingFolds

    def train(examples, bio_labels, config, out_dir, validation=None, progress=None):
        if not Path(out_dir).name.startswith("fold-"):
            raise RuntimeError("the training ran out of memory")
        write_model_folder(Path(out_dir), [t[2:] for t in bio_labels[1::2]])
        return SimpleNamespace(model_dir=Path(out_dir), head="new")

    monkeypatch.setattr(train_module, "train_model", train)
    monkeypatch.setattr(review_module, "score_with_model", RecordingFolds().score)
    settings = _settings(tmp_path)
    # the training press with the review that waited behind it (jobs.merge_payloads)
    with pytest.raises(RuntimeError, match="the training ran out of memory"):
        run_training_job(settings, "3", {**PAYLOAD, REVIEW: True}, _nothing)
    record = ModelStore(settings.model_dir).review("3")
    assert record.get("state") == "done" and len(record["tasks"]) == len(TEXTS), record  # the press was not lost
    assert REVIEW_START in client.instruction and "training failed" in client.instruction
    assert client.titles[-1].startswith("NER · training failed: the training ran out of memory"), client.titles


@pytest.mark.slow
def test_a_review_whose_fold_loses_a_training_process_fails_as_a_review_naming_the_rank(tmp_path, tiny_base_model):
    import json
    import os
    import signal

    from backend.model.ranks import process_title
    from backend.training.jobs import JobQueue
    from tests.helpers.training_targets import project_review
    from tests.helpers.waits import bound, wait_for
    from tests.training.test_training_processes import _rank

    environment = {"MODEL_DIR": str(tmp_path / "models"), "BASE_MODEL": str(tiny_base_model), **TINY,
                   "TRAIN_EPOCHS": "400", "TRAIN_PROCESSES": "2"}
    store = ModelStore(tmp_path / "models")
    store.record_review("8", {"project": "8", "state": "done", "tasks": [{"task": 3, "score": 1.5}]})
    earlier = (store.project_dir("8") / "review.json").read_bytes()
    queue = JobQueue(project_review, tmp_path / "jobs")
    payload = {"environment": environment, "tasks": 40, "titles": str(tmp_path / "titles.json"),
               "pid": str(tmp_path / "pid"), "action": REVIEW}
    try:
        assert queue.trigger("8", payload) == "started"

        def fold_training() -> bool:
            progress = queue.status("8").progress
            return progress is not None and progress.stage == "reviewing" and progress.step > 0 and \
                _rank(process_title(1, 2)) is not None

        assert wait_for(fold_training, "child event")
        os.kill(_rank(process_title(1, 2)).pid, signal.SIGKILL)
        assert queue.wait_idle("8", bound("child event"))
    finally:
        queue.shutdown()
    error = queue.status("8").last_error
    assert error.startswith("ReviewFailed: the review of project 8 failed: RankDied: training process 1 of 2 "
                            "(rank 1) was killed by signal 9 (SIGKILL)"), error
    titles = json.loads((tmp_path / "titles.json").read_text())
    assert titles[-1].startswith("NER · review failed: RankDied: training process 1 of 2 (rank 1)"), titles
    assert (store.project_dir("8") / "review.json").read_bytes() == earlier
    assert not list(store.project_dir("8").glob(TEMPORARY_PREFIX + "*"))
    assert _rank(process_title(0, 2)) is None and _rank(process_title(1, 2)) is None
