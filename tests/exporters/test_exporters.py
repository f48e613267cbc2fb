"""Specification of the exporters CLI, end to end: `python -m exporters convert ...` on files written here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend.data.formats import read_bio, read_conll2003
from backend.data.schema import load_label_config
from backend.data.splits import assign_split, parse_fractions
from backend.shared.labelstudio import Credentials, LabelStudioClient, LabelStudioError

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared"
MIT_TRAIN = SHARED / "data" / "mit_restaurant" / "restauranttrain.bio"
RESTAURANT_XML = REPO / "label_config" / "restaurant.xml"


def convert(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("LABEL_STUDIO_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "exporters", "convert", *map(str, args)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


def span(text: str, part: str, label: str, occurrence: int = 0) -> dict:
    start = -1
    for _ in range(occurrence + 1):
        start = text.index(part, start + 1)
    return {"id": f"r{start}", "from_name": "label", "to_name": "text", "type": "labels", "origin": "manual",
            "value": {"start": start, "end": start + len(part), "text": part, "labels": [label]}}


def annotated(task_id: int, text: str, *results: dict, **fields) -> dict:
    annotation = {"id": task_id * 10, "result": list(results), "was_cancelled": False, "ground_truth": False,
                  "created_at": "2024-05-01T10:00:00.000000Z", "updated_at": "2024-05-01T10:00:00.000000Z", **fields}
    return {"id": task_id, "data": {"text": text}, "annotations": [annotation], "predictions": []}


def export_tasks() -> list[dict]:
    """A Label Studio JSON export of the restaurant project, with the cases a real one has."""
    t1 = "Is there a cheap thai place open 24/7 near Joe's?"
    t2 = "I'd love sushi 🍣 for $10-$15 downtown"
    older = annotated(3, "best pizza in town", span("best pizza in town", "pizza", "Dish"),
                      updated_at="2024-01-01T00:00:00Z")["annotations"][0]
    task3 = annotated(3, "best pizza in town", span("best pizza in town", "best", "Rating"),
                      updated_at="2024-06-01T00:00:00Z")
    task3["annotations"].append(older)
    return [
        annotated(1, t1, span(t1, "cheap", "Price"), span(t1, "thai", "Cuisine"), span(t1, "24", "Hours"),
                  span(t1, "Joe", "Restaurant_Name")),
        annotated(2, t2, span(t2, "sushi", "Dish"), span(t2, "10", "Price"), span(t2, "downtown", "Location")),
        task3,
        annotated(4, "nothing to see here"),                                    # all-O, still a sentence
        {"id": 5, "data": {"text": "not annotated yet"}, "annotations": [], "predictions": []},
        {"id": 6, "data": {"review": "wrong data key"}, "annotations": [{"result": []}]},
        annotated(7, "skipped", was_cancelled=True),
    ]


@pytest.fixture
def export_file(tmp_path) -> Path:
    path = tmp_path / "export.json"
    path.write_text(json.dumps(export_tasks(), ensure_ascii=False), encoding="utf-8")
    return path


def _conll_sentences(text: str) -> list[list[list[str]]]:
    blocks = [block for block in text.split("\n\n") if block.strip()]
    return [[line.split(" ") for line in block.splitlines()] for block in blocks]


def _is_iob2(tags: list[str]) -> bool:
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return False
        previous = tag
    return True


def test_export_to_conll2003_has_label_studios_layout_four_columns_and_iob2(export_file, tmp_path):
    out = tmp_path / "out.conll"
    done = convert(export_file, "--to", "conll2003", "-o", out)
    assert done.returncode == 0, done.stderr
    text = out.read_text(encoding="utf-8")
    assert text.startswith("-DOCSTART- -X- O\n\n")
    sentences = _conll_sentences(text)[1:]
    assert len(sentences) == 4  # tasks 1-4; 5 unannotated, 6 wrong key, 7 cancelled
    for sentence in sentences:
        assert all(len(columns) == 4 and columns[1:3] == ["-X-", "_"] for columns in sentence)
        assert _is_iob2([columns[3] for columns in sentence])
    first = dict((columns[0], columns[3]) for columns in sentences[0])
    assert (first["cheap"], first["thai"], first["24"], first["/7"], first["Joe"], first["'s"]) == \
        ("B-Price", "B-Cuisine", "B-Hours", "O", "B-Restaurant_Name", "O")
    assert [columns[3] for columns in sentences[2]] == ["B-Rating", "O", "O", "O"]  # most recent annotation
    assert {columns[3] for columns in sentences[3]} == {"O"}
    assert "task 5" in done.stderr and "task 6" in done.stderr and "data.text" in done.stderr


def test_exported_conll_reads_back_with_the_same_tokens_and_tags(export_file, tmp_path):
    conll, bio = tmp_path / "out.conll", tmp_path / "out.bio"
    assert convert(export_file, "--to", "conll2003", "-o", conll).returncode == 0
    assert convert(export_file, "--to", "bio", "-o", bio).returncode == 0
    from_conll = [(e.tokens, e.tags) for e in read_conll2003(conll)]
    from_bio = [(e.tokens, e.tags) for e in read_bio(bio)]
    assert from_conll == from_bio and len(from_bio) == 4
    assert all("\t" in line for line in bio.read_text(encoding="utf-8").splitlines() if line)


def test_export_to_dataset_has_classlabel_tags_from_the_label_config_and_hash_splits(export_file, tmp_path):
    from datasets import load_from_disk

    out = tmp_path / "ds"
    done = convert(export_file, "--to", "dataset", "-o", out, "--label-config", RESTAURANT_XML)
    assert done.returncode == 0, done.stderr
    dataset = load_from_disk(str(out))
    assert set(dataset) == {"train", "validation", "test"}
    names = dataset["train"].features["ner_tags"].feature.names
    assert names == load_label_config(RESTAURANT_XML).bio_labels
    fractions = parse_fractions("80/10/10")
    for split, rows in dataset.items():
        for row in rows:
            assert assign_split(int(row["id"]), fractions) == split
    rows = {row["id"]: row for split in dataset.values() for row in split}
    assert sorted(rows) == ["1", "2", "3", "4"]
    tags = [names[i] for i in rows["2"]["ner_tags"]]
    assert dict(zip(rows["2"]["tokens"], tags))["sushi"] == "B-Dish"


def test_adding_tasks_moves_no_exported_task_to_another_split(export_file, tmp_path):
    tasks = export_tasks()
    more = tasks + [annotated(100 + i, f"cheap food number {i}", span(f"cheap food number {i}", "cheap", "Price"))
                    for i in range(30)]
    bigger = tmp_path / "bigger.json"
    bigger.write_text(json.dumps(more), encoding="utf-8")
    assert convert(export_file, "--to", "bio", "-o", tmp_path / "small", "--split", "50/25/25").returncode == 0
    assert convert(bigger, "--to", "bio", "-o", tmp_path / "big", "--split", "50/25/25").returncode == 0
    for name in ("train", "validation", "test"):
        small = {tuple(e.tokens) for e in _read_optional(tmp_path / "small" / f"{name}.bio")}
        big = {tuple(e.tokens) for e in _read_optional(tmp_path / "big" / f"{name}.bio")}
        assert small <= big


def _read_optional(path: Path):
    return read_bio(path) if path.read_text(encoding="utf-8").strip() else []


def test_to_name_picks_the_text_when_one_labels_control_points_at_two(tmp_path):
    config = tmp_path / "two_texts.xml"
    config.write_text('<View><Labels name="label" toName="title,text"><Label value="Dish"/></Labels>'
                      '<Text name="title" value="$title"/><Text name="text" value="$text"/></View>', encoding="utf-8")
    source = tmp_path / "export.json"
    task = annotated(1, "best pizza in town", span("best pizza in town", "pizza", "Dish"))
    task["data"]["title"] = "a title"
    source.write_text(json.dumps([task]), encoding="utf-8")
    refused = convert(source, "--to", "bio", "-o", tmp_path / "out.bio", "--label-config", config)
    assert refused.returncode == 1 and "--to-name" in refused.stderr
    done = convert(source, "--to", "bio", "-o", tmp_path / "out.bio", "--label-config", config, "--to-name", "text")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.bio").read_text(encoding="utf-8") == "O\tbest\nB-Dish\tpizza\nO\tin\nO\ttown\n"


def test_a_label_with_a_space_survives_the_round_trip_through_conll(tmp_path):
    # CoNLL columns are space-separated, so "Restaurant Name" is written "Restaurant_Name"; read against the same
    # config it must come back as the config's label, not be dropped as unknown.
    config = tmp_path / "spaces.xml"
    config.write_text('<View><Labels name="label" toName="text"><Label value="Restaurant Name"/><Label value="Dish"/>'
                      '</Labels><Text name="text" value="$text"/></View>', encoding="utf-8")
    text = "pizza at Joe Shmoe"
    source = tmp_path / "export.json"
    source.write_text(json.dumps([annotated(1, text, span(text, "pizza", "Dish"),
                                            span(text, "Joe Shmoe", "Restaurant Name"))]), encoding="utf-8")
    conll, back = tmp_path / "out.conll", tmp_path / "back.json"
    assert convert(source, "--to", "conll2003", "-o", conll, "--label-config", config).returncode == 0
    assert "B-Restaurant_Name" in conll.read_text(encoding="utf-8")
    done = convert(conll, "--to", "tasks", "-o", back, "--label-config", config)
    assert done.returncode == 0 and "unknown label" not in done.stderr, done.stderr
    [task] = json.loads(back.read_text(encoding="utf-8"))
    assert [(r["value"]["text"], r["value"]["labels"]) for r in task["annotations"][0]["result"]] == [
        ("pizza", ["Dish"]), ("Joe Shmoe", ["Restaurant Name"])]


def test_bio_imports_as_tasks_with_exact_offsets_and_back(tmp_path):
    source = tmp_path / "in.bio"
    source.write_text("O\ti\nO\twant\nB-Cuisine\tthai\nI-Cuisine\tfood\n\nB-Price\tcheap\nB-Dish\tpizza\n", encoding="utf-8")
    tasks_path, back = tmp_path / "tasks.json", tmp_path / "back.bio"
    done = convert(source, "--to", "tasks", "-o", tasks_path)
    assert done.returncode == 0, done.stderr
    tasks = json.loads(tasks_path.read_text(encoding="utf-8"))
    assert [t["data"]["text"] for t in tasks] == ["i want thai food", "cheap pizza"]
    for task in tasks:
        for result in task["annotations"][0]["result"]:
            value = result["value"]
            assert task["data"]["text"][value["start"]:value["end"]] == value["text"]
    assert convert(tasks_path, "--to", "bio", "-o", back).returncode == 0
    assert back.read_text(encoding="utf-8") == source.read_text(encoding="utf-8")


def test_conll_imports_as_predictions_with_a_model_version(tmp_path):
    source = tmp_path / "in.conll"
    source.write_text("-DOCSTART- -X- O\n\ncheap -X- _ B-Price\nthai -X- _ B-Cuisine\n\n", encoding="utf-8")
    out = tmp_path / "tasks.json"
    done = convert(source, "--to", "tasks", "--as", "predictions", "-o", out, "--label-config", RESTAURANT_XML)
    assert done.returncode == 0, done.stderr
    [task] = json.loads(out.read_text(encoding="utf-8"))
    assert "annotations" not in task
    [prediction] = task["predictions"]
    assert prediction["model_version"] == "imported"
    assert [r["value"]["labels"] for r in prediction["result"]] == [["Price"], ["Cuisine"]]


def test_split_writes_one_file_per_split_into_the_output_folder(tmp_path):
    source = tmp_path / "in.bio"
    source.write_text("\n\n".join(f"B-Dish\tdish{i}\nO\there" for i in range(60)) + "\n", encoding="utf-8")
    out = tmp_path / "splits"
    done = convert(source, "--to", "conll2003", "-o", out, "--split", "80/10/10")
    assert done.returncode == 0, done.stderr
    counts = {name: len(_conll_sentences((out / f"{name}.conll").read_text())) - 1 for name in ("train", "validation", "test")}
    assert sum(counts.values()) == 60 and counts["train"] > counts["validation"]
    fractions = parse_fractions("80/10/10")
    expected_train = [i for i in range(60) if assign_split(i + 1, fractions) == "train"]
    assert [e.tokens[0] for e in read_conll2003(out / "train.conll")] == [f"dish{i}" for i in expected_train]


def test_bad_bio_lines_are_reported_with_file_and_line_and_the_rest_converted(tmp_path):
    source = tmp_path / "in.bio"
    source.write_text("O\tcheap\nB-Cuisine thai\nI-Cuisine\tfood\n", encoding="utf-8")
    done = convert(source, "--to", "bio", "-o", tmp_path / "out.bio")
    assert done.returncode == 0
    assert "in.bio:2" in done.stderr and "no TAB" in done.stderr
    assert "in.bio:3" in done.stderr and "I-Cuisine after O" in done.stderr
    assert (tmp_path / "out.bio").read_text() == "O\tcheap\nB-Cuisine\tfood\n"


def test_malformed_json_fails_naming_the_file_and_position(tmp_path):
    source = tmp_path / "export.json"
    source.write_text('[{"id": 1, "data": {"text": "x"}},\n  {"id": 2,, }]', encoding="utf-8")
    done = convert(source, "--to", "conll2003", "-o", tmp_path / "out.conll")
    assert done.returncode == 1
    assert "export.json" in done.stderr and "line 2 column" in done.stderr
    assert not (tmp_path / "out.conll").exists()


def test_nothing_usable_fails_with_the_reasons(tmp_path):
    source = tmp_path / "export.json"
    source.write_text(json.dumps([{"id": 9, "data": {"text": "x"}, "annotations": [{"result": [], "was_cancelled": True}]},
                                  {"id": 10, "data": {"text": "y"}}]), encoding="utf-8")
    done = convert(source, "--to", "bio", "-o", tmp_path / "out.bio")
    assert done.returncode == 1
    assert "task 9" in done.stderr and "task 10" in done.stderr and "no usable" in done.stderr


def test_wrong_arguments_exit_with_usage_status(tmp_path):
    assert convert("--to", "bio", "-o", tmp_path / "x").returncode == 2
    assert convert(tmp_path / "x.bio", "--to", "xml", "-o", tmp_path / "x").returncode == 2
    assert convert("--url", "http://127.0.0.1:9", "--to", "bio", "-o", tmp_path / "x").returncode == 2


def test_unreachable_project_fails_clearly_without_printing_the_key(tmp_path):
    done = convert("--url", "http://127.0.0.1:9", "--api-key", "secret-key-123", "--project", "1",
                   "--to", "bio", "-o", tmp_path / "x.bio")
    assert done.returncode == 1
    assert "project 1 at http://127.0.0.1:9" in done.stderr
    assert "secret-key-123" not in done.stderr + done.stdout


def test_a_live_project_is_read_in_filtered_pages_of_its_annotated_tasks_never_an_export():
    from tests.helpers.fake_task_api import FakeTaskApi

    xml = RESTAURANT_XML.read_text()
    annotated = export_tasks()  # ids 1 to 7; some hold only a cancelled (skipped) annotation or none
    submitted = [task["id"] for task in annotated if any(not a.get("was_cancelled") for a in task["annotations"])]
    plain = [{"id": 100 + i, "data": {"text": f"plain {i}"}, "annotations": []} for i in range(30)]
    with FakeTaskApi(annotated + plain, label_config=xml) as api:
        client = LabelStudioClient(Credentials(api.url, "k" * 40), page_size=3)
        project = client.export_project(3)
        task_reads = [request for request in api.requests if "query" in request]
    assert project.label_config == xml and [t["id"] for t in project.tasks] == submitted == [1, 2, 3, 4, 6]
    # 5 annotated tasks in pages of 3: two reads, each filtered; no export (the fake answers any other path 404)
    assert len(task_reads) == 2 and all(int(request["page_size"]) == 3 for request in task_reads)
    assert all(request["query"]["filters"]["items"] for request in task_reads)  # filtered to annotated tasks


def fetch_project(url, api_key, project, client):
    return LabelStudioClient(Credentials(url, api_key), sdk=client).export_project(project)


def test_live_project_errors_become_source_errors():
    class Broken:
        class projects:
            @staticmethod
            def get(id):
                raise ConnectionError("refused")

    with pytest.raises(LabelStudioError, match="project 4 at http://ls"):
        fetch_project("http://ls", "key", 4, client=Broken())


def test_help_documents_the_outputs_and_splits():
    done = convert("--help")
    assert done.returncode == 0
    for words in ("-DOCSTART- -X- O", "TAG<TAB>token", "save_to_disk", "train.conll", "--as", "sha1"):
        assert words in done.stdout


@pytest.mark.skipif(not MIT_TRAIN.exists(), reason="needs ../shared/data/mit_restaurant")
def test_mit_training_corpus_round_trips_through_tasks_unchanged(tmp_path):
    tasks_path, back = tmp_path / "tasks.json", tmp_path / "back.bio"
    done = convert(MIT_TRAIN, "--to", "tasks", "-o", tasks_path)
    assert done.returncode == 0, done.stderr
    assert "read 7660 examples" in done.stderr
    done = convert(tasks_path, "--to", "bio", "-o", back, "--label-config", RESTAURANT_XML)
    assert done.returncode == 0, done.stderr
    original = [(e.tokens, e.tags) for e in read_bio(MIT_TRAIN)]
    again = [(e.tokens, e.tags) for e in read_bio(back)]
    assert len(original) == 7660
    assert again == original
    assert "skipped or repaired" not in done.stderr


def test_a_lone_surrogate_in_an_export_is_written_as_a_replacement_character(tmp_path):
    # JSON may carry "\ud83d" (half an emoji cut by some script); UTF-8 files cannot.
    text = "pho \ud83d near me"
    tasks = [{"id": 1, "data": {"text": text}, "annotations": [{"result": [
        {"from_name": "label", "to_name": "text", "type": "labels",
         "value": {"start": 0, "end": 3, "text": "pho", "labels": ["Dish"]}}]}]}]
    source, out = tmp_path / "export.json", tmp_path / "out.bio"
    source.write_text(json.dumps(tasks), encoding="utf-8")  # ensure_ascii: the surrogate stays an escape
    done = convert(source, "--to", "bio", "-o", out, "--label-config", RESTAURANT_XML)
    assert done.returncode == 0, done.stderr
    assert [e.tokens for e in read_bio(out)] == [["pho", "\ufffd", "near", "me"]]
    assert [e.tags for e in read_bio(out)] == [["B-Dish", "O", "O", "O"]]
