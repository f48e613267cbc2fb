"""Where exported tasks come from: a Label Studio JSON export file, or a live project read with label-studio-sdk.

Both give the same task dicts (``data``, ``annotations[].result[]``, ``id``, ...), so the rest of the export
does not care which one it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backend.formats import read_tasks_json


class SourceError(RuntimeError):
    """A live project could not be read (connection, credentials, project id); the message says which."""


@dataclass
class ProjectExport:
    """What an export of a live project brings: its label config XML and all its tasks."""

    label_config: str
    tasks: list[dict]


def _as_dict(task: Any) -> dict:
    if isinstance(task, dict):
        return task
    # SDK pydantic models: JSON mode turns datetimes into the ISO strings an export file has
    return task.model_dump(mode="json") if hasattr(task, "model_dump") else dict(task)


def fetch_project(url: str, api_key: str, project_id: int, client: Any = None, page_size: int = 100) -> ProjectExport:
    """Label config and all tasks of project ``project_id`` on the Label Studio at ``url``.

    Uses ``projects.exports.as_json`` (Label Studio's own JSON export, all tasks); if that endpoint fails, pages
    through ``tasks.list(project=..., fields="all")``. ``client`` replaces ``LabelStudio(base_url=url,
    api_key=api_key)`` (tests). Raises ``SourceError`` naming the URL and project; the key is never printed.
    """
    if client is None:
        from label_studio_sdk import LabelStudio

        client = LabelStudio(base_url=url, api_key=api_key)
    where = f"project {project_id} at {url}"
    try:
        project = client.projects.get(id=project_id)
    except Exception as error:  # the SDK raises httpx errors and its own ApiError
        status = getattr(error, "status_code", None)
        hint = {401: "check --api-key (a legacy token, or a personal access token)", 404: "check --project"}.get(status, "check --url")
        raise SourceError(f"cannot read {where}: {type(error).__name__} {status or error}; {hint}") from None
    try:
        tasks = client.projects.exports.as_json(project_id)
    except Exception:
        try:
            tasks = list(client.tasks.list(project=project_id, fields="all", page_size=page_size))
        except Exception as error:
            raise SourceError(f"cannot export the tasks of {where}: {type(error).__name__} {error}") from None
    if isinstance(tasks, dict):
        tasks = tasks.get("tasks", [])
    return ProjectExport(label_config=project.label_config or "", tasks=[_as_dict(task) for task in tasks])
