"""Request bodies that nest deeper than MAX_JSON_DEPTH: /setup and /predict answer 400 naming the limit, /webhook
answers 200 "ignored", never a 500 (Python's json raises RecursionError near 1000 levels); a body at the limit is
answered as usual; brackets inside JSON strings do not count. Through the Flask test client, and once through a
real server process."""
from __future__ import annotations

import json
import os
import random
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from backend.serving.app import MAX_JSON_DEPTH, create_app, json_depth
from backend.serving.service import NerService
from backend.shared.settings import Settings
from backend.shared.store import ModelStore
from tests.helpers.service_fakes import CONFIG, CountingLoader, FakeJobs, add_version
from tests.helpers.local_server import free_port, kill_server, start_server

LIMIT = MAX_JSON_DEPTH
PROJECT = "3"
PROJECT_KEY = "3.1718000000"  # how Label Studio names project 3 in /setup and /predict
TOO_DEEP = f"nests deeper than {LIMIT} levels"
WEBHOOK_TOO_DEEP = {"status": "ok", "action": "", "project": None,
                    "decision": f"ignored: the body nests deeper than {LIMIT} levels"}

# What json.loads cannot parse (RecursionError at ~1000 levels), open and closed.
FAR_TOO_DEEP = {
    "100,000 nested arrays": b"[" * 100_000,
    "100,000 nested arrays, closed": b"[" * 100_000 + b"]" * 100_000,
    "50,000 nested objects": b'{"a":' * 50_000,
    "50,000 nested objects, closed": b'{"a":' * 50_000 + b"0" + b"}" * 50_000,
    "100,000 nested arrays in a usable body": b'{"project": "3.1718000000", "tasks": ' + b"[" * 100_000,
}

# A string a naive bracket count would get wrong: brackets, an escaped quote followed by brackets, and a backslash
# at its end (JSON: ...\\" : the quote closes the string).
TRAP = "[{" * 50_000 + '"]]]}}}' + "[[{" * 1000 + "\\"


def reference_depth(value: Any) -> int:
    """The depth of a parsed value, recursively (for the shallow values of these tests)."""
    if isinstance(value, list):
        return 1 + max((reference_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((reference_depth(v) for v in value.values()), default=0)
    return 0


def nested(depth: int, kind: str, inner: Any = 0) -> Any:
    """A value of exactly ``depth`` levels of arrays or objects around ``inner``."""
    value = inner
    for _ in range(depth):
        value = [value] if kind == "arrays" else {"a": value}
    return value


def usable_body(path: str, depth: int, kind: str, inner: Any = 0) -> dict:
    """A body the route answers as usual, nesting exactly ``depth`` levels in all around ``inner`` (the nesting in a
    field the route does not read: task data for /predict, as a project's own data would)."""
    if path == "/predict":  # body > tasks > task > data > meta
        task = {"id": 1, "data": {"text": "cheap pizza", "meta": nested(depth - 4, kind, inner)}}
        body = {"project": PROJECT_KEY, "tasks": [task], "label_config": CONFIG}
    elif path == "/setup":
        body = {"project": PROJECT_KEY, "schema": CONFIG, "extra": nested(depth - 1, kind, inner)}
    else:
        body = {"action": "START_TRAINING", "project": PROJECT_KEY, "extra": nested(depth - 1, kind, inner)}
    assert reference_depth(body) == depth + reference_depth(inner)
    return body


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def backend(tmp_path):
    """Project 3 with v1 served (its predictions already published, so /setup starts nothing) and a fresh app per
    call (FakeJobs records what would start)."""
    settings = Settings(model_dir=tmp_path / "models", train_every_n=1)  # any counted event would start a run
    store = ModelStore(settings.model_dir)
    add_version(store, PROJECT, ["Dish", "Price", "Cuisine"])
    store.record_publishing(PROJECT, {"version": "v1", "state": "published"})
    jobs = FakeJobs()

    def post(path: str, body: bytes):
        service = NerService(settings, store=store, jobs=jobs, load_predictor=CountingLoader())
        return create_app(settings, service).test_client().post(path, data=body, content_type="application/json")

    return SimpleNamespace(post=post, jobs=jobs, root=settings.model_dir, tmp_path=tmp_path)


def _assert_refused(path: str, answer) -> None:
    text = answer.get_data(as_text=True)
    if path == "/webhook":
        assert answer.status_code == 200, text[:300]
        assert answer.json == WEBHOOK_TOO_DEEP
    else:
        assert answer.status_code == 400, text[:300]
        error = answer.json["error"]
        assert error.startswith(f"the request body {TOO_DEEP} of arrays and objects"), error


def _assert_answered_as_usual(path: str, answer, jobs: FakeJobs) -> None:
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    if path == "/setup":
        assert answer.json == {"model_version": "v1"}
    elif path == "/predict":
        [result] = answer.json["results"]
        assert result["model_version"] == "v1"
        assert [span["value"]["text"] for span in result["result"]] == ["cheap", "pizza"]
    else:
        assert answer.json == {"status": "ok", "action": "START_TRAINING", "project": PROJECT, "decision": "started"}
        assert [project for project, _ in jobs.triggers] == [PROJECT]


# ==============================================================================================================
# Every route that reads a JSON body
# ==============================================================================================================
@pytest.mark.parametrize("path", ["/setup", "/predict", "/webhook"])
@pytest.mark.parametrize("name", list(FAR_TOO_DEEP))
def test_a_body_nested_far_too_deep_is_refused_by_name_never_a_500(backend, path, name):
    before = _listing(backend.root)
    answer = backend.post(path, FAR_TOO_DEEP[name])
    _assert_refused(path, answer)
    assert str(backend.tmp_path) not in answer.get_data(as_text=True)
    assert _listing(backend.root) == before and backend.jobs.triggers == []


@pytest.mark.parametrize("path", ["/setup", "/predict", "/webhook"])
@pytest.mark.parametrize("kind", ["arrays", "objects"])
def test_a_body_at_the_limit_is_answered_as_usual_and_one_level_deeper_is_refused(backend, path, kind):
    at_limit = json.dumps(usable_body(path, LIMIT, kind)).encode()
    assert json_depth(json.loads(at_limit)) == LIMIT
    _assert_answered_as_usual(path, backend.post(path, at_limit), backend.jobs)

    backend.jobs.triggers.clear()
    over = json.dumps(usable_body(path, LIMIT + 1, kind)).encode()
    assert json_depth(json.loads(over)) == LIMIT + 1
    _assert_refused(path, backend.post(path, over))
    assert backend.jobs.triggers == []


@pytest.mark.parametrize("path", ["/setup", "/predict", "/webhook"])
def test_brackets_inside_json_strings_do_not_count(backend, path):
    # the deepest value of a body at the limit is an object whose key and value (100,000 brackets, an escaped quote
    # and a backslash) are strings full of brackets
    body = usable_body(path, LIMIT - 1, "arrays", inner={"[[[{{{": TRAP})
    raw = json.dumps(body).encode()
    assert raw.count(b"[") + raw.count(b"{") > 100_000 and json_depth(body) == LIMIT
    _assert_answered_as_usual(path, backend.post(path, raw), backend.jobs)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32-le"])
def test_a_body_in_utf_16_or_32_is_measured_like_its_utf_8(backend, encoding):
    # json.loads reads UTF-16 and UTF-32 bodies; their bytes hold brackets that are parts of other characters
    at_limit = json.dumps(usable_body("/setup", LIMIT, "arrays", inner="\u5b5b\u7b7b[{"), ensure_ascii=False)
    _assert_answered_as_usual("/setup", backend.post("/setup", at_limit.encode(encoding)), backend.jobs)
    over = json.dumps(usable_body("/setup", LIMIT + 1, "objects"), ensure_ascii=False)
    _assert_refused("/setup", backend.post("/setup", over.encode(encoding)))


def test_a_body_that_is_not_json_is_still_refused_as_such(backend):
    for raw in (b"[[[}", b'{"a": "\xff\xfe"}', b"\xff\xfe{\x00", b'{"project": "3"', b'["unterminated [[['):
        answer = backend.post("/setup", raw)
        assert answer.status_code == 400 and answer.json["error"] == "the request body is not valid JSON", raw


# ==============================================================================================================
# The measurement itself
# ==============================================================================================================
def _random_value(rng: random.Random, depth: int) -> Any:
    if depth == 0 or rng.random() < 0.3:
        return rng.choice([0, -1.5e3, True, None, "[{", ""])
    children = [_random_value(rng, depth - 1) for _ in range(rng.randrange(4))]
    if rng.random() < 0.5:
        return children
    return {f"k{i}": child for i, child in enumerate(children)}


def test_json_depth_agrees_with_a_recursive_count_on_random_documents():
    rng = random.Random(7)
    for _ in range(2000):
        value = _random_value(rng, rng.randrange(12))
        assert json_depth(value) == reference_depth(value), value
        assert json_depth(value, stop_above=3) > 3 or reference_depth(value) <= 3


def label_studio_predict_body() -> dict:
    """A /predict body as Label Studio 1.23 sends it, as deep as it gets: a task with its annotations (each with the
    prediction it started from), predictions and drafts, and an interactive request's context."""
    region = {"id": "r1", "from_name": "label", "to_name": "text", "type": "labels", "origin": "manual",
              "value": {"start": 0, "end": 5, "text": "cheap", "labels": ["Price"]}}
    task = {"id": 7, "data": {"text": "cheap pizza"}, "meta": {}, "is_labeled": True,
            "annotations": [{"id": 1, "result": [region], "was_cancelled": False, "lead_time": 3.2,
                             "prediction": {"result": [region], "score": 0.5, "model_version": "v1"}}],
            "predictions": [{"id": 2, "result": [region], "score": 0.5, "model_version": "v1"}],
            "drafts": [{"id": 3, "result": [region], "user": "a@b.c"}]}
    return {"tasks": [task], "model_version": "v1", "project": PROJECT_KEY, "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": {"result": [region]}}}


def label_studio_webhook_body() -> dict:
    """An ANNOTATION_CREATED webhook body: the annotation, its task and the project."""
    region = {"from_name": "label", "to_name": "text", "type": "labels",
              "value": {"start": 0, "end": 5, "text": "cheap", "labels": ["Price"]}}
    return {"action": "ANNOTATION_CREATED", "project": {"id": 3, "title": "Restaurants", "label_config": CONFIG},
            "task": {"id": 7, "data": {"text": "cheap pizza"}, "annotations": [{"id": 1, "result": [region]}]},
            "annotation": {"id": 1, "result": [region], "was_cancelled": False}}


def test_the_limit_leaves_label_studio_bodies_room_to_spare():
    predict, webhook = label_studio_predict_body(), label_studio_webhook_body()
    depths = {"predict": json_depth(predict), "webhook": json_depth(webhook)}
    print(f"Label Studio bodies nest {depths}; MAX_JSON_DEPTH = {LIMIT}")
    assert depths == {"predict": reference_depth(predict), "webhook": reference_depth(webhook)} == {"predict": 10,
                                                                                                    "webhook": 8}
    assert LIMIT >= 6 * max(depths.values()), "task data (the project's own JSON) needs room on top"
    assert LIMIT <= 200, "far below Python's recursion limit (1000), where json.loads fails"


# ==============================================================================================================
# A real server process
# ==============================================================================================================
def _post(port: int, path: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_a_real_server_refuses_bodies_nested_too_deep_and_answers_the_next_request(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASIC_AUTH_", "LABEL_STUDIO_"))
           and k not in ("START_MODEL", "HOST", "PORT", "KEEP_VERSIONS", "MODEL_DIR", "TRAIN_EVERY_N")}
    env.update({"MODEL_DIR": str(tmp_path / "models"), "TRAIN_EVERY_N": "0", "PYTHONUNBUFFERED": "1"})
    port, log = free_port(), tmp_path / "server.log"
    server = start_server(env, port, log)
    try:
        for body in (FAR_TOO_DEEP["100,000 nested arrays"], FAR_TOO_DEEP["50,000 nested objects, closed"]):
            for path in ("/setup", "/predict"):
                status, answer = _post(port, path, body)
                assert status == 400 and answer["error"].startswith(f"the request body {TOO_DEEP}"), answer
            assert _post(port, "/webhook", body) == (200, WEBHOOK_TOO_DEEP)
        over = json.dumps(usable_body("/setup", LIMIT + 1, "arrays")).encode()
        assert _post(port, "/setup", over)[0] == 400
        # at the limit: answered as usual (no version yet: "untrained")
        assert _post(port, "/setup", json.dumps(usable_body("/setup", LIMIT, "arrays")).encode()) == (
            200, {"model_version": "untrained"})
        status, answer = _post(port, "/predict", json.dumps(usable_body("/predict", LIMIT, "objects")).encode())
        assert status == 200 and answer["results"] == [{"result": [], "score": 0.0, "model_version": "untrained"}]
        # (an annotation event, counted: START_TRAINING would start a real training child)
        webhook = {"action": "ANNOTATION_CREATED", "project": PROJECT_KEY, "extra": nested(LIMIT - 1, "arrays")}
        assert _post(port, "/webhook", json.dumps(webhook).encode()) == (200, {
            "status": "ok", "action": "ANNOTATION_CREATED", "project": PROJECT,
            "decision": "counted: 1 of off new annotations"})
        assert server.poll() is None
    finally:
        kill_server(server)
    text = log.read_text()
    assert "RecursionError" not in text and "Traceback" not in text, text[-3000:]
