"""Serve ``create_app`` with gunicorn: worker processes with threads (``python -m backend serve [--workers N]``).

One worker by default: without a queue, the training job queue lives in that process. With TRAINING_QUEUE, each
of N workers is a replica: it loads each model once, follows the store's pointer, and enqueues trainings on Redis.
Threads give concurrency; training runs elsewhere (a child process, or an RQ worker), so it never blocks them.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from dataclasses import replace

from gunicorn.app.base import BaseApplication

from backend.shared.settings import Settings


class _Gunicorn(BaseApplication):
    def __init__(self, settings: Settings):
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        options = {
            "bind": f"{self.settings.host}:{self.settings.port}",
            "workers": self.settings.workers,
            "worker_class": "gthread",
            "threads": self.settings.threads,
            # the worker's heartbeat, not a request limit: a large /predict batch on CPU may take a while
            "timeout": 300,
            "graceful_timeout": 15,
            "accesslog": "-",
            "errorlog": "-",
            "worker_exit": _stop_training,
            # gunicorn >= 25 opens a control socket at one fixed path per user; several backends (tests, demo)
            # on one machine would fight over it, and nothing here uses it
            "control_socket_disable": True,
        }
        for key, value in options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self):
        # Built in the worker (after gunicorn's fork), so no thread or model crosses a fork.
        from backend.serving.app import create_app

        _share_the_cores(self.settings.workers)
        app = create_app(self.settings)
        # Importing torch + transformers takes seconds; doing it now, off the request path, keeps the first
        # /predict after a project's first training from waiting for it.
        threading.Thread(target=importlib.import_module, args=("backend.model.predict",), name="warm-up", daemon=True).start()
        return app


def _share_the_cores(workers: int) -> None:
    """With several serving processes on one host, each gets its share of the cores as PyTorch's thread count
    (read when torch is first imported, after this): N processes of one thread per core would each wait on cores
    the others keep busy. An OMP_NUM_THREADS that is set wins."""
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // workers)))


def _stop_training(server, worker) -> None:
    """Stop training children when the worker exits, so none outlives the server."""
    app = getattr(worker, "wsgi", None)
    service = getattr(app, "extensions", {}).get("ner_service") if app is not None else None
    if service is not None:
        service.shutdown()


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Run the backend until interrupted; ``host``/``port`` override HOST/PORT."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = replace(settings, host=host or settings.host, port=port or settings.port)
    logging.getLogger(__name__).info("settings: %r", settings)  # repr hides the API key and password
    _Gunicorn(settings).run()


def serve_command(args) -> int:
    """``python -m backend serve [--host H] [--port P] [--workers N]``: settings from the environment, flags win."""
    from backend.shared.settings import SettingsError

    workers = getattr(args, "workers", None)
    environ = {**os.environ, **({"WORKERS": str(workers)} if workers is not None else {})}  # checked as WORKERS is
    try:
        settings = Settings.from_env(environ)
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    serve(settings, args.host, args.port)
    return 0
