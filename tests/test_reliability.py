"""Reliability: what the backend keeps true under bad input on every route, a training child killed at any stage
of its run, the whole server killed, a full disk, and Label Studio going away in the middle of a run.

Every property is a parametrized specification. The child-process tests use the real ``JobQueue`` (spawn, a
real child process) with ``staged_run`` as its target: a module-level function (the spawned child imports this
module by name) that runs the real ``train_project`` with fake training and a fake Label Studio, and kills
itself with SIGKILL at the stage named in the trigger's payload.
"""
from __future__ import annotations

import errno
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import backend.shared.store as store_module
from backend.model.metrics import EntityScore, Scores
from backend.training.annotated_cache import CACHE_NAME
from backend.serving.app import create_app
from backend.training.jobs import JobQueue
from backend.serving.service import NerService, RequestError, project_id
from backend.shared.settings import Settings
from backend.shared.store import MANIFEST, POINTER, PROMOTIONS, PUBLISHED, TEMPORARY_PREFIX, ModelStore
from backend.training.training_run import train_project
from tests.helpers.local_server import free_port, get_json, kill_server, start_server
from tests.helpers.waits import bound, wait_for
from tests.helpers.service_fakes import (
    CONFIG, CountingLoader, FakeJobs, FakeLabelStudio, add_version, annotated_task, write_model_folder,
)

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["Dish", "Price", "Cuisine"]
PROJECT = "3"
PROJECT_KEY = "3.1718000000"  # how /setup and /predict name project 3
WAIT_S = bound("child event")


# ==============================================================================================================
# 1. Bad input on every route: never a 500, a 400 naming the field, nothing written, no server path shown
# ==============================================================================================================
ROUTES = [("GET", "/health"), ("POST", "/setup"), ("POST", "/predict"), ("POST", "/webhook"), ("GET", "/versions"),
          ("GET", "/status"), ("GET", "/report")]


@dataclass(frozen=True)
class BadInput:
    """One bad request: its raw body and ``?project=`` value, and what it is wrong in.

    ``kind``: "body" (the body itself is unusable), "field" (a field of a JSON object has the wrong type or
    content; the project is valid), "project" (the project id is bad: in the body, and in ``?project=`` when
    ``query`` is set). ``field``: the word a 400's error must contain. ``spans``: for a /predict that is answered
    (200), the number of suggested spans per task, in order (a task without usable text gets an empty result;
    the other tasks of the batch still get theirs).
    """

    name: str
    body: bytes
    kind: str
    field: str
    query: str | None = None
    spans: tuple[int, ...] = ()


GOOD_TASK = {"id": 1, "data": {"text": "cheap pizza"}}  # two spans with CONFIG: cheap (Price), pizza (Dish)
_MISSING = object()


def _field(name: str, field: str, spans: tuple[int, ...] = (), **overrides: Any) -> BadInput:
    # the action is never a usable one, so the webhook must ignore every field case (and start nothing)
    body = {"project": PROJECT_KEY, "tasks": [GOOD_TASK], "label_config": CONFIG, "schema": CONFIG,
            "action": ["START_TRAINING"]}
    body.update(overrides)
    body = {k: v for k, v in body.items() if v is not _MISSING}
    return BadInput(name, json.dumps(body).encode(), "field", field, spans=spans)


def _config(name: str, config: Any) -> BadInput:
    return _field(f"label_config {name}", "label_config", (0,), label_config=config, schema=config)


BODY_INPUTS = [
    BadInput("empty body", b"", "body", "body"),
    BadInput("not JSON", b"{not json", "body", "body"),
    BadInput("not UTF-8", b"\xff\xfe{\x00", "body", "body"),
    BadInput("JSON list", json.dumps([{"project": PROJECT_KEY, "tasks": [GOOD_TASK]}]).encode(), "body", "body"),
    BadInput("JSON string", json.dumps(PROJECT_KEY).encode(), "body", "body"),
    BadInput("JSON null", b"null", "body", "body"),
    BadInput("JSON number", b"3", "body", "body"),
    BadInput("100,000 nested arrays", b"[" * 100_000, "body", "body"),  # json.loads: RecursionError
    BadInput("50,000 nested objects", b'{"a":' * 50_000 + b"0" + b"}" * 50_000, "body", "body"),
]

FIELD_INPUTS = [
    _field("tasks a string", "tasks", tasks="cheap pizza"),
    _field("tasks an object", "tasks", tasks=GOOD_TASK),
    _field("tasks a number", "tasks", tasks=3),
    _field("tasks null", "tasks", tasks=None),
    _field("tasks missing", "tasks", tasks=_MISSING),
    _field("tasks not objects", "tasks", (2, 0, 0, 0, 0), tasks=[GOOD_TASK, 5, "cheap pizza", None, [GOOD_TASK]]),
    _field("data a string", "data", (0, 2), tasks=[{"id": 2, "data": "cheap pizza"}, GOOD_TASK]),
    _field("data a list", "data", (0, 2), tasks=[{"id": 2, "data": ["cheap pizza"]}, GOOD_TASK]),
    _field("data null", "data", (0, 2), tasks=[{"id": 2, "data": None}, GOOD_TASK]),
    _field("data missing", "data", (0, 2), tasks=[{"id": 2}, GOOD_TASK]),
    _field("text a number", "text", (0, 2), tasks=[{"id": 2, "data": {"text": 5}}, GOOD_TASK]),
    _field("text a list", "text", (0, 2), tasks=[{"id": 2, "data": {"text": ["cheap pizza"]}}, GOOD_TASK]),
    _field("text an object", "text", (0, 2), tasks=[{"id": 2, "data": {"text": {"value": "pizza"}}}, GOOD_TASK]),
    _field("text null", "text", (0, 2), tasks=[{"id": 2, "data": {"text": None}}, GOOD_TASK]),
    _config("not XML", "cheap pizza <View"),
    _config("XML without Labels", '<View><Text name="text" value="$text"/></View>'),
    _config("Labels without a Text", '<View><Labels name="label" toName="text"><Label value="Dish"/></Labels></View>'),
    _config("an empty View", "<View></View>"),
    _config("a number", 5),
    _config("a list", [CONFIG]),
    _field("action a number", "action", (2,), action=5),
    _field("action an object", "action", (2,), action={"type": "START_TRAINING"}),
]

BAD_PROJECTS = [
    ("superscript two", "²"), ("full-width digits", "１２"), ("zero", "0"), ("minus one", "-1"),
    ("exponent", "1.5e3"), ("letters", "abc"), ("19 digits", "1" * 19), ("5000 digits", "9" * 5000),
    ("300 digits", "9" * 300), ("path up", "../../etc"), ("path through", "3/../4"), ("blank", "   "),
    ("empty", ""), ("a list", [3]), ("an object without id", {"title": "x"}), ("an object with a bad id", {"id": "../3"}),
    ("true", True), ("a float", 3.5), ("null", None), ("int zero", 0), ("int minus one", -1), ("int 20 digits", 10**19),
]


def _names_a_project(text: str) -> bool:
    try:
        project_id(text)
    except RequestError:
        return False
    return True


def _project_inputs() -> list[BadInput]:
    inputs = []
    for name, value in BAD_PROJECTS:
        body = json.dumps({"project": value, "tasks": [GOOD_TASK], "label_config": CONFIG, "schema": CONFIG,
                           "action": "START_TRAINING"}).encode()
        inputs.append(BadInput(f"project {name} in the body", body, "project", "project"))
        query = value if isinstance(value, str) else json.dumps(value)
        if not _names_a_project(query):  # the float 3.5 is no id, but the text "3.5" is "<id>.<timestamp>"
            inputs.append(BadInput(f"project {name} in ?project=", body, "project", "project", query=query))
    missing = json.dumps({"tasks": [GOOD_TASK], "label_config": CONFIG, "action": "START_TRAINING"}).encode()
    inputs.append(BadInput("project missing", missing, "project", "project"))
    return inputs


BAD_INPUTS = BODY_INPUTS + FIELD_INPUTS + _project_inputs()
CASES = [(route, bad) for route in ROUTES for bad in BAD_INPUTS]
CASE_IDS = [f"{method} {path} | {bad.name}" for (method, path), bad in CASES]


def _json_object(body: bytes) -> dict | None:
    try:
        value = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def expected_answer(route: tuple[str, str], bad: BadInput) -> tuple[int, str | None]:
    """The status a route must answer ``bad`` with, and the word its 400 error must contain.

    /health and /webhook always answer 200. The GET routes read the project from ``?project=`` (/versions also
    from a JSON body's "project"); /status ignores a body; /report needs ``?project=``. /setup and /predict need a
    JSON object; /predict needs "tasks" to be a list; both need a valid project.
    """
    path = route[1]
    if path in ("/health", "/webhook"):
        return 200, None
    if bad.query is not None and path in ("/versions", "/status", "/report"):
        return 400, "project"
    if path == "/status":
        return 200, None
    if path == "/report":
        return 400, "project"
    body = _json_object(bad.body)
    if path == "/versions":
        named = bad.kind == "project" and body is not None and body.get("project") is not None
        return (400, "project") if named else (200, None)
    if body is None:
        return 400, "body"
    if path == "/predict" and bad.field == "tasks" and not isinstance(body.get("tasks"), list):
        return 400, "tasks"
    if bad.kind == "project":
        return 400, "project"
    return 200, None


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def matrix(tmp_path):
    """A store with v1 of project 3 and a builder of the app over it (FakeJobs, CountingLoader)."""
    settings = Settings(model_dir=tmp_path / "models", train_every_n=1)  # any counted event would start a run
    store = ModelStore(settings.model_dir)
    add_version(store, PROJECT, LABELS)
    store.record_publishing(PROJECT, {"version": "v1", "state": "published"})  # so /setup has nothing to publish
    jobs = FakeJobs()

    def client(**changes):
        changed = replace(settings, **changes)
        service = NerService(changed, store=store, jobs=jobs, load_predictor=CountingLoader())
        return create_app(changed, service).test_client()

    return SimpleNamespace(tmp_path=tmp_path, root=settings.model_dir, jobs=jobs, client=client)


def _send(client, route: tuple[str, str], bad: BadInput, **extra):
    method, path = route
    query = {"project": bad.query} if bad.query is not None else None
    return client.open(path, method=method, data=bad.body, content_type="application/json", query_string=query,
                       **extra)


def _check_answered(path: str, bad: BadInput, answer) -> None:
    """What a 200 must hold, route by route."""
    data = answer.json
    if path == "/health":
        assert data["status"] == "UP"
    elif path == "/webhook":
        assert data["status"] == "ok" and data["decision"].startswith("ignored"), data
    elif path == "/setup":
        assert isinstance(data["model_version"], str) and data["model_version"]
    elif path == "/predict":
        results = data["results"]
        assert [len(r["result"]) for r in results] == list(bad.spans), results
        assert all(isinstance(r["model_version"], str) and isinstance(r["score"], float) for r in results)
    elif path == "/versions":
        assert isinstance(data["versions"], list) and "v1" in data["versions"]
    elif path == "/status":
        assert isinstance(data["projects"], dict)


def test_the_bad_input_matrix_covers_every_route_with_every_kind_of_bad_input():
    print(f"bad-input matrix: {len(ROUTES)} routes x {len(BAD_INPUTS)} inputs = {len(CASES)} cases, "
          f"each also with basic auth on")
    assert {path for _, path in ROUTES} == {"/health", "/setup", "/predict", "/webhook", "/versions", "/status",
                                            "/report"}
    assert len(BAD_INPUTS) >= 60 and len(CASES) >= 400
    assert {bad.kind for bad in BAD_INPUTS} == {"body", "field", "project"}
    # every bad project id goes in the body, and in ?project= too unless its text form is a project id
    assert sum(bad.query is not None for bad in BAD_INPUTS) == len(BAD_PROJECTS) - 1


@pytest.mark.parametrize("route, bad", CASES, ids=CASE_IDS)
def test_a_bad_request_is_a_400_naming_the_field_never_a_500_and_writes_nothing(matrix, route, bad):
    before = _listing(matrix.root)
    answer = _send(matrix.client(), route, bad)
    status, word = expected_answer(route, bad)
    text = answer.get_data(as_text=True)
    assert answer.status_code == status, text[:500]
    if status == 400:
        assert word in answer.json["error"], answer.json
    else:
        _check_answered(route[1], bad, answer)
    assert str(matrix.tmp_path) not in text, "a server path leaked into the answer"
    assert _listing(matrix.root) == before, "a bad request created something under MODEL_DIR"
    assert matrix.jobs.triggers == [], "a bad request started a training run"


@pytest.mark.parametrize("route, bad", CASES, ids=CASE_IDS)
def test_with_basic_auth_on_a_bad_request_without_credentials_is_refused_before_it_is_read(matrix, route, bad):
    before = _listing(matrix.root)
    answer = _send(matrix.client(basic_auth_user="ls", basic_auth_pass="pw"), route, bad)
    text = answer.get_data(as_text=True)
    if route[1] == "/health":
        assert answer.status_code == 200 and answer.json["status"] == "UP"
    else:
        assert answer.status_code == 401, text[:500]
        assert "authentication required" in answer.json["error"]
        assert answer.headers["WWW-Authenticate"].startswith("Basic")
    assert str(matrix.tmp_path) not in text
    assert _listing(matrix.root) == before
    assert matrix.jobs.triggers == []


# ==============================================================================================================
# The training child: the real train_project with fake training and Label Studio, killing itself on demand
# ==============================================================================================================
TEXTS = ["cheap pizza near me", "thai food please", "sushi for two", "where can i get cheap sushi",
         "best thai pizza", "a quiet pizza place", "pizza and sushi", "cheap eats downtown", "thai curry", "open late"]


def _kill_self() -> None:
    """What `kill -9` of the training child does, from inside it, at the exact point of the call."""
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # never reached: SIGKILL to oneself is delivered before os.kill returns


class _StagedLabelStudio(FakeLabelStudio):
    def __init__(self, stage: str):
        super().__init__([annotated_task(i + 1, text) for i, text in enumerate(TEXTS)])
        self.stage = stage
        # every run after the first ("first": the fixture's v1) sees its annotations edited (a new update time), so
        # it has something new to train on instead of answering "nothing new since v1"
        if stage != "first":
            for task in self.tasks:
                task["annotations"][0]["updated_at"] = datetime.now(timezone.utc).isoformat()

    def _fetching(self) -> None:
        if self.stage == "fetch":
            _kill_self()
        if self.stage == "label-studio-down-at-fetch":
            raise ConnectionError("Label Studio is down")

    def annotated_tasks(self, project: int, changed_since: str | None = None) -> list[dict]:
        self._fetching()  # a full read (nothing kept)
        return super().annotated_tasks(project, changed_since)

    def annotated_stamps(self, project: int, changed_since: str | None = None) -> dict[int, str]:
        self._fetching()  # an incremental read starts here
        return super().annotated_stamps(project, changed_since)

    def write_instruction_block(self, project: int, block_html: str) -> None:
        if self.stage == "report":
            _kill_self()
        if self.stage == "label-studio-down-at-report":
            raise ConnectionError("Label Studio is down")
        super().write_instruction_block(project, block_html)


class _StagedTraining:
    """train_fn / evaluate_fn: a model folder (config.json, then the weights) and F1 0.8 for every model."""

    def __init__(self, stage: str):
        self.stage = stage

    def train(self, examples, bio_labels, config, out_dir, validation=None, progress=None):
        if self.stage == "train":
            _kill_self()
        if self.stage == "disk-full":
            raise OSError(errno.ENOSPC, "No space left on device")
        out_dir = Path(out_dir)
        write_model_folder(out_dir, [tag[2:] for tag in bio_labels[1::2]])
        if self.stage == "save":
            _kill_self()  # config.json is written, the weights are not
        (out_dir / "model.safetensors").write_bytes(b"\0" * 1024)
        if progress is not None:
            progress(SimpleNamespace(step=1, total_steps=1, epoch=1.0, elapsed_s=0.1))
        return SimpleNamespace(model_dir=out_dir, metrics={})

    def evaluate(self, model_dir, examples):
        score = EntityScore(0.8, 0.8, 0.8, len(examples))
        return Scores(score, {"Dish": score})


class _StagedStore(ModelStore):
    def __init__(self, root: Path, stage: str):
        super().__init__(root)
        self.stage = stage

    def commit(self, project, temporary_dir, manifest):
        version = super().commit(project, temporary_dir, manifest)
        if self.stage == "commit":
            _kill_self()  # renamed into place; commit has not returned, nothing promoted
        return version

    def promote(self, project, version, announce=True):
        if self.stage == "promote":
            _kill_self()  # before the pointer is written
        super().promote(project, version, announce)


def _arm(stage: str) -> None:
    """Kills inside the store's own code (the child dies, so patching its modules is harmless)."""
    if stage == "promote-after-pointer":  # current.json replaced, promotions.json not yet
        write = store_module.write_json_atomically

        def write_json(path, data):
            if Path(path).name == PROMOTIONS:
                _kill_self()
            write(path, data)

        store_module.write_json_atomically = write_json
    elif stage == "pointer-write":  # the new pointer fully written to its .part file, not yet renamed over
        rename = os.replace

        def replace_file(source, target, *args, **kwargs):
            if Path(target).name == POINTER:
                _kill_self()
            return rename(source, target, *args, **kwargs)

        os.replace = replace_file
    elif stage == "prune":  # an old version renamed to its doomed name, not yet deleted
        remove = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            if "-deleting-" in Path(path).name:
                _kill_self()
            return remove(path, *args, **kwargs)

        shutil.rmtree = rmtree


def staged_run(settings: Settings, project: str, payload: dict, progress) -> dict:
    """The JobQueue target: one real training run of ``project`` that dies at ``payload["stage"]``."""
    stage = payload.get("stage", "none")
    if stage == "exit-at-once":
        os._exit(1)  # dies without writing its status
    _arm(stage)
    training = _StagedTraining(stage)
    return train_project(settings, project, _StagedLabelStudio(stage), _StagedStore(settings.model_dir, stage),
                         progress, train_fn=training.train, evaluate_fn=training.evaluate)


# --- the parent's side ----------------------------------------------------------------------------------------
@pytest.fixture
def trained(tmp_path):
    """Settings and a store whose project 3 has one good version, v1, promoted (trained in this process)."""
    # publishing off: a promotion is announced at once (test_publishing.py and tests/e2e/test_promises.py kill and
    # restart publishing runs)
    settings = Settings(model_dir=tmp_path / "models", base_model="fake-base", train_every_n=0,
                        publish_predictions=False)
    store = ModelStore(settings.model_dir)
    training = _StagedTraining("none")
    summary = train_project(settings, PROJECT, _StagedLabelStudio("first"), store, train_fn=training.train,
                            evaluate_fn=training.evaluate)
    assert (summary["version"], summary["promoted"], store.current(PROJECT)) == ("v1", True, "v1")
    return settings, store


@pytest.fixture
def queues():
    made = []

    def build(settings: Settings) -> JobQueue:
        queue = JobQueue(functools.partial(staged_run, settings), Path(settings.model_dir) / ".jobs")
        made.append(queue)
        return queue

    yield build
    for queue in made:
        queue.shutdown()


def _run(queue: JobQueue, stage: str):
    assert queue.trigger(PROJECT, {"stage": stage}) == "started"
    assert queue.wait_idle(PROJECT, WAIT_S), f"the run at stage {stage} did not end"
    return queue.status(PROJECT)


def _entries(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.project_dir(PROJECT).iterdir())


_PART_FILE = re.compile(r"\.(%s|%s)\..+\.part" % (re.escape(POINTER), re.escape(PROMOTIONS)))


def _leftovers(names: list[str]) -> list[str]:
    """What a killed writer may leave: a ``.tmp-*`` folder, or the ``.part`` file of a JSON write it was in."""
    return [name for name in names if name.startswith(TEMPORARY_PREFIX) or _PART_FILE.fullmatch(name)]


def _unexpected(names: list[str], allow_leftovers: bool = True) -> list[str]:
    """Entries of a project folder other than v<N> folders, current.json, promotions.json, the kept annotated tasks
    (and leftovers)."""
    allowed = set(_leftovers(names)) if allow_leftovers else set()
    return [name for name in names if not (re.fullmatch(r"v\d+", name) or name in (POINTER, PROMOTIONS, PUBLISHED,
                                                                                  CACHE_NAME) or name in allowed)]


def _assert_versions_complete(store: ModelStore) -> None:
    """A version folder exists complete (manifest and weights) or not at all."""
    for name in store.version_names(PROJECT):
        folder = store.version_dir(PROJECT, name)
        assert (folder / MANIFEST).is_file() and (folder / "model.safetensors").is_file(), f"{name} is half a version"


def _clean_in_a_new_process(root: Path) -> int:
    """``ModelStore.clean_temporary()`` as a restarted server runs it: in another process than the writer's."""
    code = ("import sys; from backend.shared.store import ModelStore; "
            "print(len(ModelStore(sys.argv[1]).clean_temporary()))")
    done = subprocess.run([sys.executable, "-c", code, str(root)], cwd=ROOT, capture_output=True, text=True,
                          timeout=WAIT_S)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def _client(settings: Settings, store: ModelStore, jobs: Any):
    service = NerService(settings, store=store, jobs=jobs, load_predictor=CountingLoader())
    return create_app(settings, service).test_client()


def _served_version(client) -> str:
    answer = client.post("/predict", json={"project": PROJECT_KEY, "label_config": CONFIG,
                                           "tasks": [{"id": 1, "data": {"text": "cheap pizza"}}]})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    result = answer.json["results"][0]
    assert len(result["result"]) == 2, "the served model gives its suggestions"
    return result["model_version"]


def _wait_served(client, version: str) -> str:
    """A promoted version is loaded in the background while the old one answers: ask until it serves."""
    served = [None]

    def serves() -> bool:
        served[0] = _served_version(client)
        return served[0] == version

    wait_for(serves, "version served")
    return served[0]


def _report_rows(html: str) -> dict[str, tuple[str, str]]:
    """/report's "All versions" table: version -> (promoted, serving)."""
    rows = re.findall(r"<tr><td>(v\d+)</td>(?:<td>[^<]*</td>){4}<td>(yes|no)</td><td>(yes|)</td></tr>", html)
    return {version: (promoted, serving) for version, promoted, serving in rows}


def _assert_store_agrees_with_the_pointer(client, store: ModelStore, pointer: str, named: set[str]) -> None:
    """store.promoted, /versions and /report all say: promoted = the versions the pointer has named."""
    assert store.current(PROJECT) == pointer
    assert store.promoted(PROJECT) == named, "a version the pointer never named counts as promoted (or vice versa)"
    listing = client.get(f"/versions?project={PROJECT}").json
    assert listing["current"] == pointer
    assert listing["versions"] == store.version_names(PROJECT)
    for detail in listing["details"]:
        assert detail["promoted"] == (detail["version"] in named), detail
        assert detail["current"] == (detail["version"] == pointer), detail
    rows = _report_rows(client.get(f"/report?project={PROJECT}").get_data(as_text=True))
    assert set(rows) == set(listing["versions"])
    for version, (promoted, serving) in rows.items():
        assert (promoted == "yes", serving == "yes") == (version in named, version == pointer), version


# ==============================================================================================================
# 2. kill -9 of the training child at each stage
# ==============================================================================================================
# stage -> the version the pointer names after the kill (the run's v2 once the pointer was replaced)
KILL_STAGES = [
    ("fetch", "v1"),
    ("train", "v1"),
    ("save", "v1"),
    ("commit", "v1"),
    ("promote", "v1"),
    ("promote-after-pointer", "v2"),
    ("prune", "v2"),
    ("report", "v2"),
    ("pointer-write", "v1"),  # a .part file of a dead writer is removed at start-up like a .tmp- folder
]


@pytest.mark.parametrize("stage, pointer", KILL_STAGES)
def test_a_training_child_killed_at_any_stage_leaves_a_store_that_serves_and_trains_again(
        trained, queues, stage, pointer):
    settings, store = trained
    if stage == "prune":
        settings = replace(settings, keep_versions=1)  # the run's promotion of v2 makes v1 one to delete
    queue = queues(settings)

    status = _run(queue, stage)
    assert status.last_error and "killed by signal 9" in status.last_error, status.last_error
    assert not status.running and not status.pending
    assert store.current(PROJECT) == pointer

    names = _entries(store)
    assert _unexpected(names) == [], names
    leftovers = _leftovers(names)
    assert len(leftovers) <= 1, names
    assert (len(leftovers) == 1) == (stage in ("train", "save", "prune", "pointer-write")), names
    _assert_versions_complete(store)
    assert _clean_in_a_new_process(settings.model_dir) == len(leftovers), f"not removed: {leftovers}"
    assert _unexpected(_entries(store), allow_leftovers=False) == []

    client = _client(settings, store, queue)
    project = client.get(f"/status?project={PROJECT}").json["projects"][PROJECT]
    assert project["training"] is False and "killed by signal 9" in project["last_error"]
    assert project["current_version"] == pointer
    assert _served_version(client) == pointer
    if stage == "prune":  # v1 was renamed away before the kill (and its rest removed just now)
        assert store.version_names(PROJECT) == ["v2"]
    # promoted: v1 and, once the pointer was replaced, v2; a v2 the pointer never named is not promoted
    _assert_store_agrees_with_the_pointer(client, store, pointer, {"v1", pointer})

    before = set(store.version_names(PROJECT))
    status = _run(queue, "none")
    assert status.last_error is None, status.last_error
    new = status.last_result["version"]
    assert status.last_result["promoted"] and new not in before
    assert store.current(PROJECT) == new and new in store.promoted(PROJECT)
    assert _unexpected(_entries(store), allow_leftovers=False) == []
    _assert_versions_complete(store)
    assert _wait_served(client, new) == new
    project = client.get(f"/status?project={PROJECT}").json["projects"][PROJECT]
    assert project["last_error"] is None and project["current_version"] == new


class _KilledHere(BaseException):
    """Stands in for SIGKILL in this process: nothing after the raise runs, and no `except Exception` sees it."""


def test_a_version_that_served_is_still_promoted_after_the_next_promotion(trained, monkeypatch):
    # the state the "promote-after-pointer" kill above leaves (shown there with a real child), then the next run
    settings, store = trained
    write = store_module.write_json_atomically

    def write_json(path, data):
        if Path(path).name == PROMOTIONS:
            raise _KilledHere()
        write(path, data)

    training = _StagedTraining("none")
    monkeypatch.setattr(store_module, "write_json_atomically", write_json)
    with pytest.raises(_KilledHere):
        train_project(settings, PROJECT, _StagedLabelStudio("none"), store, train_fn=training.train,
                      evaluate_fn=training.evaluate)
    monkeypatch.setattr(store_module, "write_json_atomically", write)
    assert store.current(PROJECT) == "v2" and store.promoted(PROJECT) == {"v1", "v2"}  # v2 serves
    train_project(settings, PROJECT, _StagedLabelStudio("none"), store, train_fn=training.train,
                  evaluate_fn=training.evaluate)
    assert store.current(PROJECT) == "v3"
    assert store.promoted(PROJECT) == {"v1", "v2", "v3"}


# ==============================================================================================================
# 3. kill -9 of the whole server
# ==============================================================================================================
def _dead_writer_leftover(store: ModelStore, tag: str) -> Path:
    """A ``.tmp-<pid>.<start>-<tag>`` folder as a training killed mid-write leaves it: its writer (a short
    process started and waited for here) no longer runs."""
    writer = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        start = Path(f"/proc/{writer.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    finally:
        writer.stdin.close()
        writer.wait(WAIT_S)
    folder = store.project_dir(PROJECT) / f"{TEMPORARY_PREFIX}{writer.pid}.{start}-{tag}"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


@pytest.mark.parametrize("writer, removed", [("dead", True), ("alive", False), ("its pid now another process's", True)])
def test_start_up_cleaning_removes_a_leftover_only_when_its_writer_is_gone(tmp_path, writer, removed):
    # a second server (or a restarted one) on the same MODEL_DIR must never delete a training in progress
    store = ModelStore(tmp_path / "models")
    add_version(store, PROJECT, LABELS)
    if writer == "dead":
        leftover = _dead_writer_leftover(store, "x")
    else:
        running = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        if writer != "dead":
            start = Path(f"/proc/{running.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
            if writer != "alive":
                start = str(int(start) + 1)  # the pid's process started at another time than the writer
            leftover = store.project_dir(PROJECT) / f"{TEMPORARY_PREFIX}{running.pid}.{start}-x"
            leftover.mkdir()
        assert _clean_in_a_new_process(store.root) == int(removed)
        assert leftover.exists() is not removed
        assert store.version_names(PROJECT) == ["v1"] and store.current(PROJECT) == "v1"
    finally:
        if writer != "dead":
            running.stdin.close()
            running.wait(WAIT_S)


def test_a_server_killed_with_sigkill_restarts_serving_v1_and_removes_a_dead_writers_leftover(tmp_path):
    root = tmp_path / "models"
    store = ModelStore(root)
    add_version(store, PROJECT, LABELS)  # config.json only: never ask /predict of it here
    at_first_start = _dead_writer_leftover(store, "x")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASIC_AUTH_", "LABEL_STUDIO_"))
           and k not in ("START_MODEL", "HOST", "PORT", "KEEP_VERSIONS", "MODEL_DIR", "TRAIN_EVERY_N")}
    env.update({"MODEL_DIR": str(root), "TRAIN_EVERY_N": "0", "PYTHONUNBUFFERED": "1"})
    port, log = free_port(), tmp_path / "server.log"

    server = start_server(env, port, log)
    try:
        assert get_json(port, "/health") == (200, {"status": "UP", "model_class": "NerBackend"})
        assert not at_first_start.exists(), "start-up removes a dead writer's leftover"
        killed_with_the_server = _dead_writer_leftover(store, "x")
        kill_server(server)
        with pytest.raises(OSError):
            get_json(port, "/health", timeout=1)
        assert killed_with_the_server.exists()

        server = start_server(env, port, log)
        status, body = get_json(port, f"/status?project={PROJECT}")
        assert status == 200
        project = body["projects"][PROJECT]
        assert project["current_version"] == "v1" and project["training"] is False
        assert project["last_error"] is None and project["warnings"] == []
        assert not killed_with_the_server.exists(), "the restart removed the leftover"
        assert _leftovers(_entries(store)) == []
        status, listing = get_json(port, f"/versions?project={PROJECT}")
        assert status == 200 and listing["versions"] == ["v1"] and listing["current"] == "v1"
        assert [(d["version"], d["promoted"], d["current"]) for d in listing["details"]] == [("v1", True, True)]
    finally:
        kill_server(server)


# ==============================================================================================================
# 4. A full disk
# ==============================================================================================================
def test_a_full_disk_in_the_training_child_is_reported_with_what_to_do_and_v1_serves(trained, queues):
    settings, store = trained
    queue = queues(settings)
    status = _run(queue, "disk-full")
    assert "No space left on device" in status.last_error
    assert "the disk holding MODEL_DIR is full" in status.last_error and "free space" in status.last_error
    assert not status.running
    assert _leftovers(_entries(store)) == [], "train_project removes its temporary folder"
    assert store.version_names(PROJECT) == ["v1"] and store.current(PROJECT) == "v1"
    client = _client(settings, store, queue)
    project = client.get(f"/status?project={PROJECT}").json["projects"][PROJECT]
    assert project["last_error"] == status.last_error and project["current_version"] == "v1"
    assert _served_version(client) == "v1"


@pytest.mark.parametrize("free_mb, says", [(3.0, "the disk holding MODEL_DIR is full (3 MB free)"),
                                           (50_000.0, "ended with exit code 1 without a result")])
def test_a_child_that_dies_without_its_status_is_blamed_on_the_disk_only_when_it_is_nearly_full(
        trained, queues, monkeypatch, free_mb, says):
    settings, store = trained
    monkeypatch.setattr("backend.training.jobs.free_megabytes", lambda path: free_mb)
    queue = queues(settings)
    status = _run(queue, "exit-at-once")
    assert says in status.last_error, status.last_error
    assert ("disk" in status.last_error) == (free_mb < 16)
    assert store.current(PROJECT) == "v1"
    assert _served_version(_client(settings, store, queue)) == "v1"


# ==============================================================================================================
# 5. Label Studio stopped in the middle of a run
# ==============================================================================================================
def test_label_studio_down_when_the_scores_are_written_back_keeps_the_new_version_and_warns(trained, queues):
    settings, store = trained
    queue = queues(settings)
    status = _run(queue, "label-studio-down-at-report")
    assert status.last_error is None
    assert status.last_result["version"] == "v2" and status.last_result["promoted"]
    assert "Label Studio is down" in status.last_result["report_error"]
    assert store.current(PROJECT) == "v2" and store.promoted(PROJECT) == {"v1", "v2"}
    client = _client(settings, store, queue)
    project = client.get(f"/status?project={PROJECT}").json["projects"][PROJECT]
    assert project["current_version"] == "v2"
    warnings = [w for w in project["warnings"] if "could not be written into Label Studio" in w]
    assert len(warnings) == 1 and "v2" in warnings[0] and "Label Studio is down" in warnings[0], project["warnings"]
    assert _wait_served(client, "v2") == "v2"


def test_label_studio_down_when_the_annotations_are_fetched_fails_the_run_by_name_and_v1_serves(trained, queues):
    settings, store = trained
    queue = queues(settings)
    status = _run(queue, "label-studio-down-at-fetch")
    assert status.last_error == "ConnectionError: Label Studio is down"
    assert store.version_names(PROJECT) == ["v1"] and store.current(PROJECT) == "v1"
    assert _leftovers(_entries(store)) == []
    client = _client(settings, store, queue)
    project = client.get(f"/status?project={PROJECT}").json["projects"][PROJECT]
    assert "Label Studio is down" in project["last_error"] and project["training"] is False
    assert _served_version(client) == "v1"
