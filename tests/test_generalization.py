"""The product beyond the restaurant config: another label config (other names, data key, a Choices control), raw
texts of every kind (emoji, accents, CJK, tabs, very long), labels that do not fit, bad tasks, and the exporters."""
from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest

from backend.model.device import inference_placement
from backend.data.formats import read_conll2003
from backend.data.schema import parse_label_config
from backend.serving.service import NerService
from backend.training.training_run import train_project
from backend.model.config import RecipeOverrides
from backend.shared.settings import Settings
from backend.data.spans import ConversionReport, bio_to_spans
from backend.shared.store import ModelStore
from backend.data.tasks import task_to_example
from tests.helpers.service_fakes import FakeJobs, FakeLabelStudio

REVIEW_CONFIG = """<View>
  <Text name="review" value="$review"/>
  <Labels name="ner" toName="review"><Label value="PER"/><Label value="ORG"/><Label value="LOC"/></Labels>
  <Choices name="sentiment" toName="review"><Choice value="pos"/><Choice value="neg"/></Choices>
</View>"""
LABELS = ("PER", "ORG", "LOC")
PROJECT = "21"

# Entities with capitals, accents, non-Latin letters and several words; templates with punctuation and emoji.
ENTITIES = {
    "PER": ["Alice Martin", "José García", "Zoë", "Li Wei", "Olga Petrova", "Bob"],
    "ORG": ["Acme Corp", "Globex", "Société Générale", "Initech", "Umbrella Inc"],
    "LOC": ["Paris", "São Paulo", "Kyoto", "Zürich", "New York", "Lagos"],
}
TEMPLATES = [
    "{PER} works for {ORG} in {LOC}.",
    "Yesterday {PER} flew to {LOC}!",
    "{ORG} opened an office in {LOC} 😀",
    "I met {PER} at {ORG} , twice",
    "The weather in {LOC} was lovely",
    "{PER} and {PER} visited {LOC} last year",
    "no names here at all, just a nice review",
]
SEPARATORS = [" ", " ", " ", "  ", "\t", "\n"]


def review_task(task_id: int, rng: random.Random) -> dict:
    """A Label Studio task of REVIEW_CONFIG: raw text (mixed whitespace), ner spans, and a Choices result."""
    text, results = " " * rng.randint(0, 1), []
    for n, part in enumerate(rng.choice(TEMPLATES).split(" ")):
        if n:
            text += rng.choice(SEPARATORS)
        if part.startswith("{"):
            label = part[1:part.index("}")]
            entity = rng.choice(ENTITIES[label])
            results.append({"id": f"r{len(results)}", "from_name": "ner", "to_name": "review", "type": "labels",
                            "value": {"start": len(text), "end": len(text) + len(entity), "text": entity,
                                      "labels": [label]}})
            part = entity + part[part.index("}") + 1:]
        text += part
    results.append({"id": "c", "from_name": "sentiment", "to_name": "review", "type": "choices",
                    "value": {"choices": ["pos"]}})
    return {"id": task_id, "data": {"review": text, "author": "someone"},
            "annotations": [{"id": 1000 + task_id, "result": results, "was_cancelled": False}]}


def review_tasks(n: int, seed: int, first_id: int = 1) -> list[dict]:
    rng = random.Random(seed)
    return [review_task(first_id + i, rng) for i in range(n)]


def concatenated_task(task_id: int, tasks: list[dict]) -> dict:
    """One long task holding the texts and spans of ``tasks`` one after the other (newline-separated)."""
    text, results = "", []
    for task in tasks:
        offset = len(text)
        for result in task["annotations"][0]["result"]:
            if result["type"] == "labels":
                value = result["value"]
                results.append({**result, "id": f"r{len(results)}",
                                "value": {**value, "start": value["start"] + offset, "end": value["end"] + offset}})
        text += task["data"]["review"] + "\n"
    return {"id": task_id, "data": {"review": text},
            "annotations": [{"id": 1000 + task_id, "result": results, "was_cancelled": False}]}


def gold_spans(task: dict) -> list[tuple[int, int, str]]:
    return [(r["value"]["start"], r["value"]["end"], r["value"]["labels"][0])
            for r in task["annotations"][0]["result"] if r["type"] == "labels"]


def assert_valid_results(text: str, results: list[dict], labels=LABELS, from_name="ner", to_name="review"):
    """Label Studio results that point exactly into ``text``, with the config's names and labels only."""
    previous_end = 0
    for result in results:
        value = result["value"]
        assert (result["from_name"], result["to_name"], result["type"]) == (from_name, to_name, "labels")
        assert 0 <= value["start"] < value["end"] <= len(text) and value["start"] >= previous_end
        assert text[value["start"]:value["end"]] == value["text"] and value["text"].strip() == value["text"]
        assert len(value["labels"]) == 1 and value["labels"][0] in labels
        assert 0.0 <= result["score"] <= 1.0
        previous_end = value["end"]


@pytest.fixture(scope="module")
def review_base_model(tmp_path_factory) -> Path:
    """A tiny untrained BERT whose word-piece vocabulary comes from review texts (the shared ``tiny_base_model``
    knows only restaurant words, so names would be spelled letter by letter and barely learnt)."""
    from tests.helpers.tiny_model import build_tiny_model

    texts = [t["data"]["review"] for t in review_tasks(300, seed=0)]
    return build_tiny_model(tmp_path_factory.mktemp("review-base"), texts)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, review_base_model):
    """A tiny model trained on REVIEW_CONFIG tasks through the service's training job (fake Label Studio)."""
    settings = Settings(model_dir=tmp_path_factory.mktemp("models"), base_model=str(review_base_model),
                        training=RecipeOverrides.of(epochs=10, lr=3e-3, batch_size=16, threads=1,
                                               freeze_embeddings=False))
    # a few tasks far longer than the model's 128 positions: training must cut them into windows
    long_tasks = [concatenated_task(900 + i, review_tasks(40, seed=100 + i)) for i in range(3)]
    client = FakeLabelStudio(review_tasks(160, seed=1) + long_tasks, config=REVIEW_CONFIG)
    store = ModelStore(settings.model_dir)
    summary = train_project(settings, PROJECT, client, store)
    return settings, store, summary


@pytest.fixture(scope="module")
def service(trained):
    settings, store, _ = trained
    service = NerService(settings, store=store, jobs=FakeJobs())
    yield service
    service.shutdown()


@pytest.fixture(scope="module")
def predictor(trained):
    from backend.model.predict import Predictor

    settings, store, _ = trained
    return Predictor.load(store.version_dir(PROJECT, store.current(PROJECT)), device="cpu")


def predict_body(texts_or_tasks, config=REVIEW_CONFIG, project=PROJECT) -> dict:
    tasks = [t if isinstance(t, dict) else {"id": i + 1, "data": {"review": t}} for i, t in enumerate(texts_or_tasks)]
    return {"project": f"{project}.1718000000", "label_config": config, "tasks": tasks}


# --- another label config -----------------------------------------------------------------------------------------
def test_a_config_with_other_names_and_a_choices_control_gives_its_labels_text_pair():
    schema = parse_label_config(REVIEW_CONFIG)
    assert (schema.from_name, schema.to_name, schema.data_key, schema.labels) == ("ner", "review", "review", LABELS)
    assert schema.bio_labels == ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]


def test_a_text_tag_named_unlike_its_data_key_reads_the_data_key_from_value():
    schema = parse_label_config(REVIEW_CONFIG.replace('name="review" value="$review"', 'name="body" value="$review"')
                                .replace('toName="review"', 'toName="body"'))
    assert (schema.from_name, schema.to_name, schema.data_key) == ("ner", "body", "review")


def test_tasks_of_another_config_become_examples_whose_tags_give_back_the_annotated_spans():
    schema = parse_label_config(REVIEW_CONFIG)
    for task in review_tasks(60, seed=5) + [concatenated_task(99, review_tasks(30, seed=6))]:
        report = ConversionReport()
        example = task_to_example(task, schema, report)
        assert not report, report.summary()  # the Choices result is not a problem, just another control
        spans = bio_to_spans(example.text, example.words, example.tags)
        assert [(s.start, s.end, s.label) for s in spans] == gold_spans(task)


@pytest.mark.slow  # trains a tiny transformer (once per module)
def test_training_through_the_service_keeps_the_configs_labels_and_learns(trained):
    settings, store, summary = trained
    assert summary["version"] == "v1" and store.current(PROJECT) == "v1"
    assert summary["train_size"] + summary["validation_size"] == 163  # long tasks and all
    assert store.manifest(PROJECT, "v1").labels == list(LABELS)
    config = json.loads((store.version_dir(PROJECT, "v1") / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(config["id2label"]))] == \
        parse_label_config(REVIEW_CONFIG).bio_labels
    # far above chance on the held-out part of the project's own tasks
    assert summary["f1"] is not None and summary["f1"] > 0.5, summary


@pytest.mark.slow  # trains a tiny transformer (once per module)
def test_service_predictions_carry_the_configs_names_and_labels_one_result_per_task_in_order(service):
    tasks = review_tasks(12, seed=9, first_id=500)
    texts = [t["data"]["review"] for t in tasks]
    texts.insert(3, "")  # an empty text in the middle keeps its place
    results = service.predict(predict_body(texts))
    assert len(results) == len(texts) and results[3]["result"] == []
    assert all(r["model_version"] == "v1" for r in results)
    for text, result in zip(texts, results):
        assert_valid_results(text, result["result"])
    # in order: each task's answer is the answer it gets when sent alone
    for text, result in zip(texts, results):
        alone = service.predict(predict_body([text]))[0]["result"]
        assert [(r["value"]["start"], r["value"]["end"], r["value"]["labels"]) for r in alone] == \
            [(r["value"]["start"], r["value"]["end"], r["value"]["labels"]) for r in result["result"]]
    found = sum(len(r["result"]) for r in results)
    assert found > 0, "the trained model should find entities in texts like its training tasks"


# --- raw texts of every kind --------------------------------------------------------------------------------------
ODD_TEXTS = {
    "empty": "",
    "whitespace only": " \t\n\r\n  ",
    "leading and trailing whitespace": "\n\t  Alice Martin works for Acme Corp in Paris.  \n",
    "tabs and newlines": "Alice\tMartin\nworks for\r\nGlobex\tin\tKyoto",
    "emoji": "🍣🍣 Zoë 👩‍👩‍👧 flew to Paris 🇫🇷!",
    "accents": "José García et Société Générale à São Paulo, Zürich",
    "combining accents": "Jose\u0301 Garci\u0301a flew to Zu\u0308rich",
    "cjk": "李伟在东京工作。 Li Wei works in Kyoto 京都",
    "arabic and thai": "سافر أحمد إلى القاهرة และ กรุงเทพ",
    "one very long word": "Paris" + "x" * 3000 + " Kyoto",
    "control characters": "Alice\x00 Martin\u200b works\ufeff for Globex",
    "punctuation only": "!!! ... ??? --- ;;; 🙂",
}


@pytest.mark.slow  # trains a tiny transformer (once per module)
@pytest.mark.parametrize("name", list(ODD_TEXTS))
def test_the_predictor_returns_exact_offsets_inside_any_text(predictor, name):
    text = ODD_TEXTS[name]
    [prediction] = predictor.predict([text])
    assert 0.0 <= prediction.score <= 1.0
    for span in prediction.spans:
        assert 0 <= span.start < span.end <= len(text) and text[span.start:span.end] == span.text
        assert span.label in LABELS and span.text.strip() == span.text


@pytest.mark.slow  # trains a tiny transformer (once per module)
def test_odd_texts_in_one_batch_get_the_same_spans_as_one_at_a_time(predictor):
    texts = list(ODD_TEXTS.values())
    together = predictor.predict(texts)
    assert len(together) == len(texts)
    for text, prediction in zip(texts, together):
        [alone] = predictor.predict([text])
        assert [(s.start, s.end, s.label) for s in prediction.spans] == [(s.start, s.end, s.label) for s in alone.spans]


@pytest.mark.slow  # trains a tiny transformer (once per module)
@pytest.mark.parametrize("text", ["\u200b", "\x00 \ufeff", "\ufffd\ufffd", "\u0301", "\xad"])
def test_a_text_whose_only_characters_the_tokenizer_drops_gives_no_spans(predictor, text):
    assert predictor.predict([text])[0].spans == []


@pytest.mark.slow  # trains a tiny transformer (once per module)
def test_a_text_far_longer_than_the_model_is_predicted_to_its_end(predictor):
    rng = random.Random(3)
    sentences = []
    while sum(len(s.split()) for s in sentences) < 2000:
        task = review_task(0, rng)
        sentences.append(task["data"]["review"].strip())
    last = "Yesterday Olga Petrova flew to Lagos!"
    text = " ".join(sentences + [last])
    assert len(text.split()) > 2000 > 10 * predictor.max_length
    [prediction] = predictor.predict([text])
    for span in prediction.spans:
        assert text[span.start:span.end] == span.text and span.label in LABELS
    # windows, not truncation: entities are found all the way to the end of the text
    late = [s for s in prediction.spans if s.start > len(text) * 0.9]
    assert late, "no entity predicted in the last 10% of a long text"
    [alone] = predictor.predict([last])
    offset = len(text) - len(last)
    expected = {(s.start + offset, s.end + offset, s.label) for s in alone.spans}
    assert expected, "the model should find an entity in a sentence like its training tasks"
    assert expected <= {(s.start, s.end, s.label) for s in prediction.spans}


# --- labels that do not fit ---------------------------------------------------------------------------------------
RESTAURANT_LIKE = """<View><Labels name="label" toName="text"><Label value="Dish"/><Label value="Price"/></Labels>
<Text name="text" value="$text"/></View>"""
WIDER = """<View><Text name="doc" value="$content"/>
<Labels name="entities" toName="doc"><Label value="MISC"/><Label value="LOC"/><Label value="ORG"/><Label value="PER"/>
</Labels></View>"""


@pytest.mark.slow  # trains a tiny transformer (once per module)
def test_a_start_model_whose_labels_are_not_the_projects_gives_empty_results_never_foreign_labels(trained):
    settings, store, _ = trained
    start = store.version_dir(PROJECT, "v1")
    service = NerService(replace(settings, start_model=start), store=store, jobs=FakeJobs())
    text = "Alice Martin works for Acme Corp in Paris."
    results = service.predict({"project": "77.1", "label_config": RESTAURANT_LIKE,
                               "tasks": [{"id": 1, "data": {"text": text}}, {"id": 2, "data": {"text": ""}}]})
    assert [r["result"] for r in results] == [[], []] and results[0]["model_version"] == "untrained"


@pytest.mark.slow  # trains a tiny transformer (once per module)
def test_a_start_model_serves_a_project_with_more_labels_under_that_projects_names(trained):
    settings, store, _ = trained
    service = NerService(replace(settings, start_model=store.version_dir(PROJECT, "v1")), store=store,
                         jobs=FakeJobs())
    texts = [t["data"]["review"] for t in review_tasks(6, seed=11)]
    results = service.predict({"project": "78.1", "label_config": WIDER,
                               "tasks": [{"id": i, "data": {"content": t}} for i, t in enumerate(texts)]})
    assert len(results) == len(texts) and all(r["model_version"].startswith("start-") for r in results)
    assert any(r["result"] for r in results)
    for text, result in zip(texts, results):
        assert_valid_results(text, result["result"], labels=LABELS, from_name="entities", to_name="doc")


@pytest.mark.slow  # trains a tiny transformer (once per module)
def test_a_project_whose_config_dropped_a_label_of_its_model_gets_empty_results(service):
    config = REVIEW_CONFIG.replace('<Label value="LOC"/>', "")
    texts = ["Alice Martin works for Acme Corp in Paris.", "Yesterday Bob flew to Kyoto!"]
    results = service.predict(predict_body(texts, config=config))
    assert [r["result"] for r in results] == [[], []]


# --- the HTTP app with bad tasks ----------------------------------------------------------------------------------
@pytest.mark.slow  # trains a tiny transformer (once per module)
def test_predict_over_http_answers_every_task_in_order_and_bad_tasks_with_empty_results(trained, service):
    from backend.serving.app import create_app

    settings, _, _ = trained
    client = create_app(settings, service).test_client()
    good = "Alice Martin works for Acme Corp in Paris."
    tasks = [
        {"id": 1, "data": {"review": good}},
        {"id": 2, "data": {"text": good}},           # the restaurant key, not this config's
        {"id": 3, "data": {"review": 42}},
        {"id": 4, "data": {"review": None}},
        {"id": 5, "data": {"review": ["a", "list"]}},
        {"id": 6, "data": {"review": {"nested": good}}},
        {"id": 7},                                    # no data at all
        {"id": 8, "data": "just a string"},
        "not even an object",
        {"id": 10, "data": {"review": good}},
    ]
    answer = client.post("/predict", json={**predict_body([]), "tasks": tasks})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    results = answer.json["results"]
    assert len(results) == len(tasks)
    assert [r["result"] for r in results[1:9]] == [[]] * 8
    first, last = results[0]["result"], results[9]["result"]
    # The same text twice in one batch: the same spans; the scores may differ in the last digits, since the CPU's
    # matrix kernels do not promise bitwise-equal results for different rows of a batch (in fp32 the 7th decimal;
    # a bf16 model, chosen on CPUs with bf16 units, keeps about 3 significant digits).
    assert first and [r["value"] for r in first] == [r["value"] for r in last]
    digits = 1e-6 if inference_placement("cpu").precision == "fp32" else 1e-2
    assert [r["score"] for r in first] == pytest.approx([r["score"] for r in last], abs=digits)
    assert_valid_results(good, results[0]["result"])


@pytest.mark.slow  # trains a tiny transformer (once per module)
def test_after_setup_predict_may_leave_out_the_label_config(trained, service):
    from backend.serving.app import create_app

    settings, _, _ = trained
    client = create_app(settings, service).test_client()
    assert client.post("/setup", json={"project": "21.1718000000", "schema": REVIEW_CONFIG}).json["model_version"] == "v1"
    text = "Yesterday Olga Petrova flew to Lagos!"
    body = {"project": "21.1718000000", "tasks": [{"id": 1, "data": {"review": text}}]}
    results = client.post("/predict", json=body).json["results"]
    assert len(results) == 1 and results[0]["result"]
    assert_valid_results(text, results[0]["result"])


@pytest.mark.slow  # trains a tiny transformer (once per module)
def test_predict_over_http_answers_a_text_of_only_unreadable_characters_with_an_empty_result(trained, service):
    from backend.serving.app import create_app

    settings, _, _ = trained
    client = create_app(settings, service).test_client()
    answer = client.post("/predict", json=predict_body(["\ufffd\ufffd"]))
    assert answer.status_code == 200 and answer.json["results"][0]["result"] == []


# --- exporters ----------------------------------------------------------------------------------------------------
def test_exporting_another_configs_label_studio_json_gives_conll_with_its_tags(tmp_path):
    from exporters.cli import main

    config = REVIEW_CONFIG.replace('name="review" value="$review"', 'name="body" value="$review"') \
        .replace('toName="review"', 'toName="body"').replace('<Label value="LOC"/>', '<Label value="Place Name"/>')
    tasks = review_tasks(20, seed=13)
    for task in tasks:
        for result in task["annotations"][0]["result"]:
            result["to_name"] = "body"
            if result["type"] == "labels" and result["value"]["labels"] == ["LOC"]:
                result["value"]["labels"] = ["Place Name"]
    tasks.append({"id": 99, "data": {"review": "Bob"}, "annotations": [{"id": 1, "result": [], "was_cancelled": True}]})
    (tmp_path / "export.json").write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "config.xml").write_text(config, encoding="utf-8")

    out = tmp_path / "out.conll"
    assert main(["convert", str(tmp_path / "export.json"), "--to", "conll2003", "-o", str(out),
                 "--label-config", str(tmp_path / "config.xml")]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "-DOCSTART- -X- O"
    assert all(len(line.split(" ")) == 4 for line in lines[2:] if line)
    examples = read_conll2003(out)
    assert len(examples) == 20  # the cancelled task is left out
    schema = parse_label_config(config)
    for task, example in zip(tasks, examples):
        expected = task_to_example(task, schema, ConversionReport())
        assert example.tokens == expected.tokens
        assert example.tags == [t.replace("Place Name", "Place_Name") for t in expected.tags]
    tags = {t for e in examples for t in e.tags}
    assert {"B-PER", "B-ORG", "B-Place_Name"} <= tags and tags <= {"O"} | {f"{p}-{l}" for p in "BI" for l in
                                                                        ("PER", "ORG", "Place_Name")}


def test_exporting_without_a_label_config_infers_the_names_and_data_key_from_the_export(tmp_path):
    from exporters.cli import main

    tasks = review_tasks(15, seed=17)
    for task in tasks:
        del task["data"]["author"]  # only one string field: the data key can be inferred
    (tmp_path / "export.json").write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out.conll"
    assert main(["convert", str(tmp_path / "export.json"), "--to", "conll2003", "-o", str(out)]) == 0
    examples = read_conll2003(out)
    schema = parse_label_config(REVIEW_CONFIG)
    assert [e.tags for e in examples] == [task_to_example(t, schema, ConversionReport()).tags for t in tasks]
    assert any(tag != "O" for e in examples for tag in e.tags)


def test_exporting_without_a_label_config_finds_the_text_field_among_several_string_fields(tmp_path):
    """A Text named "text" over ``$review``, in tasks that also carry a title: the spans show which field it is."""
    from exporters.cli import main

    tasks = review_tasks(15, seed=19)
    for task in tasks:
        task["data"] = {"title": "My trip", **task["data"]}
        for result in task["annotations"][0]["result"]:
            result["to_name"] = "text"
    (tmp_path / "export.json").write_text(json.dumps(tasks, ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "out.conll"
    assert main(["convert", str(tmp_path / "export.json"), "--to", "conll2003", "-o", str(out)]) == 0
    schema = parse_label_config(REVIEW_CONFIG)
    assert [e.tokens for e in read_conll2003(out)] == [task_to_example(t, schema, ConversionReport()).tokens
                                                        for t in tasks]


DISHES, CITIES = ["烤鸭", "小笼包", "麻婆豆腐", "火锅", "拉面"], ["上海", "成都", "广州", "西安", "东京"]
CHINESE_TEMPLATES = ["我想在{LOC}吃{DISH}", "{LOC}的{DISH}很好吃。", "推荐{DISH}！", "明天去{LOC}", "这家店的{DISH}不错"]


def chinese_sentence(rng: random.Random) -> tuple[str, list[tuple[int, int, str]]]:
    """A sentence without spaces and its entity spans (character offsets)."""
    text, spans = "", []
    for piece in re.split(r"(\{\w+\})", rng.choice(CHINESE_TEMPLATES)):
        if piece in ("{LOC}", "{DISH}"):
            entity = rng.choice(CITIES if piece == "{LOC}" else DISHES)
            spans.append((len(text), len(text) + len(entity), piece[1:-1]))
            piece = entity
        text += piece
    return text, spans


@pytest.mark.slow  # trains a tiny transformer
def test_entities_inside_chinese_sentences_are_learnt_and_predicted_with_their_exact_offsets(tmp_path):
    # Chinese is written without spaces: the whole sentence used to be one word, so nothing inside it could be
    # predicted. Each character is a word now, as in character-level corpora.
    from backend.model.predict import Predictor
    from backend.data.spans import Span, spans_to_bio
    from backend.model.config import TrainingConfig
    from backend.model.train import train_model
    from tests.conftest import TINY_RECIPE
    from tests.helpers.tiny_model import build_tiny_model

    rng = random.Random(5)
    train = [chinese_sentence(rng) for _ in range(200)]
    base = build_tiny_model(tmp_path / "base", [text for text, _ in train])
    examples = [spans_to_bio(text, [Span(s, e, label, text[s:e]) for s, e, label in spans]) for text, spans in train]
    labels = ["O", "B-LOC", "I-LOC", "B-DISH", "I-DISH"]
    result = train_model(examples, labels, TrainingConfig(base_model=str(base), **TINY_RECIPE), tmp_path / "m")
    heldout = [chinese_sentence(random.Random(seed)) for seed in range(100, 130)]
    predictions = Predictor.load(result.model_dir).predict([text for text, _ in heldout])
    found = [[(s.start, s.end, s.label) for s in p.spans] for p in predictions]
    exact = sum(spans == gold for (_, gold), spans in zip(heldout, found))
    assert exact >= 0.8 * len(heldout), list(zip(heldout, found))
