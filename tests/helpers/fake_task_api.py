"""A small HTTP server that answers Label Studio 1.23's task list API (``GET /api/tasks/``) the way
``data_manager/api.py`` does, for the filters the backend sends (the number of annotations, ``id``, ``updated_at``)
and ``selectedItems``, and a project's label config (``GET /api/projects/<id>/``); it can fail or stall chosen
requests; any other path is a 404. Used with the real label-studio-sdk client."""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=None)


def _value(task: dict, column: str):
    annotations = task.get("annotations") or []
    if column == "total_annotations":
        return len([a for a in annotations if not a.get("was_cancelled")])
    if column == "cancelled_annotations":
        return len([a for a in annotations if a.get("was_cancelled")])
    if column == "updated_at":
        return _moment(task.get("updated_at") or "2026-01-01T00:00:00Z")
    return task.get(column)


def _matches(task: dict, item: dict) -> bool:
    column = item["filter"].removeprefix("filter:tasks:")
    value = item["value"]
    actual = _value(task, column)
    if item["type"] == "Datetime":
        value = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    else:
        value = float(value)
    return {"equal": actual == value, "greater": actual > value}[item["operator"]]


class FakeTaskApi:
    """``tasks``: dicts with ``id``, ``data``, ``annotations``, ``predictions``, ``updated_at``. ``fail``: request
    number (from 1) -> an HTTP status to answer, or ``"slow"`` to answer after ``slow_s``. ``requests``: the
    parameters of each request, ``query`` decoded."""

    def __init__(self, tasks: list[dict], fail: dict | None = None, slow_s: float = 2.0, label_config: str = ""):
        self.tasks = sorted(tasks, key=lambda task: task["id"])
        self.label_config = label_config
        self.fail = dict(fail or {})
        self.slow_s = slow_s
        self.requests: list[dict] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                url = urlparse(self.path)
                params = {key: values[-1] for key, values in parse_qs(url.query).items()}
                if "query" in params:
                    params["query"] = json.loads(params["query"])
                api.requests.append(params)
                failure = api.fail.get(len(api.requests))
                if failure == "slow":
                    time.sleep(api.slow_s)
                elif failure:
                    return self._answer(failure, {"detail": "failed on purpose"})
                if url.path.rstrip("/").startswith("/api/projects/"):  # GET /api/projects/<id>/: its label config
                    number = url.path.rstrip("/").rsplit("/", 1)[-1]
                    return self._answer(200, {"id": int(number), "label_config": api.label_config})
                if url.path.rstrip("/") != "/api/tasks":
                    return self._answer(404, {"detail": "not found"})
                self._answer(200, api.page(params))

            def _answer(self, status: int, body: dict):
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up on a slow answer
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def page(self, params: dict) -> dict:
        query = params.get("query") or {}
        items = (query.get("filters") or {}).get("items") or []
        selected = query.get("selectedItems") or {"all": True}
        chosen = [task for task in self.tasks if all(_matches(task, item) for item in items)
                  and (selected.get("all") or task["id"] in selected.get("included", []))]
        size, number = int(params.get("page_size", 100)), int(params.get("page", 1))
        shown = []
        for task in chosen[(number - 1) * size:number * size]:
            answer = {"id": task["id"], "data": task["data"], "updated_at": task.get("updated_at"),
                      "total_annotations": _value(task, "total_annotations")}
            if params.get("fields") == "all":
                answer["annotations"] = task.get("annotations") or []
                answer["predictions"] = task.get("predictions") or []
            if "hiddenColumns" in query:
                answer["predictions_model_versions"] = ",".join(
                    sorted({p.get("model_version") for p in task.get("predictions") or []}))
            shown.append(answer)
        return {"tasks": shown, "total": len(chosen), "total_annotations": 0, "total_predictions": 0}

    def __enter__(self) -> "FakeTaskApi":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
