"""The one client of the Label Studio API (label-studio-sdk): training reads annotated tasks and writes reports
back; publishing reads the unlabelled tasks; the exporters read a whole project. Webhook bodies are never trusted as
data; everything comes through here with our own credentials.

Tasks are read in pages of the task list API (``GET /api/tasks``), filtered by Label Studio (the Data Manager's
filters: the number of annotations, ``updated_at``) and ordered by id, each page after the last id of the one
before: no request reads a whole project, and a slow or failing page is retried with back-off.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol

log = logging.getLogger(__name__)

REPORT_START = '<section class="ner-backend-report">'
REVIEW_START = '<section class="ner-backend-review">'  # the review's section of the Instructions, apart from the report
REPORT_END = "</section>"
_SECTIONS = {start: re.compile(re.escape(start) + r".*?" + re.escape(REPORT_END), re.DOTALL)
             for start in (REPORT_START, REVIEW_START)}
TASK_PAGE_SIZE = 500  # tasks per page of a filtered read: ~0.5 s of Label Studio's time for short texts
IMPORT_TIMEOUT_S = 600.0  # a prediction import's limit (see ``LabelStudioClient.import_predictions``)
RETRY_DELAYS_S = (1.0, 3.0, 9.0)  # back-off before each retry of a page that failed or timed out
# The Data Manager's computed columns that a page would compute for every task it shows unless hidden; a page of
# unlabelled tasks shows only the model versions of their predictions (data_manager/managers.py)
_COMPUTED_COLUMNS = ("avg_lead_time", "completed_at", "annotations_results", "predictions_results",
                     "predictions_score", "annotators", "annotations_ids", "file_upload", "draft_exists",
                     "storage_filename", "state")
_VERSIONS_CHAR_LIMIT = 500  # Label Studio cuts a task's predictions_model_versions at 500 characters
# what a training run keeps of a task, an annotation, a prediction (the rest of a page is the Data Manager's)
TASK_KEYS = ("id", "data", "updated_at", "annotations", "predictions")
ANNOTATION_KEYS = ("id", "result", "was_cancelled", "ground_truth", "created_at", "updated_at", "completed_by")
PREDICTION_KEYS = ("id", "model_version", "result", "score", "created_at")


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

    def annotated_tasks(self, project: int, changed_since: str | None = None) -> list[dict]: ...

    def annotated_count(self, project: int) -> int: ...

    def annotated_stamps(self, project: int, changed_since: str | None = None) -> dict[int, str]: ...

    def tasks_by_id(self, project: int, task_ids: list[int]) -> list[dict]: ...

    def write_instruction_block(self, project: int, block_html: str) -> None: ...

    def write_ml_description(self, project: int, description: str, backend_url: str | None) -> bool: ...

    def write_ml_title(self, project: int, title: str, backend_url: str | None) -> bool: ...

    def unlabelled_tasks(self, project: int, version: str | None = None, after: int = 0) -> "UnlabelledPages": ...

    def import_predictions(self, project: int, predictions: list[dict]) -> None: ...

    def set_model_version(self, project: int, version: str) -> None: ...

    def retrieve_predictions(self, project: int, task_ids: list[int]) -> None: ...

    def user_names(self) -> dict[int, str]: ...

    def write_review_view(self, project: int, title: str, task_ids: list[int]) -> None: ...


def replace_report_block(instruction: str | None, block_html: str) -> str:
    """``instruction`` with our marked block replaced by ``block_html`` (appended when absent).

    Everything outside the block is kept exactly as the lead wrote it.

    >>> replace_report_block("Label dishes.", REPORT_START + "v1" + REPORT_END)
    'Label dishes.\\n<section class="ner-backend-report">v1</section>'
    >>> replace_report_block('Intro\\n<section class="ner-backend-report">v1</section>\\nOutro',
    ...                      REPORT_START + "v2" + REPORT_END)
    'Intro\\n<section class="ner-backend-report">v2</section>\\nOutro'
    """
    section = next((pattern for start, pattern in _SECTIONS.items() if block_html.startswith(start)), None)
    if section is None or not block_html.endswith(REPORT_END):
        raise ValueError("the report block must start with REPORT_START (or REVIEW_START) and end with REPORT_END")
    instruction = instruction or ""
    if section.search(instruction):
        # a function replacement: block_html may hold backslashes that re.sub would read as escapes
        return section.sub(lambda _: block_html, instruction, count=1)
    return f"{instruction}\n{block_html}" if instruction else block_html


def annotated_filter() -> dict:
    """The Data Manager filter of tasks with at least one (not cancelled) annotation."""
    return {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}


def unlabelled_filters() -> list[dict]:
    """The Data Manager filters of tasks without any annotation, cancelled ones included."""
    return [{"filter": f"filter:tasks:{column}", "operator": "equal", "type": "Number", "value": 0}
            for column in ("total_annotations", "cancelled_annotations")]


def updated_after_filter(moment: str) -> dict:
    """The Data Manager filter of tasks updated after ``moment`` (an ISO time as Label Studio writes it: an
    annotation's save, update or delete, and a prediction's, set its task's ``updated_at``; tasks/models.py)."""
    return {"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime",
            "value": label_studio_time(moment)}


def label_studio_time(moment: str) -> str:
    """``moment`` in the one format the Data Manager's Datetime filter parses (``%Y-%m-%dT%H:%M:%S.%fZ``, UTC).

    >>> label_studio_time("2026-01-02T03:04:05Z"), label_studio_time("2026-01-02T03:04:05.5+00:00")
    ('2026-01-02T03:04:05.000000Z', '2026-01-02T03:04:05.500000Z')
    """
    from datetime import datetime, timezone

    parsed = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def slim_task(task: dict) -> dict:
    """What a training run keeps of a task page's task: its id, data, ``updated_at``, annotations and
    predictions, each with the keys that training, the fingerprint and the suggestions read."""
    kept = {key: task[key] for key in TASK_KEYS if key in task}
    kept["annotations"] = [{key: a[key] for key in ANNOTATION_KEYS if key in a}
                           for a in task.get("annotations") or [] if isinstance(a, dict)]
    kept["predictions"] = [{key: p[key] for key in PREDICTION_KEYS if key in p}
                           for p in task.get("predictions") or [] if isinstance(p, dict)]
    return kept


class UnlabelledPages:
    """The unannotated tasks of a project, lowest id first, read a page at a time as they are iterated: each is
    ``{"id", "data", "model_versions"}`` (the model versions of its predictions). ``total`` is the number of
    unannotated tasks Label Studio counted when the first page was read (None before)."""

    def __init__(self, pages: Callable[[], Iterator[tuple[list[dict], int]]]):
        self._pages = pages
        self.total: int | None = None

    def __iter__(self) -> Iterator[dict]:
        for tasks, total in self._pages():
            self.total = total if self.total is None else self.total
            yield from tasks


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
                 sdk: Any = None, retry_delays_s: tuple[float, ...] = RETRY_DELAYS_S,
                 page_size: int = TASK_PAGE_SIZE):
        """``timeout``: the SDK's limit on each request. ``backend_auth``: this backend's own BASIC_AUTH_USER /
        BASIC_AUTH_PASS, when it has them. ``sdk`` replaces ``LabelStudio(base_url, api_key)`` (tests).
        ``retry_delays_s``: the back-off before each retry of a task page; ``page_size``: tasks per page."""
        self.credentials = credentials
        self.backend_auth = backend_auth
        self.retry_delays_s = tuple(retry_delays_s)
        self.page_size = page_size
        self.requests = 0  # HTTP requests sent to Label Studio (retries included)
        self.longest_request_s = 0.0  # the slowest of them, and which it was
        self.longest_request = ""
        if sdk is None:
            from label_studio_sdk import LabelStudio  # imported here: the HTTP server never needs it

            sdk = LabelStudio(base_url=credentials.url, api_key=credentials.api_key, timeout=timeout)
        self._ls = sdk
        self._time_requests()

    def _time_requests(self) -> None:
        """Count every request the SDK sends and keep the slowest (``requests_summary``)."""
        inner = getattr(getattr(getattr(self._ls, "_client_wrapper", None), "httpx_client", None), "httpx_client", None)
        send = getattr(inner, "send", None)
        if send is None:
            return

        def timed_send(request, *args, **kwargs):
            started = time.monotonic()
            try:
                return send(request, *args, **kwargs)
            finally:
                seconds = time.monotonic() - started
                self.requests += 1
                if seconds > self.longest_request_s:
                    self.longest_request_s, self.longest_request = seconds, f"{request.method} {request.url.path}"

        inner.send = timed_send

    def requests_summary(self) -> dict[str, Any]:
        """How many requests this client sent to Label Studio, and the slowest one."""
        return {"requests": self.requests, "longest_s": round(self.longest_request_s, 2),
                "longest": self.longest_request}

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

    def annotated_tasks(self, project: int, changed_since: str | None = None) -> list[dict]:
        """The tasks of ``project`` with at least one annotation (``slim_task``: data, annotations, predictions,
        ``updated_at``), lowest id first, in pages; only those updated after ``changed_since`` when given."""
        filters = [annotated_filter()] + ([updated_after_filter(changed_since)] if changed_since else [])
        what = f"reading the annotated tasks of project {project}" + (f" changed since {changed_since}"
                                                                      if changed_since else "")
        return [slim_task(task) for tasks, _ in self._task_pages(what, project, filters, fields="all")
                for task in tasks]

    def annotated_count(self, project: int) -> int:
        """How many tasks of ``project`` have at least one annotation (one page of one task)."""
        page = self._page(f"counting the annotated tasks of project {project}",
                          self._page_params(project, [annotated_filter()], "task_only", 1))
        return int(page.get("total") or 0)

    def annotated_stamps(self, project: int, changed_since: str | None = None) -> dict[int, str]:
        """``{task id: updated_at}`` of every task of ``project`` with an annotation (only those updated after
        ``changed_since`` when given): pages without annotations and predictions (Label Studio 1.23 sends each
        task's data with them all the same)."""
        filters = [annotated_filter()] + ([updated_after_filter(changed_since)] if changed_since else [])
        what = f"listing the annotated tasks of project {project}" + (f" changed since {changed_since}"
                                                                      if changed_since else "")
        return {task["id"]: task.get("updated_at") or ""
                for tasks, _ in self._task_pages(what, project, filters, fields="task_only") for task in tasks}

    def tasks_by_id(self, project: int, task_ids: list[int]) -> list[dict]:
        """The tasks ``task_ids`` of ``project`` (``slim_task``), in pages of the ids asked for."""
        found: list[dict] = []
        for start in range(0, len(task_ids), self.page_size):
            chunk = sorted(task_ids[start:start + self.page_size])
            selected = {"all": False, "included": chunk}
            page = self._page(f"reading {len(chunk)} task(s) of project {project}",
                              self._page_params(project, [], "all", len(chunk), selected=selected))
            found += [slim_task(task) for task in page.get("tasks") or []]
        return found

    def unlabelled_tasks(self, project: int, version: str | None = None, after: int = 0) -> UnlabelledPages:
        """The tasks of ``project`` without any annotation (with an id above ``after``), lowest id first, in pages
        of twice ``page_size`` (their rows are small; Label Studio's cost of a page is mostly its own counts over
        the whole filtered set), read one at a time while they are
        iterated (stop iterating to stop reading): their id, data and the model versions of their predictions
        (the Data Manager's ``predictions_model_versions``; no prediction itself is read). Where Label Studio cut
        that list at 500 characters and ``version`` is not in it, the task's predictions are read to be sure."""
        hidden = ["tasks:" + column for column in _COMPUTED_COLUMNS]
        what = f"reading the unlabelled tasks of project {project}"

        def pages() -> Iterator[tuple[list[dict], int]]:
            for tasks, total in self._task_pages(what, project, unlabelled_filters(), fields="task_only",
                                                 hidden_columns={"explore": hidden, "labeling": hidden},
                                                 after=after, page_size=self.page_size * 2):
                yield [self._unlabelled(project, task, version) for task in tasks], total

        return UnlabelledPages(pages)

    def _unlabelled(self, project: int, task: dict, version: str | None) -> dict:
        listed = task.get("predictions_model_versions") or ""
        versions = [v.strip() for v in listed.split(",") if v.strip()] if isinstance(listed, str) else list(listed)
        if version and version not in versions and isinstance(listed, str) and len(listed) >= _VERSIONS_CHAR_LIMIT:
            found = self._call(f"reading the predictions of task {task['id']} of project {project}",
                               self._ls.predictions.list, task=task["id"])
            versions = [getattr(p, "model_version", None) or _as_dict(p).get("model_version") for p in found]
        return {"id": task["id"], "data": task.get("data") or {}, "model_versions": versions}

    def _page_params(self, project: int, filters: list[dict], fields: str, page_size: int,
                     hidden_columns: dict | None = None, selected: dict | None = None) -> dict:
        query: dict[str, Any] = {"filters": {"conjunction": "and", "items": filters}, "ordering": ["tasks:id"]}
        if hidden_columns:
            query["hiddenColumns"] = hidden_columns
        if selected:
            query["selectedItems"] = selected
        return {"project": project, "page": 1, "page_size": page_size, "fields": fields,
                "query": json.dumps(query)}

    def _task_pages(self, what: str, project: int, filters: list[dict], fields: str,
                    hidden_columns: dict | None = None, after: int = 0,
                    page_size: int | None = None) -> Iterator[tuple[list[dict], int]]:
        """Every page of the tasks ``filters`` selects, lowest id first, with the number Label Studio counted
        when the first page was read: each page is the first page of the tasks after the last id of the one
        before, so a task annotated or imported meanwhile moves no page, and no page reads a deep offset."""
        total, size = None, page_size or self.page_size
        while True:
            keyset = {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": after}
            page = self._page(f"{what} (after task {after})",
                              self._page_params(project, [*filters, keyset], fields, size, hidden_columns))
            tasks = [task for task in page.get("tasks") or [] if isinstance(task, dict)]
            total = int(page.get("total") or 0) if total is None else total
            if tasks:
                yield tasks, total
            if len(tasks) < size:
                return
            after = tasks[-1]["id"]

    def _page(self, what: str, params: dict) -> dict:
        """One page of ``GET /api/tasks``, retried after each of ``retry_delays_s`` when it times out, cannot
        connect or Label Studio answers 429 or 5xx; the last failure is a ``LabelStudioError`` naming ``what``.
        The SDK's own timeout bounds each try."""
        http = self._ls._client_wrapper.httpx_client
        for attempt, delay in enumerate((*self.retry_delays_s, None)):
            failure, status = None, None
            try:
                # the SDK retries nothing here: the back-off is ours
                response = http.request("api/tasks/", method="GET", params=params,
                                        request_options={"max_retries": 0})
                status = response.status_code
                if status < 400:
                    return response.json()
                failure = f"HTTP {status}" + (f" {response.text[:200]}" if status == 400 else "")
            except Exception as error:  # noqa: BLE001 - httpx timeouts, refused connections, a broken body
                failure = type(error).__name__
            retryable = status is None or status == 429 or status >= 500
            if delay is None or not retryable:
                hint = {401: " (check the API key)", 403: " (check the API key)", 404: " (check the project id)"}
                tries = f" after {attempt + 1} tries" if attempt else ""
                raise LabelStudioError(f"{what} at {self.credentials.url} failed{tries}: {failure}"
                                       f"{hint.get(status, '')}")
            log.warning("%s failed (%s); retrying in %.0f s", what, failure, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def export_project(self, project: int) -> ProjectExport:
        """Label config and annotated tasks of ``project``, for the exporters: the same filtered pages as training
        reads (``annotated_tasks``), never the whole project in one request."""
        return ProjectExport(label_config=self.label_config(project), tasks=self.annotated_tasks(project))

    def write_instruction_block(self, project: int, block_html: str) -> None:
        found = self._call(f"reading project {project}", self._ls.projects.get, id=project)
        text = replace_report_block(getattr(found, "expert_instruction", None), block_html)
        # show_instruction is the lead's choice (the pop-up before labelling): it is left as it is
        self._call(f"updating the instructions of project {project}", self._ls.projects.update,
                   id=project, expert_instruction=text)

    def import_predictions(self, project: int, predictions: list[dict]) -> None:
        """Write ``predictions`` (``task``, ``result``, ``score``, ``model_version`` each) in one request, allowed
        ``IMPORT_TIMEOUT_S``: Label Studio 1.23's default import path recounts the annotations and predictions of
        every task of the project after each import (``data_import/api.py``), so a request's time grows with the
        project. Never retried: a request that timed out may still be written, and the publishing that resumes
        reads what is there first."""
        self._call(f"importing {len(predictions)} predictions into project {project}", self._ls.projects.import_predictions,
                   id=project, request=predictions, request_options={"timeout_in_seconds": IMPORT_TIMEOUT_S})

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

    def user_names(self) -> dict[int, str]:
        """Every Label Studio user's id and how the UI names them: first and last name, else username, else e-mail."""
        users = self._call("listing the users", lambda: list(self._ls.users.list()))
        names = {}
        for user in map(_as_dict, users):
            full = " ".join(part for part in (user.get("first_name"), user.get("last_name")) if part)
            names[user.get("id")] = full or user.get("username") or user.get("email") or f"user {user.get('id')}"
        return names

    def write_review_view(self, project: int, title: str, task_ids: list[int]) -> None:
        """The Data Manager tab ``title`` of ``project`` showing exactly ``task_ids`` (a filter ``ID = id`` per task,
        any of them), made or rewritten; with no task, a filter no task passes (ID = 0)."""
        items = [{"filter": "filter:tasks:id", "operator": "equal", "type": "Number", "value": int(task)}
                 for task in (task_ids or [0])]
        data = {"title": title, "filters": {"conjunction": "or", "items": items}, "ordering": []}
        views = self._call(f"listing the Data Manager tabs of project {project}",
                           lambda: list(self._ls.views.list(project=project)))
        mine = [view for view in map(_as_dict, views) if (view.get("data") or {}).get("title") == title]
        if mine:
            self._call(f"updating the Data Manager tab {title!r} of project {project}", self._ls.views.update,
                       id=mine[0]["id"], project=project, data=data)
        else:
            self._call(f"creating the Data Manager tab {title!r} of project {project}", self._ls.views.create,
                       project=project, data=data)

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
