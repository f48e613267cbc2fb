"""What the backend writes into a Label Studio project: the model card's title, the Instructions block and the ML
record's description, after a run and after a run that failed (also when its worker died, which the serving
process's queue watchdog finds). Every text passes ``public.redact_paths``; a failure to write is logged, never
raised."""
from __future__ import annotations

import logging
import time

from backend.shared.labelstudio import Credentials, LabelStudioClient, LabelStudioError, ProjectClient
from backend.shared.public import redact_paths
from backend.shared.report import failure_block, failure_description, publish_resumes
from backend.shared.settings import Settings
from backend.shared.store import ModelStore, utc_now

log = logging.getLogger(__name__)

TITLE_LENGTH = 200  # Label Studio's ML record title is a CharField of max_length 256


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


def client_for(settings: Settings, payload: dict) -> LabelStudioClient:
    """The Label Studio client of a job: ``credentials_for``, and the backend's own basic auth when it has one."""
    backend_auth = (settings.basic_auth_user, settings.basic_auth_pass) if settings.auth_enabled else None
    return LabelStudioClient(credentials_for(settings, payload), backend_auth=backend_auth)


class Card:
    """The backend's card in Label Studio's Settings -> Model: its title (which Label Studio 1.23 displays) tells
    the run's state, written only when it changes; a failure to write it is logged, never fatal."""

    PROGRESS_INTERVAL_S = 5.0  # a progress title is written at most this often: each write makes Label Studio
    # check the backend's connection (/health and /setup)
    PROGRESS_PERCENT = 5  # the training title moves in steps of this many percent of the run's steps

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

    def training(self, step: int, total_steps: int) -> None:
        """``NER · training 35% (step 106/304)``, written when the percentage crosses a multiple of
        ``PROGRESS_PERCENT`` (each write is one request; at most 100 / PROGRESS_PERCENT + 1 of them a run)."""
        if not total_steps:
            self.show("NER · training 0%")
            return
        percent = self.PROGRESS_PERCENT * (100 * step // total_steps // self.PROGRESS_PERCENT)
        if self.shown is None or not self.shown.startswith(f"NER · training {percent}%"):
            self.show(f"NER · training {percent}% (step {step}/{total_steps})")


def report_back(settings: Settings, client: ProjectClient, project: int, block: str, description: str) -> str | None:
    """Write the Instructions block and the ML record's description; a failure is returned (for /status) and logged,
    never raised: the version is already kept."""
    try:  # no server path reaches annotators (a base model's folder, MODEL_DIR in an error)
        client.write_instruction_block(project, redact_paths(block))
        client.write_ml_description(project, redact_paths(description), settings.backend_url)
    except Exception as error:  # noqa: BLE001
        log.warning("project %s: could not write the report into Label Studio: %s", project, error)
        return f"{type(error).__name__}: {error}"
    return None


def report_failure(settings: Settings, project: str, client: ProjectClient, store: ModelStore, message: str,
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
    report_back(settings, client, int(project), failure_block(message, serving, when),
                failure_description(message, serving, when))
    Card(settings, client, int(project)).show(title)


def report_failed_run(settings: Settings, project: str, payload: dict, message: str, review: bool = False) -> None:
    """Tell Label Studio of a run that ended without reporting itself (its worker died): the Instructions block,
    the ML record's description and the card title say so; the serving version is unchanged. A ``review`` that
    died shows on the card only: the training report in the Instructions is not its to replace."""
    if not settings.report_to_label_studio:
        return
    client = client_for(settings, payload)
    if review:
        Card(settings, client, int(project)).show(f"NER · review failed: {message.splitlines()[0][:160]}")
        return
    report_failure(settings, project, client, ModelStore(settings.model_dir), message, message)
