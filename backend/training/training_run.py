"""One training run of a project: fetch -> convert -> split -> train -> evaluate candidate and current -> decide
-> commit (and promote) -> report back. The body of every training job; the HTTP service never imports it.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from backend.data.formats import keyed_tasks_to_examples
from backend.data.schema import LabelSchema, parse_label_config
from backend.data.spans import ConversionReport, Example, has_entities
from backend.data.splits import split_examples
from backend.data.suggestions import suggestion_outcomes
from backend.data.tasks import choose_annotation
from backend.model.library_noise import quiet_expected_load_reports
from backend.model.metrics import Scores, f1_difference
from backend.shared.card import TITLE_LENGTH, Card, client_for, report_back, report_failure
from backend.shared.labelstudio import ProjectClient
from backend.shared.report import instruction_block, ml_description, outcome_title, publish_resumes
from backend.shared.settings import Settings
from backend.shared.store import Manifest, ModelStore, fits, model_labels, start_version, utc_now
from backend.training.annotated_cache import cache_path, fetch_annotated
from backend.training.jobs import PUBLISH, REVIEW, ProgressCallback

log = logging.getLogger(__name__)

MIN_TRAINING_TASKS = 2


class TrainingDataError(RuntimeError):
    """The project has too little usable annotated data to train; the message says what to do."""


def run_training_job(settings: Settings, project: str, payload: dict, progress: ProgressCallback) -> dict[str, Any]:
    """The training child's entry: build the Label Studio client and the store, run ``train_project``; on
    failure, report the error into the project like a result (the previous model keeps serving)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [training] %(name)s: %(message)s")
    # the SDK's client logs every request, including the 404 that ends its paging; keep only problems
    logging.getLogger("httpx").setLevel(logging.WARNING)
    quiet_expected_load_reports()  # a base's new head is expected: one info line, not a warning table a run
    store = ModelStore(settings.model_dir)
    client = client_for(settings, payload)
    if payload.get("action") == PUBLISH:
        return {**publish_project(settings, project, client, store, progress),
                "label_studio": client.requests_summary()}
    if payload.get("action") == REVIEW:
        from backend.training.review import run_review

        summary = run_review(settings, project, client, store, progress)
        if payload.get(PUBLISH):  # a publishing asked while the review waited
            summary["published"] = publish_project(settings, project, client, store, progress)
        return {**summary, "label_studio": client.requests_summary()}
    try:
        summary = train_project(settings, project, client, store, progress)
    except Exception as error:
        if payload.get(REVIEW):  # the review that waited behind this training needs none of it: it runs all the same
            _review_after_failed_training(settings, project, client, store, progress)
        if settings.report_to_label_studio:  # after the review: the card ends on the training's failure
            report_failure(settings, project, client, store, f"{type(error).__name__}: {error}",
                           str(error) or type(error).__name__)
        raise
    if payload.get(REVIEW):  # a review asked while this training waited: after it, on what it trained on
        from backend.training.review import ReviewFailed, run_review

        try:
            summary["review"] = run_review(settings, project, client, store, progress)
        except ReviewFailed as failure:  # the training's own outcome stands, reported as it went
            kept = summary.get("version") or "no new version"
            raise ReviewFailed(f"{failure}; the training before it finished: {kept}, {summary['decision']}") \
                from failure.__cause__
    summary["label_studio"] = client.requests_summary()
    log.info("project %s: Label Studio requests of this run: %s", project, summary["label_studio"])
    return summary


def _review_after_failed_training(settings: Settings, project: str, client: ProjectClient, store: ModelStore,
                                  progress: ProgressCallback) -> None:
    """The review asked while a training waited, run although that training failed (else the press is lost); its own
    failure is logged and shown on its card (``run_review``): the job fails with the training's error."""
    from backend.training.review import ReviewFailed, run_review

    try:
        run_review(settings, project, client, store, progress)
    except ReviewFailed as failure:
        log.error("project %s: %s", project, failure)


def train_project(
    settings: Settings,
    project: str,
    client: ProjectClient,
    store: ModelStore,
    progress: ProgressCallback | None = None,
    train_fn: Callable | None = None,
    evaluate_fn: Callable | None = None,
    load_predictor: Callable | None = None,
) -> dict[str, Any]:
    """One training run: fetch -> convert -> split -> train -> evaluate candidate and current -> keep the
    version, promote it if not worse -> report back -> publish a promoted version's predictions. Returns a
    summary (JSON-able). ``train_fn``, ``evaluate_fn`` and ``load_predictor`` replace the real ones (tests).

    The facts a run decides on are read once, here, and passed on: the project's label config (``schema``) and the
    store's current version with its labels (``current``: what the candidate is compared with and warm-starts from).
    """
    if train_fn is None or evaluate_fn is None:
        from backend.model.train import evaluate_model, train_model

        train_fn, evaluate_fn = train_fn or train_model, evaluate_fn or evaluate_model
    progress = progress or (lambda *args, **kwargs: None)
    card = Card(settings, client, int(project))
    publishing = functools.partial(_publish, settings, project, client=client, store=store, progress=progress,
                                   load=load_predictor, card=card)

    progress("fetching")
    card.show("NER · fetching the annotated tasks")
    label_config = client.label_config(int(project))
    schema = parse_label_config(label_config)
    current = Current.read(store, project)
    fetched = fetch_annotated(client, int(project), label_config, cache_path(store.project_dir(project)))
    keyed = _convert(project, fetched.tasks, schema)
    by_id = {task.get("id"): task for task in fetched.tasks}
    config = settings.training_config()
    fingerprint = training_fingerprint(settings, config, schema, [(key, by_id.get(key) or {}) for key, _ in keyed])
    unchanged = _unchanged_since(store, project, current.version, fingerprint)
    if unchanged is not None:
        return _nothing_new(settings, project, store, card, publishing, current.version, unchanged, fetched)
    train_examples, validation_examples = split_examples(keyed, settings.validation_fraction)

    progress("training", step=0, total_steps=0)
    temporary = store.new_temporary_dir(project)
    committed = False
    try:
        started = time.monotonic()

        def on_progress(p) -> None:
            progress("training", step=p.step, total_steps=p.total_steps, epoch=p.epoch)
            card.training(p.step, p.total_steps)

        card.training(0, 0)
        recipe, started_from, line_base_size = _starting_point(settings, store, project, schema, config, current,
                                                               len(train_examples))
        # Training never sees the project's validation split (it keeps its last epoch, or picks one on a carve of
        # its own with TRAIN_CARVE_FRACTION), so the candidate and the current model are compared on equal terms.
        result = train_fn(train_examples, schema.bio_labels, recipe, temporary, progress=on_progress)
        seconds = time.monotonic() - started
        if recipe.base_model == config.base_model and getattr(result, "head", "new") != "new":
            started_from = f"{started_from}; {result.head_note}"  # BASE_MODEL's own head: kept or replaced
        if Path(result.model_dir).resolve() != temporary.resolve():
            raise RuntimeError(f"training saved the model in {result.model_dir}, expected {temporary}")

        progress("evaluating")
        previous = _previous_model(settings, current, schema)
        card.show("NER · training 100% · evaluating" + (f" against {previous[0]}" if previous else ""))
        scores, previous_scores = _evaluate_both(project, temporary, previous, validation_examples, evaluate_fn)
        manifest = Manifest(
            project=project,
            base_model=settings.base_model,
            labels=list(schema.labels),
            task_ids=[key for key, _ in keyed],
            annotation_ids=[(choose_annotation(by_id.get(key) or {}) or {}).get("id") for key, _ in keyed],
            train_size=len(train_examples),
            validation_size=len(validation_examples),
            training_seconds=round(seconds, 1),
            settings={"training": _json_safe(asdict(recipe)), "validation_fraction": settings.validation_fraction,
                      "promote_if_not_worse": settings.promote_if_not_worse,
                      "promotion_gate": settings.promotion_gate,
                      "base_model_notes": list(getattr(result, "notes", []))},  # backend/model/base_model.py
            scores=scores,
            previous_version=previous[0] if previous else None,
            previous_scores=previous_scores,
            fingerprint=fingerprint,
            f1_difference=f1_difference(scores, previous_scores) if scores and previous_scores else None,
            started_from=started_from,
            line_base_size=line_base_size,
            suggestions=_suggestions(project, fetched.tasks, schema),
        )
        manifest.promoted, manifest.decision = _decide(settings, manifest,
                                                       current.version if previous is None else None)
        version = store.commit(project, temporary, manifest)
        committed = True
        if manifest.promoted:  # with publishing on, announced once its predictions are written
            store.promote(project, version, announce=not settings.publish_predictions)
        log.info("project %s: trained %s (F1 %s); %s", project, version, manifest.f1, manifest.decision)
    finally:
        if not committed:
            shutil.rmtree(temporary, ignore_errors=True)
    removed = store.prune(project, settings.keep_versions)
    if removed:
        log.info("project %s: deleted %s (KEEP_VERSIONS=%s)", project, ", ".join(removed), settings.keep_versions)

    report_error = None
    if settings.report_to_label_studio:
        progress("reporting")
        report_error = report_back(settings, client, int(project), instruction_block(manifest),
                                   ml_description(manifest))
    summary = {"version": version, "promoted": manifest.promoted, "f1": manifest.f1,
               "previous_version": manifest.previous_version, "previous_f1": manifest.previous_f1,
               "train_size": manifest.train_size, "validation_size": manifest.validation_size,
               "decision": manifest.decision, "deleted_versions": removed, "report_error": report_error,
               "f1_difference": manifest.f1_difference.to_dict() if manifest.f1_difference else None,
               "started_from": started_from, "published": None, "publish_error": None,
               "fetch": fetched.summary()}
    if settings.publish_predictions and store.announcement_due(project) is not None:
        serving = version if manifest.promoted else current.version
        summary["published"], summary["publish_error"] = publishing(serving)
    if not summary["publish_error"]:  # else the card says where publishing stopped and that it resumes
        card.show(outcome_title(summary))
    return summary


@dataclass(frozen=True)
class Current:
    """The store's current (promoted) version of a project when a run starts, its folder and its labels: read once
    (``read``), then passed to every step that compares with it or starts from it."""

    version: str | None
    folder: Path | None = None
    labels: tuple[str, ...] = ()

    @classmethod
    def read(cls, store: ModelStore, project: str) -> Current:
        version = store.current(project)
        if version is None:
            return cls(None)
        folder = store.version_dir(project, version)
        return cls(version, folder, model_labels(folder))


def _nothing_new(settings: Settings, project: str, store: ModelStore, card: Card, publishing: Callable,
                 current: str | None, unchanged: str, fetched: Any) -> dict[str, Any]:
    """The answer to a run with nothing new to train on; it resumes a publishing that was interrupted."""
    decision = (f"nothing new since {unchanged}: the same annotations, label config and recipe it was trained "
                "on; no new version")
    log.info("project %s: %s", project, decision)
    summary = {"version": None, "promoted": False, "f1": None, "previous_version": current,
               "previous_f1": None, "train_size": 0, "validation_size": 0, "decision": decision,
               "deleted_versions": [], "report_error": None, "published": None, "publish_error": None,
               "fetch": fetched.summary()}
    due = store.announcement_due(project) if settings.publish_predictions else None
    if due is not None:  # a publishing that was interrupted: this press resumes it
        summary["decision"] += f"; resumed publishing {due}"
        summary["published"], summary["publish_error"] = publishing(due)
    if not summary["publish_error"]:
        card.show(outcome_title(summary))
    return summary


def publish_project(settings: Settings, project: str, client: ProjectClient, store: ModelStore,
                    progress: ProgressCallback, load_predictor: Callable | None = None) -> dict[str, Any]:
    """A job of its own: publish the promoted version (a publishing to resume, a project that connected, new tasks
    imported), or withdraw it when it no longer fits the label config. ``load_predictor`` replaces the real one
    (tests)."""
    version = store.current(project)
    if version is None:
        return {"version": None, "decision": "nothing to publish: no version serves yet"}
    card = Card(settings, client, int(project))
    published, error = _publish(settings, project, version, client=client, store=store, progress=progress,
                                load=load_predictor, card=card)
    if error:
        raise RuntimeError(f"publishing {version}: {error}")
    if "withdrawn" in published:
        return {"version": version, "decision": published["withdrawn"], "published": None}
    card.show(f"NER · {version} serving")
    return {"version": version, "decision": f"published {version}", "published": published}


def _publish(settings: Settings, project: str, version: str, *, client: ProjectClient, store: ModelStore,
             progress: ProgressCallback, load: Callable | None = None,
             card: Card | None = None) -> tuple[dict | None, str | None]:
    """``publish`` whose failure is returned, not raised: the version is promoted whatever happens to its
    publishing, which resumes later (see ``publish_resumes``). ``card`` shows the publishing's progress."""
    from backend.training.publishing import Unfit, publish

    def on_progress(stage=None, **kwargs) -> None:
        progress(stage, **kwargs)
        if card is not None and kwargs.get("total_steps"):
            card.progress(f"NER · {version} promoted · publishing {kwargs['step']}/{kwargs['total_steps']}")

    try:
        folder = store.version_dir(project, version)
        options = {"load": load} if load else {}
        return publish(settings, project, version, folder, client, store, on_progress, **options), None
    except Unfit as unfit:  # not a failure: the version is withdrawn until one trained on the new labels serves
        if card is not None:
            card.show(f"NER · {unfit}"[:TITLE_LENGTH])
        return {"version": version, "withdrawn": str(unfit)}, None
    except Exception as error:  # noqa: BLE001
        message = f"{type(error).__name__}: {error}"
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            message += "; the disk holding MODEL_DIR is full: free space"
        record = store.publishing(project)
        written = (f" at {record.get('written', 0)}/{record['total']}"
                   if record.get("version") == version and record.get("total") else "")
        log.warning("project %s: publishing %s stopped%s: %s; %s", project, version, written, message,
                    publish_resumes(version))
        try:
            store.record_publishing(project, {**record, "version": version, "state": "failed", "error": message,
                                              "finished_at": utc_now()})
        except OSError:
            pass  # a full disk: the pointer still says the version is not announced, so it resumes all the same
        if card is not None:
            card.show(f"NER · {version} promoted · publishing stopped{written}: resumes at the next connection")
        return None, message


def training_fingerprint(settings: Settings, config: Any, schema: LabelSchema, tasks: list[tuple[Any, dict]]) -> str:
    """What a run would train on, as one hash: every usable task's id with the id and update time of the annotation
    that counts, the label config's labels, the recipe and the validation split. The same fingerprint means the
    same model would be trained again."""
    annotations = []
    for key, task in tasks:
        annotation = choose_annotation(task) or {}
        annotations.append([key, annotation.get("id"), annotation.get("updated_at") or annotation.get("created_at")])
    facts = {"tasks": sorted(annotations, key=str), "schema": asdict(schema), "recipe": _json_safe(asdict(config)),
             "validation_fraction": settings.validation_fraction}
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()


def _unchanged_since(store: ModelStore, project: str, current: str | None, fingerprint: str) -> str | None:
    """The ``current`` version, or a newer one that was not promoted, when it was trained on exactly ``fingerprint``
    (training again would make the same model: the seed is part of the recipe); else None."""
    names = store.version_names(project)
    newer = names[names.index(current) + 1:] if current in names else names
    for name in [*reversed(newer), *([current] if current else [])]:
        manifest = store.manifest(project, name)
        if manifest is not None and manifest.fingerprint == fingerprint:
            return name if name == current else f"{name} (not promoted; {current or 'no model'} serves)"
    return None


def _convert(project: str, tasks: list[dict], schema: LabelSchema) -> list[tuple[Any, Example]]:
    """``(task id, example)`` of every usable annotated task; too few of them is a ``TrainingDataError``."""
    conversion = ConversionReport()
    keyed = keyed_tasks_to_examples(tasks, schema, conversion)
    if conversion:
        log.info("project %s: conversion notes: %s", project, conversion.summary())
    if len(keyed) < MIN_TRAINING_TASKS:
        raise TrainingDataError(
            f"project {project} has {len(keyed)} usable annotated task(s) of {len(tasks)} fetched; at least "
            f"{MIN_TRAINING_TASKS} are needed. Annotate more tasks, then start training again."
            + (f" Conversion notes: {conversion.summary()}" if conversion else "")
        )
    return keyed


def _previous_model(settings: Settings, current: Current, schema: LabelSchema) -> tuple[str, Path] | None:
    """The model serving before this run (current version, else a fitting start model) for the comparison; None
    when there is none, or when the current version no longer fits the config (a label renamed or removed): it
    cannot serve, so it cannot hold back a candidate that can."""
    if current.version is not None:
        return (current.version, current.folder) if fits(current.labels, schema) else None
    if settings.start_model is not None and fits(model_labels(settings.start_model), schema):
        return start_version(settings.start_model), settings.start_model
    return None


def _suggestions(project: str, tasks: list[dict], schema: LabelSchema) -> dict[str, Any]:
    """What annotators kept of the suggestions (``data.suggestions``), from the predictions the annotated tasks
    carry (no other prediction is read); an error is logged and leaves it empty: it must not cost the version."""
    try:
        return suggestion_outcomes(tasks, schema).to_dict()
    except Exception as error:  # noqa: BLE001
        log.warning("project %s: could not compare the suggestions with the annotations: %s", project, error)
        return {}


def _starting_point(settings: Settings, store: ModelStore, project: str, schema: LabelSchema, config: Any,
                    current: Current, train_size: int) -> tuple[Any, str, int]:
    """The recipe of this run, what it starts from, and the training-set size of its line's last start from the base
    model. A warm start (``warm_recipe``) continues from the serving version, head included, when it predicts
    exactly the project's BIO labels and its line has not grown WARM_START_REBASE_GROWTH times since it last
    started from the base model (``rebase_due``); otherwise the run starts from the base model (also with no
    version yet, or WARM_START off)."""
    base = f"base model {config.base_model}"  # a folder shows by its name (public.redact_paths) wherever written
    if not settings.warm_start or current.version is None:
        return config, base, train_size
    if current.labels != tuple(schema.labels):  # the same labels in the same order: the same BIO list
        return config, f"{base} ({current.version}'s labels are not the project's)", train_size
    manifest = store.manifest(project, current.version)
    line_base_size = (manifest.line_base_size or manifest.train_size) if manifest else 0
    if rebase_due(settings, train_size, line_base_size):
        return config, (f"{base} (the training set has grown from {line_base_size} to {train_size} examples since "
                        f"{current.version}'s line last started from it)"), train_size
    return warm_recipe(settings, config, current.folder), f"{current.version} (warm start)", line_base_size


def rebase_due(settings: Settings, train_size: int, line_base_size: int) -> bool:
    """True when a line of warm starts should go back to the base model: its training set is now
    WARM_START_REBASE_GROWTH times (or more) the size it had when the line last started from the base model.
    Warm starts generalise worse the longer they continue (bench/README, "The annotation loop"); a geometric
    schedule keeps the runs from the base model rare: at growth g they cost about g / (g - 1) times the last one."""
    growth = settings.warm_start_rebase_growth
    return bool(growth) and line_base_size > 0 and train_size >= growth * line_base_size


def warm_recipe(settings: Settings, config: Any, version_dir: Path) -> Any:
    """``config`` continuing from ``version_dir``: WARM_START_EPOCHS epochs, more on small data until
    WARM_START_MIN_STEPS optimizer steps (an epoch of 100 sentences is 6 steps), at WARM_START_LR."""
    return replace(config, base_model=str(version_dir), epochs=None, default_epochs=settings.warm_start_epochs,
                   min_steps=settings.warm_start_min_steps, lr=settings.warm_start_lr)


def _evaluate_both(project: str, candidate: Path, previous: tuple[str, Path] | None, validation: list[Example],
                   evaluate_fn: Callable) -> tuple[Scores | None, Scores | None]:
    """The candidate's and the previous model's scores on the same validation tasks. Tasks without any entity
    score F1 0 for every model: no scores then, rather than a misleading 0."""
    if not has_entities(validation):
        return None, None
    scores = evaluate_fn(candidate, validation)
    previous_scores = None
    if previous is not None:
        try:
            previous_scores = evaluate_fn(previous[1], validation)
        except Exception:  # noqa: BLE001 - an unreadable old model must not block a new one
            log.exception("project %s: could not evaluate %s; promoting the new version", project, previous[0])
    return scores, previous_scores


def _decide(settings: Settings, manifest: Manifest, unfit_current: str | None = None) -> tuple[bool, str]:
    """Whether the new version is promoted, and why. ``unfit_current``: the serving version when it no longer fits
    the label config (it cannot serve, so it holds nothing back)."""
    if unfit_current is not None:
        return True, f"promoted: {unfit_current} does not fit the label config any more, so it cannot serve"
    if not settings.promote_if_not_worse:
        return True, "promoted (PROMOTE_IF_NOT_WORSE is off)"
    if manifest.previous_version is None:
        return True, "promoted: first model of the project"
    if manifest.f1 is None and manifest.validation_size:
        return True, (f"promoted: no validation scores to compare (the {manifest.validation_size} validation "
                      "task(s) have no entities)")
    if manifest.f1 is None or manifest.previous_f1 is None:
        return True, "promoted: no validation scores to compare"
    f1, previous, before = manifest.f1, manifest.previous_f1, manifest.previous_version
    difference = manifest.f1_difference
    if settings.promotion_gate == "bootstrap" and difference is not None:
        if difference.worse_beyond_noise:
            return False, f"kept {before}: F1 {f1:.3f} < {previous:.3f}, worse beyond noise ({difference.text()})"
        than = ">=" if f1 >= previous else "<"
        verdict = "" if f1 >= previous else ", within noise"
        return True, f"promoted: F1 {f1:.3f} {than} {previous:.3f} of {before}{verdict} ({difference.text()})"
    if f1 >= previous:
        return True, f"promoted: F1 {f1:.3f} >= {previous:.3f} of {before}"
    return False, f"kept {before}: F1 {f1:.3f} < {previous:.3f}"


def _json_safe(data: dict) -> dict:
    return json.loads(json.dumps(data, default=str))
