"""The review job: k-fold out-of-sample scoring (a model never scores a task it trained on), too few tasks, tasks
whose annotation does not fit its words, and what it writes into the store and into Label Studio. Training and
scoring are stand-ins here; tests/e2e/test_review_e2e.py runs the real ones against a real Label Studio."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from backend.data.schema import parse_label_config
from backend.data.spans import split_words
from backend.model.predict import LabellingScore
from backend.shared.settings import Settings
from backend.shared.store import ModelStore
from backend.training.jobs import REVIEW, merge_payloads
from backend.training.review import (
    MIN_REVIEW_TASKS,
    REVIEW_VIEW_TITLE,
    ReviewDataError,
    fold_count,
    review_examples,
    review_project,
    usable_examples,
)
from tests.helpers.service_fakes import CONFIG, LEXICON, FakeLabelStudio, annotated_task
from tests.helpers.synthetic import bio_labels, restaurant_examples

SCHEMA = parse_label_config(CONFIG)


class RecordingFolds:
    """train_fn / score_fn that remember which texts each model trained on and which it scored; the model reads
    each word as LEXICON says (else O), and finds the annotation's tag of a word log 1 / e^2 as likely when it reads
    another."""

    def __init__(self):
        self.trained: dict[Path, set[str]] = {}
        self.scored: dict[Path, list[str]] = {}

    def train(self, examples, bio_labels, recipe, out_dir, progress=None):
        Path(out_dir).mkdir(parents=True)
        self.trained[Path(out_dir)] = {id(example) for example in examples}
        progress(SimpleNamespace(step=1, total_steps=2, epoch=1, elapsed_s=0.1))
        return SimpleNamespace(model_dir=Path(out_dir))

    def leaks(self) -> list[Path]:
        """The models that scored a task they trained on."""
        return [model_dir for model_dir, scored in self.scored.items() if set(scored) & self.trained[model_dir]]

    def score(self, model_dir, examples):
        self.scored[Path(model_dir)] = [id(example) for example in examples]
        results = []
        for example in examples:
            read = []
            for word in example.words:
                label = LEXICON.get(word.text.lower())
                read.append(f"B-{label}" if label else "O")
            given = [0.0 if r == t else -2.0 for r, t in zip(read, example.tags)]
            results.append(LabellingScore(read, given, [0.0] * len(read)))
        return results


@pytest.mark.parametrize("size, folds", [(10, 2), (37, 3), (120, 5)])
def test_no_model_scores_a_task_it_trained_on_and_every_task_is_scored_once(tmp_path, size, folds):
    examples = restaurant_examples(size, seed=size)
    keyed = [(1000 + i, example) for i, example in enumerate(examples)]
    seen = RecordingFolds()
    reviews = review_examples(keyed, bio_labels(), None, tmp_path, folds, seen.train, seen.score)
    assert sorted(item["task"] for item in reviews) == [key for key, _ in keyed]
    assert len(seen.scored) >= 2
    assert seen.leaks() == []  # every task held out from the model that scored it
    for model_dir, scored in seen.scored.items():
        assert seen.trained[model_dir] | set(scored) == {id(e) for e in examples}  # and trained on all the others
    assert not any(Path(tmp_path).iterdir())  # each fold's model is deleted after scoring


def test_the_check_of_the_property_can_fail(tmp_path):
    # scoring with a model that saw every task (as the serving version has) is what the check above catches
    examples = restaurant_examples(12, seed=1)
    seen = RecordingFolds()
    review_examples(list(enumerate(examples)), bio_labels(), None, tmp_path, 2, seen.train, seen.score)
    seen.trained = {model_dir: {id(e) for e in examples} for model_dir in seen.trained}
    assert sorted(seen.leaks()) == sorted(seen.scored)


def test_tasks_are_ranked_by_how_much_likelier_the_model_finds_its_own_labelling(tmp_path):
    tasks = [annotated_task(i, text) for i, text in enumerate(
        ["cheap pizza near me", "thai food please", "sushi for two", "best thai pizza", "pizza and sushi",
         "cheap eats downtown", "thai curry", "open late", "a quiet pizza place", "cheap sushi"], start=1)]
    # two planted errors: pizza as Price (task 1), thai dropped (task 2)
    tasks[0]["annotations"][0]["result"][1]["value"]["labels"] = ["Price"]
    tasks[1]["annotations"][0]["result"] = []
    keyed, unaligned = usable_examples(tasks, SCHEMA)
    assert unaligned == []
    seen = RecordingFolds()
    reviews = review_examples(keyed, bio_labels(), None, tmp_path, 2, seen.train, seen.score)
    assert [item["task"] for item in reviews[:2]] == [1, 2]
    assert reviews[0]["score"] == reviews[1]["score"] == 2.0 and all(item["score"] == 0 for item in reviews[2:])
    assert [(f["kind"], f["text"]) for f in reviews[0]["findings"]] == [("other type", "pizza")]
    assert [(f["kind"], f["text"], f["model_label"]) for f in reviews[1]["findings"]] == [
        ("missing span", "thai", "Cuisine")]


def test_too_few_tasks_says_how_many_are_needed():
    with pytest.raises(ReviewDataError, match=f"has 7 usable annotated task.*at least {MIN_REVIEW_TASKS}.*annotate 3 more"):
        fold_count(7, 5, "4")
    assert fold_count(MIN_REVIEW_TASKS, 5) == 2 and fold_count(10_000, 5) == 5


def test_a_task_whose_annotation_does_not_fit_its_words_is_listed_not_dropped():
    tasks = [annotated_task(1, "cheap pizza"), annotated_task(2, "thai food")]
    tasks[0]["annotations"][0]["result"].append(
        {"from_name": "label", "to_name": "text", "type": "labels",
         "value": {"start": 0, "end": 5, "text": "cheap", "labels": ["Wine"]}})  # not in the config
    tasks[1]["annotations"][0]["result"][0]["value"].update(start=40, end=44)  # past the end, text elsewhere
    keyed, unaligned = usable_examples(tasks, SCHEMA)
    assert [key for key, _ in keyed] == [1, 2]
    assert [(item["task"], item["problems"], item["scored"]) for item in unaligned] == [
        (1, ["unknown_label"], True), (2, ["realigned"], True)]
    assert "'thai' moved to [0:4]" in unaligned[1]["notes"][0]


def _settings(tmp_path, **extra):
    return Settings.from_env({"MODEL_DIR": str(tmp_path / "models"), "LABEL_STUDIO_URL": "http://ls.test",
                              "LABEL_STUDIO_API_KEY": "k", **extra})


def test_a_review_is_kept_in_the_store_and_shown_in_label_studio(tmp_path):
    texts = ["cheap pizza near me", "thai food please", "sushi for two", "best thai pizza", "pizza and sushi",
             "cheap eats downtown", "thai curry", "open late", "a quiet pizza place", "cheap sushi", "thai sushi"]
    tasks = [annotated_task(i, text) for i, text in enumerate(texts, start=1)]
    tasks[3]["annotations"][0]["result"][0]["value"]["labels"] = ["Dish"]  # "thai" as a Dish in task 4
    second = dict(tasks[4]["annotations"][0], id=9001, completed_by=8, result=[])
    tasks[4]["annotations"][0]["completed_by"] = 7
    tasks[4]["annotations"].append(second)  # task 5: bob marked nothing
    client = FakeLabelStudio(tasks)
    client.users = {7: "Ann Lee", 8: "bob@example.com"}
    store = ModelStore(tmp_path / "models")
    seen = RecordingFolds()
    stages = []
    summary = review_project(_settings(tmp_path), "3", client, store, lambda stage=None, **kw: stages.append(stage),
                             seen.train, seen.score)
    record = store.review("3")
    # task 5's annotation that counts is bob's latest (no span: pizza and sushi missing), then task 4's wrong type
    assert summary["review"] == "done" and [item["task"] for item in record["tasks"][:2]] == [5, 4]
    assert client.views[REVIEW_VIEW_TITLE] == [5, 4]
    assert 'href="http://ls.test/projects/3/data?task=4"' in client.instruction
    assert client.instruction.startswith("<p>Label dishes.</p>")  # the lead's text is kept
    assert record["agreement"]["tasks"] == 1
    assert record["agreement"]["per_pair"] == [{"annotators": ["Ann Lee", "bob@example.com"], "f1": 0.0,
                                                "matched": 0, "spans": 2, "pairs": 1}]
    assert "reviewing" in stages and client.titles[-1].startswith("NER · review done: ")


def test_a_project_with_too_few_tasks_gets_the_message_and_its_agreement(tmp_path):
    client = FakeLabelStudio([annotated_task(i, "cheap pizza") for i in range(1, 4)])
    store = ModelStore(tmp_path / "models")
    summary = review_project(_settings(tmp_path), "3", client, store, None, RecordingFolds().train,
                             RecordingFolds().score)
    assert summary["review"] == "too few tasks"
    assert "needs at least 10" in store.review("3")["message"] and "annotate 7 more" in client.titles[-1]
    assert client.views[REVIEW_VIEW_TITLE] == []


def test_a_review_waiting_behind_a_training_press_runs_after_it():
    assert merge_payloads({"hostname": "a"}, {"action": REVIEW}) == {"hostname": "a", "review": True}
    assert merge_payloads({"action": REVIEW}, {"hostname": "b"}) == {"hostname": "b", "review": True}
    assert merge_payloads({"action": REVIEW}, {"action": REVIEW, "hostname": "c"}) == {"action": REVIEW,
                                                                                         "hostname": "c"}


def test_a_label_the_models_are_always_less_sure_of_is_not_read_as_doubt():
    import math

    from backend.data.spans import Example
    from backend.training.review import class_thresholds, word_doubts

    labels = ["O", "B-Dish", "I-Dish"]
    words = split_words("cheap pizza")
    # the models give O 0.9 where O is annotated, B-Dish only 0.6 where it is
    sure = Example("cheap pizza", words, ["O", "B-Dish"])
    rows = [[math.log(0.9), math.log(0.05), math.log(0.05)], [math.log(0.4), math.log(0.6), math.log(1e-9)]]
    score = LabellingScore(["O", "B-Dish"], [rows[0][0], rows[1][1]], [rows[0][0], rows[1][1]], rows)
    thresholds = class_thresholds([(sure, score)], labels)
    assert thresholds == {"O": pytest.approx(math.log(0.9)), "B-Dish": pytest.approx(math.log(0.6))}
    assert word_doubts(sure, score, labels, thresholds) == [0.0, 0.0]
    # the same rows against an annotation that left pizza out: O at 0.4 of its 0.9 against B-Dish at 0.6 of its 0.6
    missed = Example("cheap pizza", words, ["O", "O"])
    doubt = word_doubts(missed, score, labels, thresholds)
    assert doubt[0] == 0.0 and doubt[1] == pytest.approx(math.log(1.0) - math.log(0.4 / 0.9))


class UnwritableLabelStudio(FakeLabelStudio):
    """A Label Studio that refuses the Data Manager tab (a permission, a version without views)."""

    def write_review_view(self, project, title, task_ids):
        raise PermissionError("403: you may not create views in project 3")


def test_a_review_that_could_not_be_written_into_label_studio_keeps_why_in_its_record(tmp_path):
    tasks = [annotated_task(i, text) for i, text in enumerate(["cheap pizza", "thai food", "sushi bar", "thai pizza",
                                                                "cheap sushi", "pizza place", "thai curry", "open late",
                                                                "cheap eats", "sushi rolls", "pizza pie"], start=1)]
    store = ModelStore(tmp_path / "models")
    summary = review_project(_settings(tmp_path), "3", UnwritableLabelStudio(tasks), store, None,
                             RecordingFolds().train, RecordingFolds().score)
    assert "403" in summary["report_error"]
    # GET /review answers from the record: it says the lead will not find the review in Label Studio, and why
    assert "403" in (store.review("3").get("report_error") or ""), store.review("3").keys()


def test_ten_tasks_that_all_hash_into_one_fold_are_recorded_as_too_few_not_a_failed_job(tmp_path):
    from backend.data.review import fold_of

    ids = range(694, 704)  # ten ids whose hash puts every one in the same of 2 folds
    assert len({fold_of(task_id, 2) for task_id in ids}) == 1
    client = FakeLabelStudio([annotated_task(task_id, "cheap thai pizza") for task_id in ids])
    store = ModelStore(tmp_path / "models")
    summary = review_project(_settings(tmp_path), "3", client, store, None, RecordingFolds().train,
                             RecordingFolds().score)
    record = store.review("3")
    assert summary["review"] == record["state"] == "too few tasks"
    assert "one fold" in record["message"] and "annotate" in record["message"], record["message"]
    assert client.titles[-1].startswith("NER · review: ") and "one fold" in client.titles[-1], client.titles
