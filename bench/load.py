"""Load benchmark of the HTTP backend: N concurrent /predict clients for T seconds, and a low-rate probe of the
control routes during that load; one backend by URL, or one or two code versions started here, one after the other.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator
from xml.sax.saxutils import quoteattr

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, TRAIN_FILE, VALID_FILE, machine, print_result, stand_in_model  # noqa: E402

from backend.data.spans import entity_types  # noqa: E402

REQUEST_TIMEOUT_S = 10
HEALTH_TIMEOUT_S = 120
STOP_GRACE_S = 15
PROBE_INTERVAL_S = 0.2
PROJECT_CREATED = "1718000000"  # Label Studio sends "<id>.<created epoch>" as the project
QUICK_MODEL_SENTENCES = 400
BACKGROUND_SENTENCES = 1500
MODEL_CACHE = Path(tempfile.gettempdir()) / "ner-bench-load" / f"model-{QUICK_MODEL_SENTENCES}-sentences-1-epoch"
PREDICT = "POST /predict"


# --- data, model and label config -------------------------------------------------------------------------------
def read_sentences(path: Path) -> list[list[tuple[str, str]]]:
    """The sentences of an MIT-style BIO file (``TAG<TAB>token`` lines, a blank line between sentences)."""
    if not path.is_file():
        sys.exit(f"{path} not found: the load benchmark needs the MIT Restaurant corpus in "
                 "../shared/data/mit_restaurant")
    sentences, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            if current:
                sentences.append(current)
            current = []
            continue
        tag, _, token = line.partition("\t")
        current.append((tag, token))
    if current:
        sentences.append(current)
    return sentences


def write_bio_head(n: int, dest: Path) -> Path:
    """The first ``n`` training sentences as a BIO file at ``dest``."""
    blocks = ["\n".join(f"{tag}\t{token}" for tag, token in s) for s in read_sentences(TRAIN_FILE)[:n]]
    dest.write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return dest


def train_command(data: Path, out: Path) -> list[str]:
    """The quick training of this benchmark: 1 epoch, 2 threads, the offline stand-in base model."""
    return [sys.executable, "-m", "backend", "train", "--data", str(data), "--base-model", stand_in_model(),
            "--out", str(out), "--epochs", "1", "--threads", "2"]


def cached_quick_model() -> Path:
    """A model trained on the first 400 training sentences, trained once and kept under /tmp for reruns."""
    if (MODEL_CACHE / "config.json").is_file():
        print(f"reusing the quick model {MODEL_CACHE}", file=sys.stderr)
        return MODEL_CACHE
    MODEL_CACHE.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=MODEL_CACHE.parent) as work:
        data = write_bio_head(QUICK_MODEL_SENTENCES, Path(work) / "train.bio")
        print(f"training the quick model into {MODEL_CACHE} ...", file=sys.stderr)
        subprocess.run(train_command(data, Path(work) / "model"), cwd=ROOT, check=True, stdout=sys.stderr)
        # Renamed into place whole, so an interrupted training never leaves a half model to be reused.
        os.replace(Path(work) / "model", MODEL_CACHE)
    print(f"quick model cached at {MODEL_CACHE}", file=sys.stderr)
    return MODEL_CACHE


def model_labels(model_dir: Path) -> list[str]:
    """The entity labels a model folder predicts: a store version's manifest, else config.json's id2label."""
    manifest = model_dir / "manifest.json"
    if manifest.is_file():
        return list(json.loads(manifest.read_text())["labels"])
    id2label = json.loads((model_dir / "config.json").read_text())["id2label"]
    return entity_types(id2label[k] for k in sorted(id2label, key=int))


def label_config(labels: list[str]) -> str:
    """A Label Studio config whose <Labels> are exactly the model's, so the backend finds that the model fits
    (a single differing name, e.g. "Restaurant Name" for "Restaurant_Name", makes every answer empty)."""
    values = "".join(f"<Label value={quoteattr(label)}/>" for label in labels)
    return f'<View><Labels name="label" toName="text">{values}</Labels><Text name="text" value="$text"/></View>'


# --- the backend under test ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM by pid, SIGKILL if it has not exited after 15 s."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def log_tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""


def wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the backend exited with status {process.returncode} before answering /health:\n"
                             f"{log_tail(log)}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"the backend did not answer GET /health with 200 within {HEALTH_TIMEOUT_S} s:\n{log_tail(log)}")


@contextlib.contextmanager
def served(checkout: Path, model: Path, extra_env: dict[str, str], auth: tuple[str, str] | None,
           work: Path) -> Iterator[tuple[str, Path]]:
    """Start ``checkout``'s backend with this Python on a free port and a fresh MODEL_DIR; yield its URL and log
    file; stop it by its pid on the way out, also on error."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(checkout), "MODEL_DIR": tempfile.mkdtemp(prefix="models-", dir=work),
           "START_MODEL": str(model), "TRAIN_EVERY_N": "0", "HF_HUB_OFFLINE": "1"}
    if auth:
        env.update(BASIC_AUTH_USER=auth[0], BASIC_AUTH_PASS=auth[1])
    env.update(extra_env)
    log = work / "server.log"
    command = [sys.executable, "-m", "backend", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        # cwd and PYTHONPATH both name the checkout, so its `backend` is imported, not the one installed here.
        process = subprocess.Popen(command, cwd=checkout, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, log)
        yield url, log
    finally:
        stop_process(process)


def server_log_errors(log: Path) -> int:
    """Lines of the server's log that report an error (the access log alone would show only status codes)."""
    text = log.read_text(errors="replace")
    return sum(1 for line in text.splitlines() if any(word in line for word in (" ERROR ", "CRITICAL", "Traceback")))


def commit_of(checkout: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


@dataclass
class BackgroundTraining:
    """`nice -n 10 python -m backend train` on 1500 sentences during the load, as the backend's own training
    shares the CPU with serving."""

    process: subprocess.Popen
    started: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, work: Path) -> "BackgroundTraining":
        data = write_bio_head(BACKGROUND_SENTENCES, work / "background-train.bio")
        out = tempfile.mkdtemp(prefix="background-model-", dir=work)
        log = (work / "background-train.log").open("w")
        process = subprocess.Popen(["nice", "-n", "10", *train_command(data, Path(out) / "model")], cwd=ROOT,
                                   stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return cls(process)

    def report(self, window_end: float) -> dict:
        running = self.process.poll() is None
        return {"running_whole_window": running, "exit_code": self.process.returncode,
                "started_s_before_window_end": round(window_end - self.started, 1)}


# --- the load ---------------------------------------------------------------------------------------------------
ANSWERED = ("ok", "empty")  # the outcomes of a 200


@dataclass(frozen=True)
class Sample:
    route: str
    ms: float
    outcome: str  # "ok", "empty" (a /predict whose every result is empty), an HTTP status, or an exception's name
    retry_after_s: float = 0.0  # what a 503's Retry-After asked for


class Target:
    """What every request needs: the URL, the project, the label config and the credentials."""

    def __init__(self, url: str, project: int, config: str, auth: tuple[str, str] | None):
        self.url, self.config, self.auth = url.rstrip("/"), config, auth
        self.project, self.project_key = project, f"{project}.{PROJECT_CREATED}"

    def session(self, timeout: float = REQUEST_TIMEOUT_S) -> "Connection":
        return Connection(self.url, self.auth, timeout)

    def setup_body(self) -> dict:
        return {"project": self.project_key, "schema": self.config}

    def predict_body(self, first_id: int, texts: list[str]) -> dict:
        tasks = [{"id": first_id + i, "data": {"text": text}} for i, text in enumerate(texts)]
        return {"tasks": tasks, "project": self.project_key, "label_config": self.config}


class Connection:
    """One keep-alive HTTP connection (a client's own), over ``http.client``: the clients share the server's CPU,
    and ``requests`` spent about 4 ms of it per request (60% of a core at 140 requests/s) where this spends ~1."""

    def __init__(self, url: str, auth: tuple[str, str] | None, timeout: float):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        self.headers = {"Content-Type": "application/json"}
        if auth:
            self.headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        self._connection: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, str | None, bytes]:
        """``(status, Retry-After, body)``; a broken connection is dropped (the next request opens a new one)."""
        if self._connection is None:
            self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            self._connection.request(method, path, body=None if body is None else json.dumps(body).encode(),
                                     headers=self.headers)
            response = self._connection.getresponse()
            return response.status, response.getheader("Retry-After"), response.read()
        except (OSError, http.client.HTTPException):
            self._connection.close()
            self._connection = None
            raise


def timed(session: Connection, route: str, url: str, check=None, body: dict | None = None) -> Sample:
    """One request as a Sample; ``check(body)`` may turn a 200 into another outcome."""
    method, _ = route.split(" ", 1)
    path = urllib.parse.urlsplit(url)
    started = time.perf_counter()
    retry_after = 0.0
    try:
        status, retry, answer = session.request(method, path.path + (f"?{path.query}" if path.query else ""), body)
        outcome = str(status) if status != 200 else (check(answer) if check else "ok")
        with contextlib.suppress(TypeError, ValueError):
            retry_after = float(retry or 0)
    except (OSError, http.client.HTTPException) as error:
        outcome = "Timeout" if isinstance(error, TimeoutError) else type(error).__name__
    return Sample(route, (time.perf_counter() - started) * 1000, outcome, retry_after)


def predict_outcome(n_tasks: int):
    def check(body: bytes) -> str:
        try:
            results = json.loads(body)["results"]
        except (ValueError, KeyError, TypeError):
            return "bad_json"
        if len(results) != n_tasks:
            return "wrong_result_count"  # Label Studio matches results to tasks by position
        return "empty" if all(not r.get("result") for r in results) else "ok"
    return check


class TextCycle:
    """The validation sentences, cycled; shared by the client threads, hence the lock."""

    def __init__(self, texts: list[str]):
        self.texts, self.next, self.lock = texts, 0, threading.Lock()

    def take(self, n: int) -> tuple[int, list[str]]:
        with self.lock:
            first, self.next = self.next, self.next + n
        return first, [self.texts[(first + i) % len(self.texts)] for i in range(n)]


def client(target: Target, texts: TextCycle, per_request: int, deadline: float, samples: list[Sample]) -> None:
    session = target.session()
    while time.monotonic() < deadline:
        first, batch = texts.take(per_request)
        sample = timed(session, PREDICT, f"{target.url}/predict", predict_outcome(len(batch)),
                       body=target.predict_body(first, batch))
        samples.append(sample)
        # A refusal comes back at once: retried without a pause, it would spin, flood the counts and take the CPU
        # from the server on the same machine. So a client waits as a 503's Retry-After asks (at most 5 s), else
        # 0.1 s after any error.
        if sample.outcome not in ANSWERED:
            time.sleep(min(sample.retry_after_s or 0.1, 5.0, max(0.0, deadline - time.monotonic())))


def control_calls(target: Target) -> list[tuple[str, str, dict]]:
    """The probe's rotation: (route, URL, request arguments)."""
    webhook = {"action": "ANNOTATION_CREATED", "project": {"id": target.project}, "annotation": {"id": 1}}
    query = f"?project={target.project}"
    return [("GET /health", f"{target.url}/health", {}),
            ("POST /setup", f"{target.url}/setup", {"body": target.setup_body()}),
            ("POST /webhook", f"{target.url}/webhook", {"body": webhook}),
            ("GET /status", f"{target.url}/status{query}", {}),
            ("GET /versions", f"{target.url}/versions{query}", {})]


def probe(target: Target, deadline: float, samples: list[Sample]) -> None:
    """One control call every 200 ms, the routes in turn; a slow answer delays the next, never doubles up."""
    session, calls, turn = target.session(), control_calls(target), 0
    next_at = time.monotonic()
    while time.monotonic() < deadline:
        route, url, kwargs = calls[turn % len(calls)]
        samples.append(timed(session, route, url, **kwargs))
        turn += 1
        next_at = max(next_at + PROBE_INTERVAL_S, time.monotonic())
        time.sleep(max(0.0, min(next_at, deadline) - time.monotonic()))


def summary(samples: list[Sample], wall_s: float) -> dict:
    """Counts and rates of all requests; latencies of the answered ones (200), since a fast 503 is no answer and
    would pull p50 down; errors by status code or exception."""
    outcomes = Counter(s.outcome for s in samples)
    ms = sorted(s.ms for s in samples if s.outcome in ANSWERED)
    answered = len(ms)
    return {"requests": len(samples), "requests_per_s": round(len(samples) / wall_s, 2),
            "answered": answered, "answered_per_s": round(answered / wall_s, 2),
            "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1) if ms else None,
            "max_ms": round(ms[-1], 1) if ms else None,
            "empty": outcomes.get("empty", 0),
            "errors": {k: v for k, v in sorted(outcomes.items()) if k not in ANSWERED}}


def prepare(target: Target, warmup_text: str) -> dict:
    """/setup once, then one /predict outside the window: the first one waits for the model to load."""
    session = target.session(timeout=HEALTH_TIMEOUT_S)
    setup = timed(session, "POST /setup", f"{target.url}/setup", body=target.setup_body())
    if setup.outcome != "ok":
        raise SystemExit(f"POST /setup answered {setup.outcome}; check --url, --auth and the server's log")
    warmup = timed(session, PREDICT, f"{target.url}/predict", predict_outcome(1),
                   body=target.predict_body(0, [warmup_text]))
    if warmup.outcome == "empty":
        print("warning: the warm-up /predict came back empty on a text with entities: do the label config's labels "
              "match the model's?", file=sys.stderr)
    # each serving process loads the model on its own first request: warm up every one (replicas) before the window
    extra = [threading.Thread(target=timed, args=(target.session(timeout=HEALTH_TIMEOUT_S), PREDICT,
                                                  f"{target.url}/predict", predict_outcome(1)),
                              kwargs={"body": target.predict_body(0, [warmup_text])}) for _ in range(16)]
    for thread in extra:
        thread.start()
    for thread in extra:
        thread.join()
    return {"setup_ms": round(setup.ms, 1), "warmup_predict_ms": round(warmup.ms, 1), "warmup_outcome": warmup.outcome}


def run_load(target: Target, texts: list[str], args: argparse.Namespace, work: Path) -> dict:
    """The clients and the probe for ``args.seconds``; per-route, control and overall figures."""
    result = prepare(target, texts[0])
    training = BackgroundTraining.start(work) if args.background_training else None
    try:
        cycle = TextCycle(texts[1:])
        per_thread: list[list[Sample]] = [[] for _ in range(args.clients + 1)]
        start = time.monotonic()
        deadline = start + args.seconds
        # Daemon threads, so an interrupted run exits at once instead of waiting for the deadline.
        threads = [threading.Thread(target=client, args=(target, cycle, args.tasks_per_request, deadline, out),
                                    daemon=True) for out in per_thread[:-1]]
        threads.append(threading.Thread(target=probe, args=(target, deadline, per_thread[-1]), daemon=True))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # Requests still in flight at the deadline are counted, so the window is until the last one came back.
        wall_s = time.monotonic() - start
        if training:
            result["background_training"] = training.report(deadline)
    finally:
        if training:
            stop_process(training.process)
    samples = [s for out in per_thread for s in out]
    routes = sorted({s.route for s in samples}, key=lambda r: (r != PREDICT, r))
    result.update(wall_s=round(wall_s, 2),
                  routes={r: summary([s for s in samples if s.route == r], wall_s) for r in routes},
                  control=summary([s for s in samples if s.route != PREDICT], wall_s),
                  overall=summary(samples, wall_s))
    return result


# --- the run ----------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a backend already running (it must serve --model's labels for --project)")
    where.add_argument("--serve-from", action="append", type=Path, metavar="DIR",
                       help="a checkout of this project to start a backend from (twice: two versions, one after "
                            "the other)")
    parser.add_argument("--label", action="append", help="a name for each --serve-from, in order")
    parser.add_argument("--model", type=Path, help="trained model folder (START_MODEL); default: a quick one, cached")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--tasks-per-request", type=int, default=1)
    parser.add_argument("--project", type=int, default=3)
    parser.add_argument("--background-training", action="store_true",
                        help="run `nice -n 10 python -m backend train` (1 epoch, 1500 sentences) during the load")
    parser.add_argument("--auth", metavar="USER:PASS", help="HTTP basic auth on every request (and for --serve-from)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment of a --serve-from backend (repeatable)")
    parser.add_argument("--replicas-of", action="append", default=[], metavar="LABEL",
                        help="the --label of a side that runs --replicas serving processes (WORKERS) with "
                             "TRAINING_QUEUE on a Redis started for it")
    parser.add_argument("--replicas", type=int, default=2, help="serving processes of a --replicas-of side")
    args = parser.parse_args(argv)
    if args.serve_from and len(args.serve_from) > 2:
        parser.error("--serve-from at most twice")
    if args.label and len(args.label) != len(args.serve_from or []):
        parser.error("give one --label per --serve-from")
    if any("=" not in item for item in args.env):
        parser.error("--env takes KEY=VALUE")
    if args.auth and ":" not in args.auth:
        parser.error("--auth takes USER:PASS")
    if args.clients < 1 or args.seconds <= 0 or args.tasks_per_request < 1:
        parser.error("--clients, --seconds and --tasks-per-request must be positive")
    return args


def side_labels(args: argparse.Namespace) -> list[str]:
    if args.url:
        return ["url"]
    if args.label:
        return args.label
    names = [str(d) for d in args.serve_from]
    return names if len(set(names)) == len(names) else [f"{i + 1}:{n}" for i, n in enumerate(names)]


def run_served(name: str, checkout: Path, model: Path, config: str, auth: tuple[str, str] | None,
               texts: list[str], args: argparse.Namespace, work: Path) -> dict:
    """One --serve-from side: start its backend, load it, stop it."""
    print(f"[{name}] starting the backend from {checkout}", file=sys.stderr)
    extra_env = dict(item.split("=", 1) for item in args.env)
    redis = None
    if name in args.replicas_of:  # serving replicas: gunicorn processes that enqueue trainings on a real Redis
        from scripts.stack import RedisServer

        redis = RedisServer(work / "redis")
        redis.start()
        extra_env.update(WORKERS=str(args.replicas), TRAINING_QUEUE=redis.url)
    try:
        with served(checkout, model, extra_env, auth, work) as (url, log):
            result = run_load(Target(url, args.project, config, auth), texts, args, work)
    finally:
        if redis is not None:
            redis.stop()
    if redis is not None:
        result["replicas"] = args.replicas
    print(f"[{name}] {json.dumps(result['routes'].get(PREDICT))}", file=sys.stderr)
    return {"checkout": str(checkout), "commit": commit_of(checkout), **result,
            "server_log_errors": server_log_errors(log)}


def ratio(first: dict, second: dict) -> dict:
    """Second side over first: answered/s above 1 and p95 below 1 mean the second is faster."""
    def of(side: dict, key: str) -> float | None:
        return side["routes"].get(PREDICT, {}).get(key)

    def divide(key: str) -> float | None:
        a, b = of(first, key), of(second, key)
        return round(b / a, 3) if a and b is not None else None

    control = [s["control"].get("p95_ms") for s in (first, second)]
    return {"predict_answered_per_s": divide("answered_per_s"), "predict_p95_ms": divide("p95_ms"),
            "control_p95_ms": round(control[1] / control[0], 3) if control[0] and control[1] is not None else None}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # SIGTERM becomes SystemExit, so the finally blocks still stop the servers and the training we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    model = (args.model or cached_quick_model()).resolve()
    labels = model_labels(model)
    config = label_config(labels)
    sentences = read_sentences(VALID_FILE)
    # The warm-up text has an entity, so an empty answer to it means a label config that does not fit.
    first = next(s for s in sentences if any(tag != "O" for tag, _ in s))
    texts = [" ".join(token for _, token in s) for s in [first, *sentences]]

    sides = {}
    with tempfile.TemporaryDirectory(prefix="ner-bench-load-") as tmp:
        for i, name in enumerate(side_labels(args)):
            work = Path(tmp) / f"side-{i}"
            work.mkdir()
            if args.url:
                target = Target(args.url, args.project, config, auth)
                sides[name] = {"url": args.url, **run_load(target, texts, args, work)}
            else:
                sides[name] = run_served(name, args.serve_from[i].resolve(), model, config, auth, texts, args, work)

    out = {"bench": "load", "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "machine": machine(), "model": {"dir": str(model), "labels": labels}, "sides": sides}
    out["args"]["serve_from"] = [str(d) for d in args.serve_from] if args.serve_from else None
    out["args"]["auth"] = "<set>" if args.auth else None  # never print a password
    if len(sides) == 2:
        out["ratio"] = ratio(*sides.values())
    print_result(out)


if __name__ == "__main__":
    main()
