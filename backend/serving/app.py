"""The HTTP face of the backend: Label Studio's ML backend protocol plus /status, /versions and /report.

Routes only parse the request, call one ``NerService`` method and shape the answer; ``create_app`` builds it.
"""
from __future__ import annotations

import hmac
import json
import logging
from typing import Any, Callable, TypeVar

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from backend.serving.batching import Overloaded
from backend.shared.public import redact, redact_paths
from backend.serving.service import NerService, RequestError
from backend.shared.settings import Settings

log = logging.getLogger(__name__)

bp = Blueprint("ner_backend", __name__)

View = TypeVar("View", bound=Callable[..., Any])


def public(view: View) -> View:
    """Mark a route that answers without credentials; every other route of ``bp`` needs them (when
    BASIC_AUTH_USER is set), so a new or renamed route is protected unless it says otherwise."""
    view.public = True  # type: ignore[attr-defined]
    return view


def _service() -> NerService:
    return current_app.extensions["ner_service"]


def _error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": redact_paths(message)}), status


# How deep a request body may nest (arrays and objects; the outermost counts 1). Label Studio's bodies are shallow:
# a /predict body nests 10 deep at most (body > tasks > task > annotations > annotation > the prediction it started
# from > result > region > value > labels), a webhook's 8 (tests/serving/test_json_depth.py measures both), and task data,
# the project's own JSON, adds a few levels. 64 leaves them 6x that and stays far below the ~1000 levels where
# Python's json raises RecursionError: a deeper body is refused by name.
MAX_JSON_DEPTH = 64


class TooDeep(ValueError):
    """A request body nests deeper than MAX_JSON_DEPTH."""


def json_depth(value: Any, stop_above: int | None = None) -> int:
    """How deep a parsed JSON value nests: the most arrays and objects open at once (0 for a scalar), walked with a
    stack of its own, never by recursion. With ``stop_above``, the walk ends once the depth passes it."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if stop_above is not None and deepest > stop_above:
            break
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def parse_json(raw: bytes) -> Any:
    """``json.loads(raw)``, or TooDeep when it nests deeper than MAX_JSON_DEPTH (Python's reader gives up with a
    RecursionError near 1000 levels, at once); ValueError (UnicodeDecodeError included) when it is not JSON."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise TooDeep(f"nests deeper than {MAX_JSON_DEPTH} levels") from None
    if json_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise TooDeep(f"nests deeper than {MAX_JSON_DEPTH} levels")
    return value


def _json_body() -> Any:
    """The request's JSON; a RequestError (-> 400) naming the problem when it is missing, malformed or too deep."""
    if not request.get_data(cache=True):
        raise RequestError("the request body is empty; send a JSON object")
    try:
        return parse_json(request.get_data(cache=True))
    except TooDeep:
        raise RequestError(f"the request body nests deeper than {MAX_JSON_DEPTH} levels of arrays and objects; "
                           "Label Studio's bodies nest about 10") from None
    except ValueError:  # UnicodeDecodeError included
        raise RequestError("the request body is not valid JSON") from None


def _json_body_or_none() -> Any:
    """The request's JSON, or None when there is none usable (empty, malformed or too deep); for the routes that
    answer whatever the body (/versions)."""
    data = request.get_data(cache=True)
    try:
        return parse_json(data) if data else None
    except ValueError:  # TooDeep and UnicodeDecodeError included
        return None


@bp.before_request
def _check_basic_auth():
    settings: Settings = current_app.config["NER_SETTINGS"]
    view = current_app.view_functions.get(request.endpoint or "")
    if not settings.auth_enabled or getattr(view, "public", False):
        return None
    auth = request.authorization
    ok = (
        auth is not None
        and auth.type == "basic"
        and hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())
        and hmac.compare_digest((auth.password or "").encode(), (settings.basic_auth_pass or "").encode())
    )
    if ok:
        return None
    response, status = _error(401, "authentication required: HTTP basic auth with BASIC_AUTH_USER/BASIC_AUTH_PASS")
    response.headers["WWW-Authenticate"] = 'Basic realm="ner-backend"'
    return response, status


# /health stays open for load balancers and Label Studio's connection check.
@bp.get("/")
@bp.get("/health")
@public
def health():
    return jsonify(redact(_service().health()))


@bp.post("/setup")
def setup():
    return jsonify(redact(_service().setup(_json_body())))


@bp.post("/predict")
def predict():
    return jsonify({"results": _service().predict(_json_body())})


# Label Studio sends Start Training (and "train on annotation submission") with the ML backend's basic auth; a
# project webhook (annotation events) sends the headers it is given: with auth on, it needs an Authorization
# header (docs/http.md). Without auth, only projects the backend knows are acted on (NerService.handle_webhook).
@bp.post("/webhook")
def webhook():
    # Always 200 and always fast: Label Studio gives up after 1 s and a slow webhook blocks its request.
    try:
        body = parse_json(request.get_data(cache=True))
    except TooDeep:
        return jsonify({"status": "ok", "action": "", "project": None,
                        "decision": f"ignored: the body nests deeper than {MAX_JSON_DEPTH} levels"})
    except (ValueError, RequestEntityTooLarge):  # not JSON (the service ignores None), or too large
        body = None
    outcome = _service().handle_webhook(body)
    if outcome.project is not None:
        log.info("webhook %s for project %s: %s", outcome.action, outcome.project, outcome.decision)
    return jsonify(redact({"status": "ok", "action": outcome.action, "project": outcome.project,
                           "decision": outcome.decision}))


@bp.get("/versions")
def versions():
    # People use ?project=ID; a JSON body {"project": ...} is read too. Label Studio 1.23 sends neither (its GET
    # has no body), so it gets every project's versions.
    project = request.args.get("project")
    if project is None:
        body = _json_body_or_none()
        project = body.get("project") if isinstance(body, dict) else None
    if project is None:
        return jsonify(redact(_service().all_versions()))
    return jsonify(redact(_service().versions(project)))


@bp.get("/status")
def status():
    return jsonify(redact(_service().status(request.args.get("project"))))


@bp.get("/report")
def report():
    project = request.args.get("project")
    if project is None:
        raise RequestError("name the project: GET /report?project=<id>")
    return Response(redact_paths(_service().report(project)), mimetype="text/html")


@bp.get("/review")
def review():
    project = request.args.get("project")
    if project is None:
        raise RequestError("name the project: GET /review?project=<id>")
    return jsonify(redact(_service().review(project)))


@bp.post("/review")
def start_review():
    project = request.args.get("project")
    if project is None:
        raise RequestError("name the project: POST /review?project=<id>")
    answer = _service().start_review(project)
    # refused (another backend process trains the project) or shutting down: not accepted, and not hidden behind
    # the report page's redirect either
    status = 409 if answer["review"].startswith("refused") else 503 if answer["review"] == "shutting down" else 202
    if status == 202 and "text/html" in (request.headers.get("Accept") or ""):  # the report page's button
        return Response(status=303, headers={"Location": f"report?project={answer['project']}"})
    return jsonify(redact(answer)), status


def _handle_request_error(error: RequestError):
    return _error(400, str(error))


def _handle_overloaded(error: Overloaded):
    response, status = _error(503, str(error))
    response.headers["Retry-After"] = str(error.retry_after)
    return response, status


def _handle_http_error(error: HTTPException):
    if isinstance(error, RequestEntityTooLarge):
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        return _error(413, f"request body larger than MAX_REQUEST_BYTES ({limit} bytes); send fewer tasks per request")
    return _error(error.code or 500, error.description or error.name)


def _handle_unexpected(error: Exception):
    log.exception("unexpected error in %s %s", request.method, request.path)
    # the message may name server paths (MODEL_DIR, a model folder): it goes to the log, not to the client
    return _error(500, f"internal error ({type(error).__name__}); the backend's log has the details")


def create_app(settings: Settings | None = None, service: NerService | None = None) -> Flask:
    """Build the Flask app; ``service`` defaults to a ``NerService`` over ``settings`` (from the environment)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["NER_SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False
    app.extensions["ner_service"] = service or NerService(settings)
    app.register_blueprint(bp)
    app.register_error_handler(RequestError, _handle_request_error)
    app.register_error_handler(Overloaded, _handle_overloaded)
    app.register_error_handler(HTTPException, _handle_http_error)
    app.register_error_handler(Exception, _handle_unexpected)
    return app
