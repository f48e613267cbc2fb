"""One training run of a project: fetch -> convert -> split -> train -> evaluate candidate and current -> decide
-> commit (and promote) -> report back. The body of every training job; the HTTP service never imports it.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, replace
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
from backend.serving.annotated_cache import cache_path, fetch_annotated
from backend.serving.jobs import PUBLISH, ProgressCallback
from backend.serving.labelstudio import Credentials, LabelStudioClient, LabelStudioError, ProjectClient
from backend.serving.model_cache import fits, start_version
from backend.serving.public import redact_paths
from backend.serving.report import failure_block, failure_description, instruction_block, ml_description, outcome_title
from backend.serving.settings import Settings
from backend.serving.store import Manifest, ModelStore, model_labels, utc_now

log = logging.getLogger(__name__)

MIN_TRAINING_TASKS = 2
TITLE_LENGTH = 200  # Label Studio's ML record title is a CharField of max_length 256


class TrainingDataError(RuntimeError):
    """The project has too little usable annotated data to train; the message says what to do."""


def credentials_for(settings: Settings, payload: dict) -> Credentials:
    """LABEL_STUDIO_URL + LABEL_STUDIO_API_KEY, each falling back to what /setup sent (hostname, access_token)."""
    url = settings.label_studio_url or (payload or {}).get("hostname")
    key = settings.label_studio_api_key or (payload or {}).get("access_token")
    if not url or not key:
        raise LabelStudioError(
            "no Label Studio credentials: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY for the backend, "
            "or let Label Studio call /setup first (open the project's Model settings)"
        )
    return Credentials(url.rstrip("/"), key)


def run_training_job(settings: Settings, project: str, payload: dict, progress: ProgressCallback) -> dict[str, Any]:
    """The training child's entry: build the Label Studio client and the store, run ``train_project``; on
    failure, report the error into the project like a result (the previous model keeps serving)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [training] %(name)s: %(message)s")
    # the SDK's client logs every request, including the 404 that ends its paging; keep only problems
    logging.getLogger("httpx").setLevel(logging.WARNING)
    quiet_expected_load_reports()  # a base's new head is expected: one info line, not a warning table a run
    store = ModelStore(settings.model_dir)
    client = _client(settings, payload)
    if payload.get("action") == PUBLISH:
        return {**publish_project(settings, project, client, store, progress),
                "label_studio": client.requests_summary()}
    try:
        summary = train_project(settings, project, client, store, progress)
        summary["label_studio"] = client.requests_summary()
        log.info("project %s: Label Studio requests of this run: %s", project, summary["label_studio"])
        return summary
    except Exception as error:
        if settings.report_to_label_studio:
            _report_failure(settings, project, client, store, f"{type(error).__name__}: {error}",
                            str(error) or type(error).__name__)
        raise


def report_failed_run(settings: Settings, project: str, payload: dict, message: str) -> None:
    """Tell Label Studio of a run that ended without reporting itself (its worker died): the Instructions block,
    the ML record's description and the card title say so; the serving version is unchanged."""
    if settings.report_to_label_studio:
        _report_failure(settings, project, _client(settings, payload), ModelStore(settings.model_dir), message, message)


def _client(settings: Settings, payload: dict) -> LabelStudioClient:
    backend_auth = (settings.basic_auth_user, settings.basic_auth_pass) if settings.auth_enabled else None
    return LabelStudioClient(credentials_for(settings, payload), backend_auth=backend_auth)


def _report_failure(settings: Settings, project: str, client: ProjectClient, store: ModelStore, message: str,
                    reason: str) -> None:
    """The Instructions block, the ML record's description and the card after a run that failed. A run that had
    promoted its version and died while publishing it says so, and that the publishing resumes."""
    when = utc_now()
    title = f"NER · training failed: {reason.splitlines()[0][:120]}"
    due = store.announcement_due(project) if settings.publish_predictions else None
    record = store.publishing(project)
    if due is not None and record.get("version") == due and record.get("state") in ("publishing", "failed"):
        at = f" at {record.get('written', 0)}/{record['total']}" if record.get("total") else ""
        message = f"{message}; {due} was promoted and its publishing stopped{at}: {publish_resumes(due)}"
        title = f"NER · {due} promoted · publishing stopped{at}: resumes at the next connection"
    serving = store.announced(project)
    _report_back(settings, client, int(project), failure_block(message, serving, when),
                 failure_description(message, serving, when))
    Card(settings, client, int(project)).show(title)


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
    summary (JSON-able). ``train_fn``, ``evaluate_fn`` and ``load_predictor`` replace the real ones (tests)."""
    if train_fn is None or evaluate_fn is None:
        from backend.model.train import evaluate_model, train_model

        train_fn, evaluate_fn = train_fn or train_model, evaluate_fn or evaluate_model
    progress = progress or (lambda *args, **kwargs: None)
    project_number = int(project)
    card = Card(settings, client, project_number)

    progress("fetching")
    card.show("NER · fetching the annotated tasks")
    label_config = client.label_config(project_number)
    schema = parse_label_config(label_config)
    fetched = fetch_annotated(client, project_number, label_config, cache_path(store.project_dir(project)),
                              source=_source(client))
    tasks = fetched.tasks
    keyed = _convert(project, tasks, schema)
    by_id = {task.get("id"): task for task in tasks}
    config = settings.training_config()
    fingerprint = training_fingerprint(settings, config, schema, [(key, by_id.get(key) or {}) for key, _ in keyed])
    unchanged = _unchanged_since(store, project, fingerprint)
    if unchanged is not None:
        decision = (f"nothing new since {unchanged}: the same annotations, label config and recipe it was trained "
                    "on; no new version")
        log.info("project %s: %s", project, decision)
        summary = {"version": None, "promoted": False, "f1": None, "previous_version": store.current(project),
                   "previous_f1": None, "train_size": 0, "validation_size": 0, "decision": decision,
                   "deleted_versions": [], "report_error": None, "published": None, "publish_error": None,
                   "fetch": fetched.summary()}
        due = store.announcement_due(project) if settings.publish_predictions else None
        if due is not None:  # a publishing that was interrupted: this press resumes it
            summary["decision"] += f"; resumed publishing {due}"
            summary["published"], summary["publish_error"] = _publish(settings, project, due, client, store,
                                                                      progress, load_predictor, card)
        if not summary["publish_error"]:
            card.show(outcome_title(summary))
        return summary
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
        recipe, started_from, line_base_size = _starting_point(settings, store, project, schema, config,
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
        previous = _previous_model(settings, store, project, schema)
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
            suggestions=_suggestions(project, tasks, schema),
        )
        current = store.current(project)
        manifest.promoted, manifest.decision = _decide(settings, manifest, current if previous is None else None)
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
        report_error = _report_back(settings, client, project_number, instruction_block(manifest),
                                    ml_description(manifest))
    summary = {"version": version, "promoted": manifest.promoted, "f1": manifest.f1,
               "previous_version": manifest.previous_version, "previous_f1": manifest.previous_f1,
               "train_size": manifest.train_size, "validation_size": manifest.validation_size,
               "decision": manifest.decision, "deleted_versions": removed, "report_error": report_error,
               "f1_difference": manifest.f1_difference.to_dict() if manifest.f1_difference else None,
               "started_from": started_from, "published": None, "publish_error": None,
               "fetch": fetched.summary()}
    if settings.publish_predictions and store.announcement_due(project) is not None:
        summary["published"], summary["publish_error"] = _publish(settings, project, store.current(project), client,
                                                                  store, progress, load_predictor, card)
    if not summary["publish_error"]:  # else the card says where publishing stopped and that it resumes
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
    published, error = _publish(settings, project, version, client, store, progress, load_predictor, card)
    if error:
        raise RuntimeError(f"publishing {version}: {error}")
    if "withdrawn" in published:
        return {"version": version, "decision": published["withdrawn"], "published": None}
    card.show(f"NER · {version} serving")
    return {"version": version, "decision": f"published {version}", "published": published}


def _publish(settings: Settings, project: str, version: str, client: ProjectClient, store: ModelStore,
             progress: ProgressCallback, load: Callable | None = None,
             card: "Card | None" = None) -> tuple[dict | None, str | None]:
    """``publish`` whose failure is returned, not raised: the version is promoted whatever happens to its
    publishing, which resumes later (see ``publish_resumes``). ``card`` shows the publishing's progress."""
    from backend.serving.publishing import Unfit, publish

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


def publish_resumes(version: str) -> str:
    """What happens next to a publishing that stopped, in the words /status, the log and the card use."""
    return (f"publishing {version} resumes at the next /setup (Label Studio calls it when a task or the Model page "
            f"opens; at most once a minute), the queue's watchdog, or Start Training, and writes only the tasks "
            f"still missing it; until then annotators see the version announced before it")



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


def _unchanged_since(store: ModelStore, project: str, fingerprint: str) -> str | None:
    """The serving version, or a newer one that was not promoted, when it was trained on exactly ``fingerprint``
    (training again would make the same model: the seed is part of the recipe); else None."""
    current = store.current(project)
    names = store.version_names(project)
    newer = names[names.index(current) + 1:] if current in names else names
    for name in [*reversed(newer), *([current] if current else [])]:
        manifest = store.manifest(project, name)
        if manifest is not None and manifest.fingerprint == fingerprint:
            return name if name == current else f"{name} (not promoted; {current or 'no model'} serves)"
    return None


class Card:
    """The backend's card in Label Studio's Settings -> Model: its title (which Label Studio 1.23 displays) tells
    the run's state, written only when it changes; a failure to write it is logged, never fatal."""

    PROGRESS_INTERVAL_S = 5.0  # a progress title is written at most this often: each write makes Label Studio
    # check the backend's connection (/health and /setup)

    def __init__(self, settings: Settings, client: ProjectClient, project: int):
        self.settings, self.client, self.project = settings, client, project
        self.shown: str | None = None
        self._progress_at = 0.0

    def show(self, title: str) -> None:
        if not self.settings.report_to_label_studio or title == self.shown:
            return
        self.shown = title
        try:
            self.client.write_ml_title(self.project, redact_paths(title)[:TITLE_LENGTH], self.settings.backend_url)
        except Exception as error:  # noqa: BLE001
            log.warning("project %s: could not update the model card's title: %s", self.project, error)

    def progress(self, title: str) -> None:
        """``show`` a title that changes often (a count), at most every ``PROGRESS_INTERVAL_S``."""
        if time.monotonic() - self._progress_at >= self.PROGRESS_INTERVAL_S:
            self._progress_at = time.monotonic()
            self.show(title)

    PROGRESS_PERCENT = 5  # the training title moves in steps of this many percent of the run's steps

    def training(self, step: int, total_steps: int) -> None:
        """``NER · training 35% (step 106/304)``, written when the percentage crosses a multiple of
        ``PROGRESS_PERCENT`` (each write is one request; at most 100 / PROGRESS_PERCENT + 1 of them a run)."""
        if not total_steps:
            self.show("NER · training 0%")
            return
        percent = self.PROGRESS_PERCENT * (100 * step // total_steps // self.PROGRESS_PERCENT)
        if self.shown is None or not self.shown.startswith(f"NER · training {percent}%"):
            self.show(f"NER · training {percent}% (step {step}/{total_steps})")


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


def _previous_model(settings: Settings, store: ModelStore, project: str, schema: LabelSchema) -> tuple[str, Path] | None:
    """The model serving before this run (current version, else a fitting start model) for the comparison; None
    when there is none, or when the current version no longer fits the config (a label renamed or removed): it
    cannot serve, so it cannot hold back a candidate that can."""
    current = store.current(project)
    if current is not None:
        folder = store.version_dir(project, current)
        return (current, folder) if fits(model_labels(folder), schema) else None
    if settings.start_model is not None and fits(model_labels(settings.start_model), schema):
        return start_version(settings.start_model), settings.start_model
    return None


def _source(client: ProjectClient) -> str:
    """The Label Studio ``client`` reads (its URL), which the kept annotated tasks must have come from."""
    credentials = getattr(client, "credentials", None)
    return getattr(credentials, "url", "") or ""


def _suggestions(project: str, tasks: list[dict], schema: LabelSchema) -> dict[str, Any]:
    """What annotators kept of the suggestions (``data.suggestions``), from the predictions the annotated tasks
    carry (no other prediction is read); an error is logged and leaves it empty: it must not cost the version."""
    try:
        return suggestion_outcomes(tasks, schema).to_dict()
    except Exception as error:  # noqa: BLE001
        log.warning("project %s: could not compare the suggestions with the annotations: %s", project, error)
        return {}


def _starting_point(settings: Settings, store: ModelStore, project: str, schema: LabelSchema, config: Any,
                    train_size: int) -> tuple[Any, str, int]:
    """The recipe of this run, what it starts from, and the training-set size of its line's last start from the base
    model. A warm start (``warm_recipe``) continues from the serving version, head included, when it predicts
    exactly the project's BIO labels and its line has not grown WARM_START_REBASE_GROWTH times since it last
    started from the base model (``rebase_due``); otherwise the run starts from the base model (also with no
    version yet, or WARM_START off)."""
    base = f"base model {config.base_model}"  # a folder shows by its name (public.redact_paths) wherever written
    current = store.current(project)
    if not settings.warm_start or current is None:
        return config, base, train_size
    folder = store.version_dir(project, current)
    if model_labels(folder) != tuple(schema.labels):  # the same labels in the same order: the same BIO list
        return config, f"{base} ({current}'s labels are not the project's)", train_size
    manifest = store.manifest(project, current)
    line_base_size = (manifest.line_base_size or manifest.train_size) if manifest else 0
    if rebase_due(settings, train_size, line_base_size):
        return config, (f"{base} (the training set has grown from {line_base_size} to {train_size} examples since "
                        f"{current}'s line last started from it)"), train_size
    return warm_recipe(settings, config, folder), f"{current} (warm start)", line_base_size


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


def _report_back(settings: Settings, client: ProjectClient, project: int, block: str, description: str) -> str | None:
    """Write the scores into the project; a failure is returned (for /status) and logged, never raised: the version
    is already kept."""
    try:  # no server path reaches annotators (a base model's folder, MODEL_DIR in an error)
        client.write_instruction_block(project, redact_paths(block))
        client.write_ml_description(project, redact_paths(description), settings.backend_url)
    except Exception as error:  # noqa: BLE001
        log.warning("project %s: could not write the report into Label Studio: %s", project, error)
        return f"{type(error).__name__}: {error}"
    return None
