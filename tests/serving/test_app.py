"""The HTTP protocol Label Studio speaks to the backend, with a fake predictor and job queue behind it."""
import base64
import json
import time
from dataclasses import replace

import pytest

from backend.serving.app import create_app
from backend.serving.service import NerService
from backend.shared.settings import Settings
from backend.shared.store import ModelStore
from tests.helpers.waits import wait_for
from tests.helpers.service_fakes import CONFIG, CountingLoader, FakeJobs, add_version, write_model_folder

PROJECT = "3.1718000000"


def slow_run(project, payload, progress):
    """A training child that just takes its time (module level: the spawned child imports it)."""
    progress("training", step=1, total_steps=100)
    time.sleep(30)


@pytest.fixture
def settings(tmp_path):
    return Settings(model_dir=tmp_path / "models", train_every_n=3)


@pytest.fixture
def parts(settings):
    store, jobs, loader = ModelStore(settings.model_dir), FakeJobs(), CountingLoader()
    return store, jobs, loader


def _client(settings, parts):
    store, jobs, loader = parts
    return create_app(settings, NerService(settings, store=store, jobs=jobs, load_predictor=loader)).test_client()


@pytest.fixture
def client(settings, parts):
    return _client(settings, parts)


def _predict(client, texts, project=PROJECT, **extra):
    tasks = [{"id": i + 1, "data": {"text": t}} if t is not None else {"id": i + 1, "data": {}}
             for i, t in enumerate(texts)]
    return client.post("/predict", json={"tasks": tasks, "project": project, "label_config": CONFIG, **extra})


def test_health_answers_up_with_the_model_class(client):
    answer = client.get("/health")
    assert answer.status_code == 200 and answer.json["status"] == "UP" and answer.json["model_class"]


def test_predict_before_the_first_training_gives_one_empty_result_per_task(client):
    answer = _predict(client, ["cheap pizza", "thai food"])
    assert answer.status_code == 200
    assert answer.json["results"] == [{"result": [], "score": 0.0, "model_version": "untrained"}] * 2


def test_predict_gives_one_result_per_task_in_order_with_exact_offsets(client, parts):
    store, _, _ = parts
    add_version(store, "3", ["Dish", "Price", "Cuisine"])
    texts = ["cheap pizza here", "nothing to see", None, "", "sushi and thai"]
    results = _predict(client, texts).json["results"]
    assert len(results) == len(texts)
    labels = [[(r["value"]["text"], r["value"]["labels"][0]) for r in res["result"]] for res in results]
    assert labels == [[("cheap", "Price"), ("pizza", "Dish")], [], [], [], [("sushi", "Dish"), ("thai", "Cuisine")]]
    for text, result in zip(texts, results):
        assert result["model_version"] == "v1" and isinstance(result["score"], float)
        for span in result["result"]:
            assert text[span["value"]["start"]:span["value"]["end"]] == span["value"]["text"]
            assert (span["from_name"], span["to_name"], span["type"]) == ("label", "text", "labels")


def test_a_model_whose_labels_are_not_in_the_project_config_gives_empty_results_under_a_name_of_their_own(
        client, parts):
    # Label Studio keeps predictions per version name: empty ones under "v1" would never be asked for again
    # once the config fits v1 again.
    store, _, _ = parts
    add_version(store, "3", ["Dish", "Person"])
    results = _predict(client, ["cheap pizza"]).json["results"]
    assert results == [{"result": [], "score": 0.0, "model_version": "v1 (does not fit the label config)"}]
    setup = client.post("/setup", json={"project": PROJECT, "schema": CONFIG}).json
    assert setup == {"model_version": "v1 (does not fit the label config)"}


def test_a_fitting_start_model_serves_before_the_first_training(tmp_path, settings, parts):
    start = write_model_folder(tmp_path / "restaurant-start", ["Dish", "Price"])
    client = _client(replace(settings, start_model=start), parts)
    setup = client.post("/setup", json={"project": PROJECT, "schema": CONFIG})
    assert setup.json == {"model_version": "start-restaurant-start"}
    result = _predict(client, ["cheap pizza"]).json["results"][0]
    assert result["model_version"] == "start-restaurant-start" and len(result["result"]) == 2


def test_a_start_model_that_does_not_fit_gives_empty_results(tmp_path, settings, parts):
    start = write_model_folder(tmp_path / "news", ["PER", "ORG"])
    client = _client(replace(settings, start_model=start), parts)
    assert client.post("/setup", json={"project": PROJECT, "schema": CONFIG}).json == {"model_version": "untrained"}
    assert _predict(client, ["cheap pizza"]).json["results"][0]["result"] == []
    assert parts[2].loaded == [], "the unfitting start model is never even loaded"


def _versions_served(client, until):
    """Predict repeatedly until ``until`` serves; return every version seen (each request must succeed)."""
    seen = []

    def served() -> bool:
        answer = _predict(client, ["pizza"])
        assert answer.status_code == 200
        seen.append(answer.json["results"][0]["model_version"])
        return seen[-1] == until

    wait_for(served, "version served", interval_s=0.01)
    return seen


def test_a_promoted_version_is_served_without_a_restart(client, parts):
    store, _, loader = parts
    add_version(store, "3", ["Dish", "Price", "Cuisine"])
    assert _predict(client, ["pizza"]).json["results"][0]["model_version"] == "v1"
    add_version(store, "3", ["Dish", "Price", "Cuisine"], promote=False)
    assert _predict(client, ["pizza"]).json["results"][0]["model_version"] == "v1"
    add_version(store, "3", ["Dish", "Price", "Cuisine"])
    assert _versions_served(client, "v3")[-1] == "v3"
    _predict(client, ["pizza"])
    assert [p.name for p in loader.loaded] == ["v1", "v3"], "each version is loaded once"


def test_the_old_version_answers_while_the_new_one_loads(settings, parts):
    import threading

    store, jobs, loader = parts
    release = threading.Event()

    def slow_loader(model_dir):
        if model_dir.name == "v2":
            release.wait(10)
        return loader(model_dir)

    client = create_app(settings, NerService(settings, store=store, jobs=jobs, load_predictor=slow_loader)).test_client()
    add_version(store, "3", ["Dish", "Price", "Cuisine"])
    assert _predict(client, ["pizza"]).json["results"][0]["model_version"] == "v1"
    add_version(store, "3", ["Dish", "Price", "Cuisine"])
    started = time.perf_counter()
    during = [_predict(client, ["pizza"]).json["results"][0]["model_version"] for _ in range(3)]
    assert during == ["v1"] * 3 and time.perf_counter() - started < 2
    release.set()
    assert _versions_served(client, "v2")[-1] == "v2"


def test_setup_answers_the_current_version_fast_without_loading_anything(client, parts):
    store, _, loader = parts
    body = {"project": PROJECT, "schema": CONFIG, "hostname": "http://ls", "access_token": "t" * 40}
    assert client.post("/setup", json=body).json == {"model_version": "untrained"}
    add_version(store, "3", ["Dish"])
    started = time.perf_counter()
    answer = client.post("/setup", json=body)
    assert time.perf_counter() - started < 0.1
    assert answer.json == {"model_version": "v1"}


def test_several_projects_have_their_own_versions(client, parts):
    store, _, _ = parts
    add_version(store, "3", ["Dish"])
    add_version(store, "4", ["Dish"])
    add_version(store, "4", ["Dish"])
    assert _predict(client, ["pizza"], project="3.1").json["results"][0]["model_version"] == "v1"
    assert _predict(client, ["pizza"], project="4.1").json["results"][0]["model_version"] == "v2"


def test_start_training_always_starts_and_carries_setups_credentials(client, parts):
    client.post("/setup", json={"project": PROJECT, "schema": CONFIG, "hostname": "http://ls:8080",
                                "access_token": "abc"})
    answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3, "title": "x"}})
    assert answer.status_code == 200 and answer.json["decision"] == "started"
    assert parts[1].triggers == [("3", {"hostname": "http://ls:8080", "access_token": "abc"})]


def _set_up(client, project=PROJECT):
    assert client.post("/setup", json={"project": project, "schema": CONFIG}).status_code == 200


def test_every_nth_annotation_event_starts_training(client, parts):
    _set_up(client)
    actions = ["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "PROJECT_UPDATED", "ANNOTATIONS_DELETED",
               "ANNOTATION_CREATED", "ANNOTATION_CREATED"]
    for action in actions:
        assert client.post("/webhook", json={"action": action, "project": {"id": 3}}).status_code == 200
    # train_every_n=3: the 3rd and 6th annotation events (PROJECT_UPDATED does not count) -> one trigger so far
    assert [p for p, _ in parts[1].triggers] == ["3"]
    assert client.get("/status?project=3").json["projects"]["3"]["annotations_since_training"] == 2


def test_a_skipped_task_does_not_count_towards_training(client, parts):
    _set_up(client)
    skipped = {"action": "ANNOTATION_CREATED", "project": {"id": 3}, "annotation": {"id": 9, "was_cancelled": True}}
    for _ in range(3):
        assert "skipped" in client.post("/webhook", json=skipped).json["decision"]
    assert parts[1].triggers == []
    assert client.get("/status?project=3").json["projects"]["3"]["annotations_since_training"] == 0


def test_start_training_resets_the_annotation_count(client, parts):
    _set_up(client)
    client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 3}})
    client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
    client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 3}})
    client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 3}})
    assert len(parts[1].triggers) == 1


@pytest.mark.parametrize("body", [b"not json", b"", b"[1, 2]", json.dumps({"action": "SOMETHING_NEW"}).encode(),
                                  json.dumps({"action": "START_TRAINING"}).encode(),
                                  json.dumps({"action": "PROJECT_UPDATED", "project": {"id": 3}}).encode()])
def test_the_webhook_answers_200_fast_to_anything_and_ignores_what_it_cannot_use(client, parts, body):
    started = time.perf_counter()
    answer = client.post("/webhook", data=body, content_type="application/json")
    assert time.perf_counter() - started < 0.1
    assert answer.status_code == 200
    assert parts[1].triggers == []


def test_the_webhook_returns_within_100_ms_while_a_real_training_child_starts(tmp_path, settings):
    from backend.training.jobs import JobQueue

    jobs = JobQueue(slow_run, tmp_path / "jobs")
    client = create_app(settings, NerService(settings, jobs=jobs)).test_client()
    _set_up(client)
    try:
        started = time.perf_counter()
        answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}})
        assert time.perf_counter() - started < 0.1 and answer.json["decision"] == "started"
        assert client.get("/status").json["projects"]["3"]["training"] is True
    finally:
        jobs.shutdown()


@pytest.mark.parametrize("body, message", [
    (b"{not json", "not valid JSON"), (b"", "empty"), (json.dumps({"project": PROJECT}).encode(), "tasks"),
    (json.dumps({"tasks": [], "project": "abc"}).encode(), "project"),
])
def test_a_bad_predict_request_is_a_400_that_says_what_is_wrong(client, body, message):
    answer = client.post("/predict", data=body, content_type="application/json")
    assert answer.status_code == 400 and message in answer.json["error"]


def test_a_request_over_the_size_limit_is_refused_with_413_but_a_webhook_still_gets_200(settings, parts):
    client = _client(replace(settings, max_request_bytes=1000), parts)
    big = {"tasks": [{"data": {"text": "x" * 2000}}], "project": PROJECT}
    answer = client.post("/predict", json=big)
    assert answer.status_code == 413 and "MAX_REQUEST_BYTES" in answer.json["error"]
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3},
                                         "pad": "x" * 2000}).status_code == 200
    assert parts[1].triggers == []


def _basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_protects_everything_but_health(settings, parts):
    # Label Studio sends Start Training with the ML backend's basic auth; a project webhook sends the headers it
    # is given (docs/http.md): with auth on, an unauthenticated webhook is refused like any other data route
    client = _client(replace(settings, basic_auth_user="ls", basic_auth_pass="pw"), parts)
    requests = [("post", "/predict", {"tasks": [], "project": PROJECT}), ("post", "/setup", {"project": PROJECT}),
                ("get", "/versions?project=3", None), ("get", "/status", None), ("get", "/report?project=3", None),
                ("post", "/webhook", {"action": "START_TRAINING", "project": {"id": 3}})]
    for method, path, body in requests:
        assert getattr(client, method)(path, json=body).status_code == 401, path
        assert getattr(client, method)(path, json=body, headers=_basic("ls", "wrong")).status_code == 401, path
        assert getattr(client, method)(path, json=body, headers=_basic("ls", "pw")).status_code == 200, path
    assert client.get("/health").status_code == 200
    assert parts[1].triggers == [("3", {"hostname": None, "access_token": None})]  # the authenticated one


PUBLIC_PATHS = {"/", "/health"}


def test_every_route_but_the_public_ones_refuses_a_request_without_credentials(settings, parts):
    # Walks the app's own URL map: a route added or renamed later is checked too, without editing this test.
    app = create_app(replace(settings, basic_auth_user="ls", basic_auth_pass="pw"),
                     NerService(settings, store=parts[0], jobs=parts[1], load_predictor=parts[2]))
    client = app.test_client()
    routes = [(rule.rule, method) for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    assert {path for path, _ in routes} >= PUBLIC_PATHS | {"/predict", "/setup", "/versions", "/status", "/report"}
    for path, method in routes:
        answer = client.open(path, method=method, json={"project": PROJECT})
        if path in PUBLIC_PATHS:
            assert answer.status_code == 200, (method, path)
        else:
            assert answer.status_code == 401, (method, path)
            assert "authentication required" in answer.json["error"]


def test_versions_lists_readable_names_with_time_and_f1(client, parts):
    store, _, _ = parts
    add_version(store, "3", ["Dish"], f1=0.5)
    add_version(store, "3", ["Dish"], f1=0.4, promote=False)
    answer = client.get("/versions?project=3").json
    assert answer["versions"] == ["v1", "v2"] and answer["current"] == "v1"
    assert [(d["version"], d["f1"], d["promoted"], d["current"]) for d in answer["details"]] == \
        [("v1", 0.5, True, True), ("v2", 0.4, False, False)]
    assert all(d["created_at"].endswith("Z") for d in answer["details"])
    # a GET with a JSON body naming the project
    ls_style = client.open("/versions", method="GET", json={"project": PROJECT}).json
    assert ls_style["versions"] == ["v1", "v2"]


def test_versions_without_a_project_never_shows_two_alike(client, parts):
    # Label Studio 1.23's GET /versions carries no project: it gets every project's versions
    store, _, _ = parts
    add_version(store, "3", ["Dish"])
    add_version(store, "3", ["Dish"])
    assert client.get("/versions").json["versions"] == ["v1", "v2"]  # one project: plain names
    add_version(store, "5", ["Dish"])
    assert client.get("/versions").json["versions"] == ["3/v1", "3/v2", "5/v1"]


def test_status_shows_each_projects_version_and_training_state(client, parts):
    store, _, _ = parts
    add_version(store, "5", ["Dish"])
    client.post("/setup", json={"project": "6.1"})
    projects = client.get("/status").json["projects"]
    assert projects["5"]["current_version"] == "v1" and projects["5"]["training"] is False
    assert projects["6"]["current_version"] is None
    assert set(projects["5"]) >= {"progress", "last_error", "pending"}


def test_report_is_an_html_page_with_the_latest_scores(client, parts):
    store, _, _ = parts
    add_version(store, "3", ["Dish", "Price"], f1=0.75)
    answer = client.get("/report?project=3")
    assert answer.status_code == 200 and answer.mimetype == "text/html"
    assert "v1" in answer.text and 'style="width:75.0%"' in answer.text
    assert client.get("/report").status_code == 400


def test_report_says_a_run_is_going_as_status_says_it(settings, parts):
    from backend.training.jobs import JobProgress, JobStatus

    store, jobs, _ = parts
    jobs.status = lambda project: JobStatus(project, running=True,
                                            progress=JobProgress("training", step=3, total_steps=10, elapsed_s=4.0))
    client = _client(settings, parts)
    assert client.get("/status?project=3").json["projects"]["3"]["training"] is True
    assert "Training now: training step 3/10" in client.get("/report?project=3").text


def test_setup_loads_the_current_model_in_the_background_once(client, parts):
    store, _, loader = parts
    add_version(store, "3", ["Dish", "Price", "Cuisine"])
    for _ in range(5):
        client.post("/setup", json={"project": PROJECT, "schema": CONFIG})
    wait_for(lambda: loader.loaded, "model loaded", interval_s=0.01)
    assert _predict(client, ["pizza"]).json["results"][0]["model_version"] == "v1"
    assert [p.name for p in loader.loaded] == ["v1"]


def test_webhooks_for_projects_the_backend_does_not_know_change_nothing(client, parts):
    for project in range(100, 160):
        for action in ("START_TRAINING", "ANNOTATION_CREATED"):
            answer = client.post("/webhook", json={"action": action, "project": {"id": project}})
            assert answer.status_code == 200 and answer.json["decision"].startswith("ignored: unknown project")
    assert parts[1].triggers == []
    assert client.get("/status").json["projects"] == {}


def test_a_project_label_studio_confirms_is_acted_on(settings, parts):
    store, jobs, loader = parts
    asked = []
    service = NerService(settings, store=store, jobs=jobs, load_predictor=loader,
                         confirm_project=lambda project: asked.append(project) or project == "7")
    client = create_app(settings, service).test_client()
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 7}}).json["decision"] == "started"
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 8}}).json["decision"].startswith(
        "ignored")
    assert asked == ["7", "8"] and [p for p, _ in jobs.triggers] == ["7"]


def test_a_project_with_a_version_in_the_store_is_known_after_a_restart(client, parts):
    add_version(parts[0], "5", ["Dish"])
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 5}}).json["decision"] == "started"
