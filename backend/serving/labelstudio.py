"""The one client of the Label Studio API (label-studio-sdk): training reads annotated tasks and writes reports
back; the exporters read a whole project. Webhook bodies are never trusted as data; everything comes through here
with our own credentials.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)

REPORT_START = '<section class="ner-backend-report">'
REPORT_END = "</section>"
_REPORT_BLOCK = re.compile(re.escape(REPORT_START) + r".*?" + re.escape(REPORT_END), re.DOTALL)
PAGE_SIZE = 100


class LabelStudioError(RuntimeError):
    """Label Studio could not be reached or refused a call; the message says which call and what to check."""


@dataclass(frozen=True)
class Credentials:
    """Where Label Studio is and the key to use; ``repr`` hides the key so it never reaches a log."""

    url: str
    api_key: str

    def __repr__(self) -> str:
        return f"Credentials(url={self.url!r}, api_key=<hidden>)"


@dataclass
class ProjectExport:
    """What an export of a live project brings: its label config XML and all its tasks."""

    label_config: str
    tasks: list[dict]


class ProjectClient(Protocol):
    """What training and publishing need from Label Studio (a fake implements it in tests)."""

    def label_config(self, project: int) -> str: ...

    def annotated_tasks(self, project: int) -> list[dict]: ...

    def write_instruction_block(self, project: int, block_html: str) -> None: ...

    def write_ml_description(self, project: int, description: str, backend_url: str | None) -> bool: ...

    def write_ml_title(self, project: int, title: str, backend_url: str | None) -> bool: ...

    def unlabelled_tasks(self, project: int) -> list[dict]: ...

    def predictions(self, project: int) -> list[dict]: ...

    def import_predictions(self, project: int, predictions: list[dict]) -> None: ...

    def set_model_version(self, project: int, version: str) -> None: ...

    def retrieve_predictions(self, project: int, task_ids: list[int]) -> None: ...


def replace_report_block(instruction: str | None, block_html: str) -> str:
    """``instruction`` with our marked block replaced by ``block_html`` (appended when absent).

    Everything outside the block is kept exactly as the lead wrote it.

    >>> replace_report_block("Label dishes.", REPORT_START + "v1" + REPORT_END)
    'Label dishes.\\n<section class="ner-backend-report">v1</section>'
    >>> replace_report_block('Intro\\n<section class="ner-backend-report">v1</section>\\nOutro',
    ...                      REPORT_START + "v2" + REPORT_END)
    'Intro\\n<section class="ner-backend-report">v2</section>\\nOutro'
    """
    if not block_html.startswith(REPORT_START) or not block_html.endswith(REPORT_END):
        raise ValueError("the report block must start with REPORT_START and end with REPORT_END")
    instruction = instruction or ""
    if _REPORT_BLOCK.search(instruction):
        # a function replacement: block_html may hold backslashes that re.sub would read as escapes
        return _REPORT_BLOCK.sub(lambda _: block_html, instruction, count=1)
    return f"{instruction}\n{block_html}" if instruction else block_html


def _as_dict(item: Any) -> dict:
    if isinstance(item, dict):
        return item
    if hasattr(item, "model_dump"):
        # SDK pydantic models: JSON mode turns datetimes into the ISO strings an export file has
        return item.model_dump(mode="json")
    return dict(item)


class LabelStudioClient:
    """``ProjectClient`` over label-studio-sdk's ``LabelStudio``.

    The SDK sends a plain (legacy, 40 hex) key as ``Authorization: Token <key>`` and swaps a personal access
    token (a JWT refresh token) for an access token itself, so both kinds of key work.
    """

    def __init__(self, credentials: Credentials, timeout: float = 60.0, backend_auth: tuple[str, str] | None = None,
                 sdk: Any = None):
        """``backend_auth``: this backend's own BASIC_AUTH_USER / BASIC_AUTH_PASS, when it has them. ``sdk``
        replaces ``LabelStudio(base_url, api_key)`` (tests)."""
        self.credentials = credentials
        self.backend_auth = backend_auth
        if sdk is None:
            from label_studio_sdk import LabelStudio  # imported here: the HTTP server never needs it

            sdk = LabelStudio(base_url=credentials.url, api_key=credentials.api_key, timeout=timeout)
        self._ls = sdk

    def _call(self, what: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - the SDK raises httpx and ApiError alike
            status = getattr(error, "status_code", None)
            hint = {401: " (check the API key)", 403: " (check the API key)", 404: " (check the project id)"}
            raise LabelStudioError(
                f"{what} at {self.credentials.url} failed: "
                f"{'HTTP ' + str(status) + ' ' if status else ''}{type(error).__name__}{hint.get(status, '')}"
            ) from None

    def label_config(self, project: int) -> str:
        found = self._call(f"reading project {project}", self._ls.projects.get, id=project)
        return found.label_config or ""

    def annotated_tasks(self, project: int) -> list[dict]:
        """Every task of ``project`` that has at least one annotation, with its annotations.

        One request: Label Studio's JSON export of the annotated tasks only (``download_all_tasks=false``). Where
        that endpoint is refused (Label Studio Enterprise answers it 404), every page of ``tasks.list``, whose
        ``only_annotated`` filter Label Studio 1.23 ignores and whose last page ends in a logged 404.
        """
        def pages() -> list[dict]:
            pager = self._ls.tasks.list(project=project, fields="all", only_annotated=True, page_size=PAGE_SIZE)
            return [_as_dict(task) for task in pager]

        try:
            tasks = self._exported_tasks(project, all_tasks=False)
        except Exception as error:  # noqa: BLE001 - no export endpoint here: page through the tasks instead
            log.info("project %s: the export endpoint failed (%s); paging through the tasks", project, error)
            tasks = self._call(f"listing the annotated tasks of project {project}", pages)
        # keep only tasks that really carry annotations (the paging's filter is not applied by the server)
        return [task for task in (_as_dict(task) for task in tasks) if task.get("annotations")]

    def export_project(self, project: int, page_size: int = PAGE_SIZE) -> ProjectExport:
        """Label config and all tasks of ``project``: Label Studio's own JSON export (``projects.exports.as_json``),
        else, when that endpoint fails, every page of ``tasks.list(fields="all")``."""
        found = self._call(f"reading project {project}", self._ls.projects.get, id=project)
        try:
            tasks = self._ls.projects.exports.as_json(project)
        except Exception:  # noqa: BLE001 - older servers: page through the tasks instead
            tasks = self._call(f"listing the tasks of project {project}",
                               lambda: list(self._ls.tasks.list(project=project, fields="all", page_size=page_size)))
        if isinstance(tasks, dict):
            tasks = tasks.get("tasks", [])
        return ProjectExport(label_config=found.label_config or "", tasks=[_as_dict(task) for task in tasks])

    def write_instruction_block(self, project: int, block_html: str) -> None:
        found = self._call(f"reading project {project}", self._ls.projects.get, id=project)
        text = replace_report_block(getattr(found, "expert_instruction", None), block_html)
        # show_instruction is the lead's choice (the pop-up before labelling): it is left as it is
        self._call(f"updating the instructions of project {project}", self._ls.projects.update,
                   id=project, expert_instruction=text)

    def unlabelled_tasks(self, project: int) -> list[dict]:
        """Every task of ``project`` without any annotation, in one request: Label Studio's JSON export of all
        tasks (it names a task's predictions by id only: ``predictions`` has them)."""
        tasks = self._call(f"exporting the tasks of project {project}", self._exported_tasks, project, all_tasks=True)
        return [task for task in (_as_dict(task) for task in tasks) if not task.get("annotations")]

    def predictions(self, project: int) -> list[dict]:
        """Every prediction of ``project`` (its ``task``, ``model_version``, ``result``, ``created_at``), in one
        request."""
        found = self._call(f"reading the predictions of project {project}", self._ls.predictions.list, project=project)
        return [_as_dict(prediction) for prediction in found]

    def _exported_tasks(self, project: int, all_tasks: bool) -> list[dict]:
        """Label Studio's JSON export of ``project`` in one request: every task, or the annotated ones only."""
        chunks = self._ls.projects.exports.download_sync(id=project, export_type="JSON", download_all_tasks=all_tasks)
        data = json.loads(b"".join(chunks) if not isinstance(chunks, (bytes, str)) else chunks)
        return data if isinstance(data, list) else data.get("tasks", [])

    def import_predictions(self, project: int, predictions: list[dict]) -> None:
        """Write ``predictions`` (``task``, ``result``, ``score``, ``model_version`` each) in one request."""
        self._call(f"importing {len(predictions)} predictions into project {project}", self._ls.projects.import_predictions,
                   id=project, request=predictions)

    def set_model_version(self, project: int, version: str) -> None:
        """Make ``version`` the project's model version: the predictions the labeling stream shows, and those the
        Data Manager's "Prediction score" column averages."""
        self._call(f"setting the model version of project {project}", self._ls.projects.update,
                   id=project, model_version=version)

    def retrieve_predictions(self, project: int, task_ids: list[int]) -> None:
        """The Data Manager's "Retrieve Predictions" for ``task_ids``: Label Studio asks this backend's ``/predict``
        for those of them without a prediction of the version ``/setup`` names, and stores the answers."""
        self._call(f"retrieving predictions for {len(task_ids)} task(s) of project {project}", self._ls.actions.create,
                   id="retrieve_tasks_predictions", project=project,
                   selected_items={"all": False, "included": list(task_ids)})

    def write_ml_title(self, project: int, title: str, backend_url: str | None) -> bool:
        """Set the title of this backend's ML record (its card in Settings -> Model); see ``write_ml_description``."""
        return self._update_ml_record(project, backend_url, title=title)

    def write_ml_description(self, project: int, description: str, backend_url: str | None) -> bool:
        """Set the description of this backend's ML record in ``project``; False when it cannot be told apart.

        The record is the one whose URL is ``backend_url`` (BACKEND_URL), else the project's only record.
        """
        return self._update_ml_record(project, backend_url, description=description)

    def _update_ml_record(self, project: int, backend_url: str | None, **fields: str) -> bool:
        records = list(self._call(f"listing the ML backends of project {project}", self._ls.ml.list, project=project))
        if backend_url:
            records = [r for r in records if (r.url or "").rstrip("/") == backend_url.rstrip("/")]
        if len(records) != 1:
            log.warning("project %s: %d matching ML backend records; %s not written (set BACKEND_URL)",
                        project, len(records), ", ".join(fields))
            return False
        record = records[0]
        # Label Studio answers 500 to a PATCH of an ML record without url and project in the body, and checks the
        # connection again with the auth the body implies: without ours, a backend behind basic auth answers 401
        # and the PATCH is refused (400)
        auth = {}
        if self.backend_auth:
            auth = {"auth_method": "BASIC_AUTH", "basic_auth_user": self.backend_auth[0],
                    "basic_auth_pass": self.backend_auth[1]}
        self._call(f"updating ML backend {record.id} of project {project}", self._ls.ml.update,
                   id=record.id, url=record.url, project=project, **fields, **auth)
        return True


CONFIRM_TIMEOUT_S = 0.8  # inside a webhook request, which Label Studio gives up on after 1 s


def confirm_project_exists(settings: Any, project: str) -> bool:
    """Whether the Label Studio of LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY has project ``project`` (False when
    they are not set or it cannot be reached in time)."""
    if not settings.label_studio_url or not settings.label_studio_api_key:
        return False
    try:
        client = LabelStudioClient(Credentials(settings.label_studio_url, settings.label_studio_api_key),
                                   timeout=CONFIRM_TIMEOUT_S)
        client.label_config(int(project))
        return True
    except Exception as error:  # noqa: BLE001 - unknown, unreachable or refused: not confirmed
        log.info("project %s not confirmed by Label Studio: %s", project, error)
        return False
