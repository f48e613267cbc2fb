"""Stand-ins for the service's collaborators in tests: a Label Studio project, a predictor, a job queue, and
model versions written into a store without training, and training stand-ins that score as told."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from backend.model.metrics import EntityScore, Scores, score_tags
from backend.training.jobs import JobStatus
from backend.shared.labelstudio import UnlabelledPages, replace_report_block, slim_task
from backend.data.spans import Span, split_words
from backend.shared.store import Manifest, ModelStore

CONFIG = """<View>
  <Labels name="label" toName="text"><Label value="Dish"/><Label value="Price"/><Label value="Cuisine"/></Labels>
  <Text name="text" value="$text"/>
</View>"""

# The fake predictor's whole knowledge: word -> label.
LEXICON = {"pizza": "Dish", "sushi": "Dish", "cheap": "Price", "thai": "Cuisine"}


def write_model_folder(folder: Path, labels: list[str]) -> Path:
    """A folder that looks like a saved model to the service (config.json with BIO id2label)."""
    folder.mkdir(parents=True, exist_ok=True)
    bio = ["O"] + [f"{p}-{label}" for label in labels for p in ("B", "I")]
    (folder / "config.json").write_text(json.dumps({"id2label": {str(i): t for i, t in enumerate(bio)}}))
    return folder


def add_version(store: ModelStore, project: str, labels: list[str], f1: float = 0.5, promote: bool = True) -> str:
    folder = write_model_folder(store.new_temporary_dir(project), labels)
    scores = Scores.from_dict({"overall": {"precision": f1, "recall": f1, "f1": f1, "support": 5},
                               "per_entity": {label: {"precision": f1, "recall": f1, "f1": f1, "support": 1}
                                              for label in labels}})
    version = store.commit(project, folder, Manifest(project=project, base_model="fake", labels=labels,
                                                     scores=scores, promoted=promote))
    if promote:
        store.promote(project, version)
    return version


class FakePredictor:
    """Labels the words of ``LEXICON`` that its model folder knows; score 0.9 per span, 0.8 per text."""

    def __init__(self, model_dir: Path):
        config = json.loads((Path(model_dir) / "config.json").read_text())
        tags = [config["id2label"][k] for k in sorted(config["id2label"], key=int)]
        self.entity_labels = list(dict.fromkeys(t[2:] for t in tags if t != "O"))
        self.model_dir = Path(model_dir)
        self.calls: list[list[str]] = []

    def predict(self, texts):
        from backend.model.predict import TextPrediction

        self.calls.append(list(texts))
        out = []
        for text in texts:
            spans = [Span(w.start, w.end, LEXICON[w.text.lower()], w.text, 0.9) for w in split_words(text)
                     if LEXICON.get(w.text.lower()) in self.entity_labels]
            out.append(TextPrediction(spans, 0.8))
        return out


class CountingLoader:
    """``load_predictor`` that counts loads per folder."""

    def __init__(self):
        self.loaded: list[Path] = []

    def __call__(self, model_dir: Path) -> FakePredictor:
        self.loaded.append(Path(model_dir))
        return FakePredictor(model_dir)


@dataclass
class FakeJobs:
    """Records triggers instead of starting processes."""

    triggers: list[tuple[str, dict]] = field(default_factory=list)

    def trigger(self, project: str, payload: dict | None = None) -> str:
        self.triggers.append((project, dict(payload or {})))
        return "started"

    def status(self, project: str) -> JobStatus:
        return JobStatus(project)

    def projects(self) -> list[str]:
        return sorted({p for p, _ in self.triggers})

    def resume(self) -> dict[str, str]:
        return {}

    def shutdown(self) -> None:
        pass


class FakeLabelStudio:
    """A project as the training job sees it through ``ProjectClient``: annotated tasks (``tasks``) and
    unannotated ones (``unlabelled``), each with its full predictions. A task's ``updated_at`` is its own, else
    the newest time of its annotations, as Label Studio sets it when an annotation is saved."""

    def __init__(self, tasks: list[dict], config: str = CONFIG, instruction: str = "<p>Label dishes.</p>",
                 unlabelled: list[dict] | None = None):
        self.tasks, self.config, self.instruction = tasks, config, instruction
        self.unlabelled = list(unlabelled or [])  # tasks without annotations, with their "predictions"
        self.descriptions: list[str] = []
        self.titles: list[str] = []
        self.model_version: str | None = None
        self.retrieved: list[list[int]] = []  # the task ids of each "Retrieve Predictions" asked for
        self.edits = 0
        self.reads: list[tuple] = []  # each read of tasks: ("annotated", changed_since) and the like
        self.users: dict[int, str] = {}  # user id -> name, as /api/users names them
        self.views: dict[str, list[int]] = {}  # Data Manager tab title -> the task ids it shows

    def edit_annotations(self) -> None:
        """Every annotation edited (a new ``updated_at``), as a lead's corrections between two runs."""
        self.edits += 1
        for task in self.tasks:
            for annotation in task.get("annotations") or []:
                annotation["updated_at"] = f"2026-01-01T00:{self.edits // 60:02d}:{self.edits % 60:02d}Z"

    def label_config(self, project: int) -> str:
        return self.config

    def annotated_tasks(self, project: int, changed_since: str | None = None) -> list[dict]:
        self.reads.append(("annotated", changed_since))
        return [slim_task({**task, "updated_at": task_updated_at(task)}) for task in self._annotated()
                if changed_since is None or _after(task_updated_at(task), changed_since)]

    def annotated_count(self, project: int) -> int:
        self.reads.append(("count",))
        return len(self._annotated())

    def annotated_stamps(self, project: int, changed_since: str | None = None) -> dict[int, str]:
        self.reads.append(("stamps", changed_since) if changed_since else ("stamps",))
        return {task["id"]: task_updated_at(task) for task in self._annotated()
                if changed_since is None or _after(task_updated_at(task), changed_since)}

    def tasks_by_id(self, project: int, task_ids: list[int]) -> list[dict]:
        self.reads.append(("by_id", sorted(task_ids)))
        return [slim_task({**task, "updated_at": task_updated_at(task)}) for task in self._annotated()
                if task["id"] in set(task_ids)]

    def _annotated(self) -> list[dict]:
        return sorted((task for task in self.tasks if any(not a.get("was_cancelled") for a in task.get("annotations")
                                                          or [])), key=lambda task: task["id"])

    def write_instruction_block(self, project: int, block_html: str) -> None:
        self.instruction = replace_report_block(self.instruction, block_html)

    def write_ml_description(self, project: int, description: str, backend_url: str | None) -> bool:
        self.descriptions.append(description)
        return True

    def write_ml_title(self, project: int, title: str, backend_url: str | None) -> bool:
        self.titles.append(title)
        return True

    def unlabelled_tasks(self, project: int, version: str | None = None, after: int = 0) -> UnlabelledPages:
        """As Label Studio's pages give them (a page read as it is iterated): id, data and the model versions of
        the task's predictions."""
        self.reads.append(("unlabelled", version, after))

        def pages():
            tasks = sorted((task for task in self.unlabelled if task["id"] > after), key=lambda task: task["id"])
            for start in range(0, len(tasks), 100):
                yield [{"id": task["id"], "data": task.get("data") or {},
                        "model_versions": [p.get("model_version") for p in task.get("predictions") or []]}
                       for task in tasks[start:start + 100]], len(tasks)

        return UnlabelledPages(pages)

    def import_predictions(self, project: int, predictions: list[dict]) -> None:
        by_id = {task["id"]: task for task in self.unlabelled}
        for prediction in predictions:
            by_id[prediction["task"]].setdefault("predictions", []).append(prediction)

    def set_model_version(self, project: int, version: str) -> None:
        self.model_version = version

    def retrieve_predictions(self, project: int, task_ids: list[int]) -> None:
        self.retrieved.append(list(task_ids))

    def user_names(self) -> dict[int, str]:
        return dict(self.users)

    def write_review_view(self, project: int, title: str, task_ids: list[int]) -> None:
        self.views[title] = list(task_ids)


def task_updated_at(task: dict) -> str:
    """A fake task's ``updated_at``: its own, else the newest of its annotations' times."""
    times = [a.get("updated_at") or a.get("created_at") for a in task.get("annotations") or []]
    return task.get("updated_at") or max([t for t in times if t] or ["2026-01-01T00:00:00Z"], key=_moment)


def _moment(text: str):
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _after(moment: str, since: str) -> bool:
    return _moment(moment) > _moment(since)


def annotated_task(task_id: int, text: str, annotation_id: int | None = None) -> dict:
    """A task whose annotation labels every LEXICON word of ``text``."""
    results = [{"from_name": "label", "to_name": "text", "type": "labels",
                "value": {"start": w.start, "end": w.end, "text": w.text, "labels": [LEXICON[w.text.lower()]]}}
               for w in split_words(text) if w.text.lower() in LEXICON]
    return {"id": task_id, "data": {"text": text},
            "annotations": [{"id": annotation_id or 1000 + task_id, "result": results, "was_cancelled": False}]}


TEXTS = ["cheap pizza near me", "thai food please", "sushi for two", "where can i get cheap sushi",
         "best thai pizza", "a quiet pizza place", "pizza and sushi", "cheap eats downtown", "thai curry", "open late"]


def training_tasks():
    """The ten annotated tasks of TEXTS (ids 1 to 10)."""
    return [annotated_task(i + 1, text) for i, text in enumerate(TEXTS)]


class FakeTraining:
    """train_fn/evaluate_fn pair: the candidate scores ``candidate_f1``, older versions ``current_f1``."""

    def __init__(self, candidate_f1=0.8, current_f1=0.6, fail=False):
        self.candidate_f1, self.current_f1, self.fail = candidate_f1, current_f1, fail
        self.trained_on, self.validated_on, self.evaluated, self.scored_texts = None, None, [], []

    def train(self, examples, bio_labels, config, out_dir, validation=None, progress=None):
        if self.fail:
            (Path(out_dir) / "partial.bin").write_bytes(b"x")
            raise RuntimeError("CUDA out of memory")
        self.trained_on, self.validated_on = examples, validation
        write_model_folder(Path(out_dir), [t[2:] for t in bio_labels[1::2]])
        (Path(out_dir) / "candidate").touch()
        progress(SimpleNamespace(step=1, total_steps=1, epoch=1, elapsed_s=0.1))
        return SimpleNamespace(model_dir=Path(out_dir), metrics={})

    def evaluate(self, model_dir, examples):
        self.evaluated.append((Path(model_dir), len(examples)))
        self.scored_texts.append([e.text for e in examples])
        f1 = self.candidate_f1 if (Path(model_dir) / "candidate").exists() and len(self.evaluated) == 1 \
            else self.current_f1
        score = EntityScore(f1, f1, f1, len(examples))
        return Scores(score, {"Dish": score})


class ScoringTraining:
    """train_fn/evaluate_fn: every model finds every entity of a validation task but those it misses: the candidate
    misses the first ``candidate_misses`` tasks, every older model the last ``previous_misses``."""

    def __init__(self, candidate_misses=0, previous_misses=0):
        self.candidate_misses, self.previous_misses = candidate_misses, previous_misses
        self.recipes = []

    def train(self, examples, bio_labels, config, out_dir, validation=None, progress=None):
        self.recipes.append(config)
        write_model_folder(Path(out_dir), [t[2:] for t in bio_labels[1::2]])
        (Path(out_dir) / "candidate").touch()
        progress(SimpleNamespace(step=1, total_steps=1, epoch=1, elapsed_s=0.1))
        return SimpleNamespace(model_dir=Path(out_dir), metrics={})

    def evaluate(self, model_dir, examples):
        misses = self.candidate_misses if (Path(model_dir) / "candidate").exists() else self.previous_misses
        gold = [example.tags for example in examples]
        missed = range(misses) if (Path(model_dir) / "candidate").exists() else range(len(gold) - misses, len(gold))
        predicted = [["O"] * len(tags) if i in missed else list(tags) for i, tags in enumerate(gold)]
        return score_tags(gold, predicted)
