"""The review of a project's annotations, a job of the training loop (payload action ``review``): likely label
errors found out-of-sample, and annotator agreement.

k-fold over the annotated tasks (``review.fold_of``: a hash of the task id): each fold's model is trained from
BASE_MODEL with the project's recipe on the other folds and scores only its own fold, so no task is ever scored by a
model that trained on it (the serving version saw them all: it is never used here). A task's score is the doubt of its most doubtful word: how much likelier the
model finds another label than the annotated one there (nats), each label's log-probability taken relative to its
mean on the words annotated with it (``class_thresholds``, ``word_doubts``); 0 when the annotated labels lead
everywhere; ties broken by the whole sequences' log-ratio (``LabellingScore.log_ratio``, kept as
``sequence_log_ratio``); its findings say which spans differ and how (``review.findings``). Agreement needs no model
(``review.agreement``). The record is written atomically to ``MODEL_DIR/<project>/review.json`` (``store.
record_review``), which ``GET /review`` reads; the Instructions block, a Data Manager tab and the card show it.
"""
from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from backend.data.review import UNALIGNED_KINDS, agreement, findings, fold_of
from backend.data.schema import LabelSchema, parse_label_config
from backend.data.spans import ConversionReport, Example
from backend.data.tasks import task_name, task_to_example
from backend.shared.card import Card
from backend.shared.labelstudio import ProjectClient
from backend.shared.report import review_block, review_title
from backend.shared.settings import Settings
from backend.shared.store import ModelStore, utc_now
from backend.training.annotated_cache import cache_path, fetch_annotated
from backend.training.jobs import ProgressCallback

log = logging.getLogger(__name__)

MIN_PER_FOLD = 5  # held-out tasks a fold needs at least: fewer folds for small projects, 2 at least
MIN_REVIEW_TASKS = 2 * MIN_PER_FOLD
REVIEW_VIEW_TITLE = "Review: likely label errors"


class ReviewDataError(RuntimeError):
    """Too few usable annotated tasks to score out-of-sample; the message says how many are needed."""


class ReviewFailed(RuntimeError):
    """A review that could not finish (a fold's training, Label Studio, the disk); the message names the project and
    the review's own error. The last review's record, the training report and the serving version are untouched."""


def fold_count(usable: int, wanted: int, project: str = "") -> int:
    """How many folds a review of ``usable`` tasks runs: ``wanted`` (REVIEW_FOLDS), fewer so each holds about
    MIN_PER_FOLD tasks, never under 2; too few tasks is a ``ReviewDataError`` that says how many more are needed.

    >>> fold_count(1000, 5), fold_count(12, 5), fold_count(10, 5)
    (5, 2, 2)
    """
    if usable < MIN_REVIEW_TASKS:
        raise ReviewDataError(
            f"project {project} has {usable} usable annotated task(s); the review needs at least {MIN_REVIEW_TASKS} "
            f"(each task is scored by a model trained on the others, in at least 2 folds of {MIN_PER_FOLD}): "
            f"annotate {MIN_REVIEW_TASKS - usable} more, then start the review again")
    return max(2, min(wanted, usable // MIN_PER_FOLD))


def review_examples(keyed: Sequence[tuple[Any, Example]], bio_labels: Sequence[str], recipe: Any, work_dir: Path,
                    folds: int, train_fn: Callable | None = None, score_fn: Callable | None = None,
                    progress: ProgressCallback | None = None) -> list[dict[str, Any]]:
    """Score every ``(task id, example)`` out-of-sample: per fold, ``train_fn(train, bio_labels, recipe, out_dir,
    progress=...)`` on the other folds' examples, then ``score_fn(model_dir, held_out)`` (a ``LabellingScore`` per
    example) on its own. Returns ``{"task", "score", "fold", "findings"}`` per task, most likely wrong first."""
    if train_fn is None:
        from backend.model.train import train_model as train_fn
    score_fn = score_fn or score_with_model
    progress = progress or (lambda *args, **kwargs: None)
    assignment = {key: fold_of(key, folds) for key, _ in keyed}
    kept = []
    for fold in range(folds):
        held = [(key, example) for key, example in keyed if assignment[key] == fold]
        train = [example for key, example in keyed if assignment[key] != fold]
        if not held:
            continue
        if not train:
            raise ReviewDataError(
                f"all {len(keyed)} usable annotated tasks fell in one fold of {folds} (a task's fold is drawn from a "
                "hash of its id), so no fold has tasks to train on: annotate a few more, then start the review again")

        training = f"fold {fold + 1}/{folds}: training on {len(train)} tasks"

        def on_progress(p, fold=fold, training=training) -> None:
            done = fold * p.total_steps + p.step
            progress("reviewing", step=done, total_steps=folds * p.total_steps, message=training)

        progress("reviewing", message=training)
        out = Path(work_dir) / f"fold-{fold}"
        try:
            result = train_fn(train, list(bio_labels), recipe, out, progress=on_progress)
            progress("reviewing", message=f"fold {fold + 1}/{folds}: scoring {len(held)} held-out tasks")
            scored = score_fn(Path(result.model_dir), [example for _, example in held])
        finally:
            shutil.rmtree(out, ignore_errors=True)
        for (key, example), score in zip(held, scored, strict=True):
            kept.append((key, example, score, fold))
    thresholds = class_thresholds([(example, score) for _, example, score, _ in kept], bio_labels)
    reviews = []
    for key, example, score, fold in kept:
        doubt = word_doubts(example, score, list(bio_labels), thresholds)
        reviews.append({"task": key, "score": round(max([0.0, *doubt]), 4),
                        "sequence_log_ratio": round(score.log_ratio, 4), "fold": fold,
                        "findings": [item.to_dict() for item in findings(example, score.best_tags, doubt)]})
    return sorted(reviews, key=lambda item: (-item["score"], -item["sequence_log_ratio"], str(item["task"])))


def class_thresholds(scored: Sequence[tuple[Example, Any]], bio_labels: Sequence[str]) -> dict[str, float]:
    """Per label, the mean out-of-sample log-probability the models give it on the words annotated with it
    (cleanlab's per-class threshold, Northcutt et al. 2021): how sure the models are of that label where it is
    given. A label the models are always less sure of (an entity, next to O) is not read as doubt."""
    sums: dict[str, list[float]] = {}
    for example, score in scored:
        for tag, given in zip(example.tags, score.given):
            sums.setdefault(tag, []).append(math.exp(given))
    return {tag: math.log(max(1e-6, sum(values) / len(values))) for tag, values in sums.items() if tag in bio_labels}


def word_doubts(example: Example, score: Any, bio_labels: list[str], thresholds: dict[str, float]) -> list[float]:
    """Per word, how much likelier the model finds another label than the annotated one, each label's
    log-probability taken relative to its threshold (``class_thresholds``); 0 where the annotated label leads.
    Without the full rows (a scorer that gives only the best and the given tag), the plain log-ratio."""
    if not score.rows:
        return [max(0.0, best - given) for best, given in zip(score.best, score.given)]
    doubts = []
    for tag, row in zip(example.tags, score.rows):
        adjusted = [value - thresholds.get(label, 0.0) for label, value in zip(bio_labels, row)]
        given = adjusted[bio_labels.index(tag)] if tag in bio_labels else -1e4
        doubts.append(max(0.0, max(adjusted) - given))
    return doubts


def score_with_model(model_dir: Path, examples: Sequence[Example]) -> list:
    """``Predictor.score_labellings`` of a fold's model on its held-out examples."""
    from backend.model.predict import Predictor

    predictor = Predictor.load(model_dir)
    return predictor.score_labellings([example.tokens for example in examples],
                                      [example.tags for example in examples])


def usable_examples(tasks: Sequence[dict], schema: LabelSchema) -> tuple[list[tuple[Any, Example]], list[dict]]:
    """The ``(task id, example)`` of every task whose annotation converts, and the tasks whose annotation did not
    land on its words as written (a span left out, moved or cut), each with what happened: listed, never dropped
    silently (a task that still converts is scored too)."""
    keyed, unaligned = [], []
    for position, task in enumerate(tasks, start=1):
        report = ConversionReport()
        example = task_to_example(task, schema, report, where=task_name(task, position))
        problems = sorted(kind for kind in report.counts if kind in UNALIGNED_KINDS)
        if problems or example is None:
            unaligned.append({"task": task.get("id"), "problems": problems or sorted(report.counts),
                              "notes": report.notes[:5], "scored": example is not None})
        if example is not None:
            keyed.append((task.get("id") if task.get("id") is not None else position, example))
    return keyed, unaligned


def review_project(settings: Settings, project: str, client: ProjectClient, store: ModelStore,
                   progress: ProgressCallback | None = None, train_fn: Callable | None = None,
                   score_fn: Callable | None = None) -> dict[str, Any]:
    """One review of ``project``: fetch the annotated tasks, agreement, k-fold scoring, then the record in the
    store and in Label Studio (Instructions block, the Data Manager tab, the card). Returns a summary."""
    progress = progress or (lambda *args, **kwargs: None)
    started = time.monotonic()
    card = Card(settings, client, int(project))
    progress("fetching")
    card.show("NER · review: fetching the annotated tasks")
    label_config = client.label_config(int(project))
    schema = parse_label_config(label_config)
    fetched = fetch_annotated(client, int(project), label_config, cache_path(store.project_dir(project)))
    keyed, unaligned = usable_examples(fetched.tasks, schema)
    agreed = agreement(fetched.tasks, schema, _user_names(client, project))
    record: dict[str, Any] = {"project": project, "state": "done", "started_at": utc_now(), "tasks": [],
                              "unaligned": unaligned, "agreement": agreed.to_dict(), "reviewed": len(keyed),
                              "annotated": len(fetched.tasks), "folds": 0, "base_model": settings.base_model}
    try:
        folds = fold_count(len(keyed), settings.review_folds, project)
    except ReviewDataError as error:
        record.update(state="too few tasks", message=str(error))
        folds = 0
    if folds:
        recipe = settings.training_config()
        if settings.review_epochs:
            recipe = replace(recipe, epochs=settings.review_epochs)

        def on_progress(stage=None, **kwargs) -> None:
            progress(stage, **kwargs)
            if kwargs.get("total_steps"):
                percent = 100 * kwargs["step"] // kwargs["total_steps"]
                card.progress(f"NER · reviewing {percent}% ({kwargs.get('message') or ''})")

        work_dir = store.new_temporary_dir(project)
        try:
            record["tasks"] = review_examples(keyed, schema.bio_labels, recipe, work_dir, folds, train_fn, score_fn,
                                              on_progress)
            record["folds"] = folds
        except ReviewDataError as error:  # the folds left one without tasks to train on: said like too few tasks
            record.update(state="too few tasks", message=str(error))
            folds = 0
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
    record["seconds"] = round(time.monotonic() - started, 1)
    record["finished_at"] = utc_now()
    store.record_review(project, record)
    progress("reporting")
    flagged = flagged_tasks(record, settings.review_show)
    if settings.report_to_label_studio:
        record["report_error"] = _report(settings, client, int(project), record, flagged)
        if record["report_error"]:  # kept with the record: GET /review says the lead won't find it in Label Studio
            store.record_review(project, record)
    card.show(review_title(record, len(flagged)))
    log.info("project %s: review %s: %d tasks scored in %d folds, %d flagged, %s s", project, record["state"],
             len(record["tasks"]), folds, len(flagged), record["seconds"])
    return {"review": record["state"], "scored": len(record["tasks"]), "folds": folds, "flagged": len(flagged),
            "unaligned": len(unaligned), "agreement_tasks": agreed.tasks, "message": record.get("message"),
            "seconds": record["seconds"], "report_error": record.get("report_error"),
            "fetch": fetched.summary()}


def run_review(settings: Settings, project: str, client: ProjectClient, store: ModelStore,
               progress: ProgressCallback | None = None) -> dict[str, Any]:
    """``review_project`` as a job runs it: a failure is a ``ReviewFailed`` naming the project and the error, and the
    card says the review failed and why (else it would show the review fetching or going for ever); the training
    report in the Instructions is not touched (no training failed)."""
    try:
        return review_project(settings, project, client, store, progress)
    except Exception as error:
        reason = f"{type(error).__name__}: {error}"
        Card(settings, client, int(project)).show(f"NER · review failed: {reason.splitlines()[0][:160]}")
        raise ReviewFailed(f"the review of project {project} failed: {reason}") from error


def flagged_tasks(record: dict, limit: int) -> list[dict]:
    """The tasks the lead is shown first: those with a finding, most likely wrong first, at most ``limit``."""
    return [item for item in record.get("tasks") or [] if item.get("findings")][:limit]


def _user_names(client: ProjectClient, project: str) -> dict[Any, str]:
    try:
        return client.user_names()
    except Exception as error:  # noqa: BLE001 - agreement still counts, naming users by id
        log.warning("project %s: could not read Label Studio's user names: %s", project, error)
        return {}


def _report(settings: Settings, client: ProjectClient, project: int, record: dict, flagged: list[dict]) -> str | None:
    """The Data Manager tab of the flagged tasks and the Instructions block's review section; a failure is
    returned and logged, never raised: the record is kept."""
    try:
        client.write_review_view(project, REVIEW_VIEW_TITLE, [item["task"] for item in flagged])
        client.write_instruction_block(project, review_block(record, flagged, settings.label_studio_url or ""))
    except Exception as error:  # noqa: BLE001
        log.warning("project %s: could not write the review into Label Studio: %s", project, error)
        return f"{type(error).__name__}: {error}"
    return None
