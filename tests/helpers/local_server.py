"""A backend server of our own for a test: `python -m backend serve` on a free loopback port, its /health awaited,
killed by its process group (never by name)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.waits import bound

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = bound("child event")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(port: int, path: str, timeout: float = 5) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def start_server(env: dict, port: int, log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")
    try:
        server = subprocess.Popen([sys.executable, "-m", "backend", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                  cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited with {server.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if get_json(port, "/health", timeout=1)[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.1)
    kill_server(server)
    pytest.fail(f"the server did not answer /health in {WAIT_S} s:\n{log_path.read_text()[-3000:]}")


def kill_server(server: subprocess.Popen) -> None:
    """SIGKILL to the server's process group (gunicorn's master and its worker), then reap the master."""
    if server.poll() is None:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.wait(WAIT_S)
