"""The loop's promises against a real Label Studio, with the real backend process and its real training children,
when things happen at once and when a process dies mid-way:

- Retrieve Predictions pressed while publishing writes a version, and tasks imported meanwhile: no task holds a
  version twice, and every unlabelled task gets the version, the new ones included;
- the backend restarted mid-publishing, and a publishing child killed with -9: the publishing resumes by itself
  (from the restart, or the next /setup), writes only what is missing, and then announces the version;
- a label config whose labels no longer fit the serving version: the project's model version stops naming it and
  /status and the card say what to do; a data field renamed in the config is named in /status.

A publishing is held at its start with SIGSTOP on the training child (found by its process group), so that what a
lead or Label Studio does "meanwhile" really happens meanwhile, whatever the machine's speed.
"""
from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from scripts.scenario import (backend_status, connect_backend, create_project, examples_to_tasks, import_tasks,
                              read_label_config, retrieve_predictions, start_training, text_tasks,
                              versions_per_task, wait_until)
from scripts.stack import BackendServer, StackError, free_port
from tests.e2e.conftest import TINY_TRAINING_ENV
from tests.helpers.waits import bound

pytestmark = pytest.mark.e2e

N_ANNOTATED = 40
N_UNLABELLED = 600
N_IMPORTED_MEANWHILE = 100
# A tiny model's run (fetch, train, evaluate, publish 600 tasks) takes ~30 s on 2 idle cores; measured up to ~3x
# that with the other core busy. Waits are for events, bounded by this.
RUN_TIMEOUT_S = 300


class Backend:
    """The backend on a fixed port and MODEL_DIR, so that it can be restarted under the URL Label Studio knows."""

    def __init__(self, label_studio, base_model: Path, model_dir: Path, log_path: Path):
        self.label_studio, self.base_model = label_studio, base_model
        self.model_dir, self.log_path = model_dir, log_path
        self.port = free_port()
        self.server: BackendServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = BackendServer(self.label_studio.url, self.label_studio.token, self.model_dir,
                                    str(self.base_model), port=self.port, extra_env=TINY_TRAINING_ENV,
                                    log_path=self.log_path)
        try:
            self.server.start()
        except StackError as error:
            pytest.fail(str(error), pytrace=False)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def training_child(self) -> int | None:
        """The pid of the training child process (a spawned child in the backend's process group), if one runs."""
        group = self.server.managed.pid
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.getpgid(int(entry.name)) != group:
                    continue
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except (OSError, ProcessLookupError):
                continue
            if b"spawn_main" in command and b"resource_tracker" not in command:
                return int(entry.name)
        return None

    def status(self, project: int) -> dict:
        return backend_status(self.url, project).raw

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def backend(label_studio, tiny_base_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("promises")
    server = Backend(label_studio, tiny_base_model_dir, root / "models", root / "backend.log")
    server.start()
    yield server
    server.stop()


def _project(ls, backend: Backend, title: str, config: str | None = None, seed: int = 3) -> tuple[int, int, list[int]]:
    """A project with annotated and unlabelled tasks, connected to the backend: (project, ML record, unlabelled ids)."""
    from tests.helpers.synthetic import restaurant_examples

    config = config or read_label_config()
    project = create_project(ls, title, config)
    annotated = examples_to_tasks(restaurant_examples(N_ANNOTATED, seed=seed), config)
    texts = [example.text for example in restaurant_examples(N_UNLABELLED, seed=seed + 100)]
    ids = import_tasks(ls, project, annotated + text_tasks(texts))
    ml_id = connect_backend(ls, project, backend.url, title=f"NER backend ({title})")
    return project, ml_id, ids[N_ANNOTATED:]


def _hold_publishing(backend: Backend, project: int) -> int:
    """Wait until the project's run is publishing, then stop its child (SIGSTOP); returns the child's pid."""
    wait_until(lambda: (backend.status(project).get("publishing") or {}).get("state") == "publishing", RUN_TIMEOUT_S,
               "the run to be publishing", interval_s=0.05)
    pid = backend.training_child()
    assert pid is not None, "no training child found in the backend's process group"
    os.kill(pid, signal.SIGSTOP)
    return pid


def _wait_announced(backend: Backend, project: int, version: str = "v1") -> dict:
    def done() -> bool:
        status = backend.status(project)
        return (status.get("announced_version") == version and not status.get("training")
                and not status.get("pending"))

    wait_until(done, RUN_TIMEOUT_S, f"{version} to be published and announced, and the backend idle")
    return backend.status(project)



def _unlabelled_ids(ls, project: int) -> list[int]:
    tasks = ls.tasks.list(project=project, fields="all", page_size=500)
    return [int(task.id) for task in tasks if not task.annotations]


def _assert_every_unlabelled_task_holds_the_version_once(ls, project: int, version: str) -> dict:
    held = versions_per_task(ls, project)
    twice = {task: dict(counts) for task, counts in held.items() if any(n > 1 for n in counts.values())}
    assert twice == {}, f"{len(twice)} task(s) hold a version twice: {dict(list(twice.items())[:5])}"
    unlabelled = _unlabelled_ids(ls, project)
    without = [task for task in unlabelled if held.get(task, Counter())[version] != 1]
    assert without == [], f"{len(without)} of {len(unlabelled)} unlabelled task(s) lack {version}: {without[:10]}"
    assert ls.projects.get(id=project).model_version == version
    return {"unlabelled": len(unlabelled), "predictions": sum(sum(c.values()) for c in held.values())}


def test_retrieve_predictions_and_imports_during_publishing_leave_every_task_with_the_version_once(
        label_studio, backend):
    """Issue cases 1 and 2: the lead's Retrieve Predictions while v1 is written stores no second v1 (Label Studio is
    told v1 only once it is written), and 100 tasks imported meanwhile get v1 before it is announced."""
    ls = label_studio.client()
    project, ml_id, _ = _project(ls, backend, "Promises: retrieve and import while publishing")
    start_training(ls, ml_id)
    child = _hold_publishing(backend, project)
    try:
        assert backend.status(project)["announced_version"] is None  # v1 is promoted, not yet announced
        retrieve_predictions(ls, project)  # Label Studio asks /setup, then /predict for what lacks that version
        new = import_tasks(ls, project, text_tasks([f"cheap sushi near the station {i}" for i in
                                                    range(N_IMPORTED_MEANWHILE)]))
    finally:
        os.kill(child, signal.SIGCONT)
    status = _wait_announced(backend, project)
    assert status["current_version"] == "v1" and status["warnings"] == [], status
    counts = _assert_every_unlabelled_task_holds_the_version_once(ls, project, "v1")
    assert counts["unlabelled"] == N_UNLABELLED + N_IMPORTED_MEANWHILE
    held = versions_per_task(ls, project)
    assert all(held[task]["v1"] == 1 for task in new)
    retrieve_predictions(ls, project)  # afterwards: only the annotated tasks lack v1, and get it once
    after = versions_per_task(ls, project)
    assert {task: after[task] for task in held if task not in new and held[task]["v1"]} == \
        {task: held[task] for task in held if task not in new and held[task]["v1"]}
    _assert_every_unlabelled_task_holds_the_version_once(ls, project, "v1")


def test_a_restart_mid_publishing_resumes_it_and_writes_only_what_is_missing(label_studio, backend):
    """Issue case 3: the backend restarted while it publishes v1 (held after its first batch): the new process
    runs what the old one owed, finds nothing new to train, resumes the publishing where it stopped, and announces
    v1; until then Label Studio is told no version, and /status says the publishing is not finished."""
    ls = label_studio.client()
    project, ml_id, _ = _project(ls, backend, "Promises: restart while publishing", seed=4)
    start_training(ls, ml_id)
    wait_until(lambda: (backend.status(project).get("publishing") or {}).get("written", 0) >= 500, RUN_TIMEOUT_S,
               "the first batch of v1 to be written", interval_s=0.05)
    child = backend.training_child()
    if child is not None:
        os.kill(child, signal.SIGSTOP)
    written = len([t for t, c in versions_per_task(ls, project).items() if c["v1"]])
    backend.stop()
    backend.start()
    status = _wait_announced(backend, project)
    assert status["last_result"]["decision"].startswith("nothing new since v1") and "resumed publishing v1" in \
        status["last_result"]["decision"], status["last_result"]
    assert status["last_result"]["published"]["already_had_it"] >= written >= 500
    _assert_every_unlabelled_task_holds_the_version_once(ls, project, "v1")
    assert (ls.ml.get(id=ml_id).title or "").startswith("NER · v1 serving")


def test_a_publishing_child_killed_with_sigkill_is_named_in_status_and_resumed_by_the_next_setup(
        label_studio, backend):
    """Issue case 3, a killed process: /status names where publishing stopped and what resumes it; Label Studio's
    next /setup (it calls it whenever its Model page reads the backend) resumes it."""
    ls = label_studio.client()
    project, ml_id, _ = _project(ls, backend, "Promises: publishing killed", seed=5)
    start_training(ls, ml_id)
    child = _hold_publishing(backend, project)
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: not backend.status(project)["training"], bound("run ended"), "the killed run to end")
    status = backend.status(project)
    assert status["current_version"] == "v1" and status["announced_version"] is None
    [warning] = status["warnings"]
    assert warning.startswith("publishing v1 interrupted") and "resumes at the next /setup" in warning, warning
    ls.ml.get(id=ml_id)  # Label Studio checks the connection: /health and /setup
    _wait_announced(backend, project)
    _assert_every_unlabelled_task_holds_the_version_once(ls, project, "v1")
    assert backend.status(project)["warnings"] == []


def test_a_label_config_that_no_longer_fits_withdraws_the_version_and_says_to_train(label_studio, backend):
    """Issue case 5: Dish renamed to Food, Hours removed: the project's model version stops naming v1, publishing
    stops, /status and the card say what to do; Start Training makes a version that fits and is published."""
    ls = label_studio.client()
    config = read_label_config()
    project, ml_id, _ = _project(ls, backend, "Promises: label config changed", seed=6)
    start_training(ls, ml_id)
    _wait_announced(backend, project)
    assert ls.projects.get(id=project).model_version == "v1"

    changed = config.replace('value="Dish"', 'value="Food"').replace('<Label value="Hours"', '<Label value="Gone"')
    assert changed != config
    ls.projects.update(id=project, label_config=changed)  # PROJECT_UPDATED reaches the backend
    wait_until(lambda: ls.projects.get(id=project).model_version in ("", None), bound("label studio updated"),
               "the project's model version to stop naming v1")
    status = backend.status(project)
    [warning] = [w for w in status["warnings"] if "does not fit" in w]
    assert warning.startswith("v1 does not fit the labels (Dish, Hours not in the label config"), warning
    assert "press Start Training" in warning
    wait_until(lambda: "does not fit the labels" in (ls.ml.get(id=ml_id).title or ""), bound("label studio updated"),
               "the card to say so")

    start_training(ls, ml_id)  # the annotations still say Dish: those spans are dropped, the rest trains
    _wait_announced(backend, project, "v2")
    assert backend.status(project)["warnings"] == []
    assert ls.projects.get(id=project).model_version == "v2"


def test_a_data_field_renamed_in_the_label_config_is_named_in_status(label_studio, backend):
    """Issue case 5: `$text` changed to `$review` while the tasks hold `text`: /predict's empty answers are named."""
    ls = label_studio.client()
    config = read_label_config()
    project, ml_id, unlabelled = _project(ls, backend, "Promises: data field renamed", seed=7)
    start_training(ls, ml_id)
    _wait_announced(backend, project)
    ls.projects.update(id=project, label_config=config.replace('value="$text"', 'value="$review"'))
    # (Label Studio refuses new tasks without "review" now): a task whose prediction was deleted is asked for again
    for prediction in ls.predictions.list(task=unlabelled[0]):
        ls.predictions.delete(id=prediction.id)
    retrieve_predictions(ls, project, unlabelled[:1])
    wait_until(lambda: any("no field 'review'" in w for w in backend.status(project)["warnings"]), bound("run stage"),
               "the missing field to be named in /status")
    [warning] = [w for w in backend.status(project)["warnings"] if "no field 'review'" in w]
    assert "they hold 'text'" in warning
