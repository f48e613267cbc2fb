"""The house the folders show. Three layers: ``backend.data`` (no torch) under ``backend.model`` under the rest. Above
them, the serving process (``backend.serving``) and the training loop (``backend.training``) in rooms of their own,
with what both need in ``backend.shared``: the serving process knows of the training loop only its queue
(``backend.training.jobs``) and never loads the training code; the training loop never imports the serving
process. The exporters use the data layer and the one Label Studio client only."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (inside functions too), as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def imports_of(folder: str) -> dict[str, set[str]]:
    return {str(path.relative_to(ROOT)): imported_modules(path) for path in sorted((ROOT / folder).rglob("*.py"))}


def _offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    return [f"{name} imports {module}" for name, modules in imports_of(folder).items() for module in sorted(modules)
            if module.startswith(forbidden)]


def test_the_folders_exist_and_say_what_they_hold():
    for folder in ("data", "model", "shared", "serving", "training"):
        docstring = ast.get_docstring(ast.parse((ROOT / "backend" / folder / "__init__.py").read_text()))
        assert docstring and len(docstring.splitlines()) == 2, folder


ABOVE_THE_MODEL = ("backend.shared", "backend.serving", "backend.training", "backend.cli")


@pytest.mark.parametrize("folder, forbidden", [
    ("backend/data", ("backend.model", *ABOVE_THE_MODEL, "torch", "transformers")),
    ("backend/model", ABOVE_THE_MODEL),
    ("backend/shared", ("backend.serving", "backend.training", "backend.cli")),
    ("backend/training", ("backend.serving", "backend.cli")),
    ("exporters", ("backend.model", "backend.serving", "backend.training", "backend.shared.store",
                   "backend.shared.card", "backend.cli")),
])
def test_a_folder_imports_only_the_ones_below_it(folder, forbidden):
    assert _offenders(folder, forbidden) == []


def test_the_exporters_use_the_backends_one_label_studio_client():
    shared = {m for modules in imports_of("exporters").values() for m in modules if m.startswith("backend.shared")}
    assert shared and all(m.startswith("backend.shared.labelstudio") for m in shared)


def test_the_serving_process_knows_of_the_training_loop_only_its_queue():
    reached = {m for modules in imports_of("backend/serving").values() for m in modules
               if m.startswith("backend.training")}
    assert reached and all(m.startswith("backend.training.jobs") for m in reached), sorted(reached)


# what a serving process must never load: the training run, publishing, the worker, model training
TRAINING_CODE = ["backend.training.training_run", "backend.training.publishing", "backend.training.worker",
                 "backend.training.annotated_cache", "backend.training.review", "backend.model.train"]


def test_a_serving_process_never_loads_the_training_code(tmp_path):
    # the app with its real service and local queue, as `python -m backend serve` builds it, answering Label Studio
    code = f"""
import sys
from backend.serving.app import create_app
from backend.shared.settings import Settings
app = create_app(Settings.from_env({{"MODEL_DIR": {str(tmp_path)!r}, "LABEL_STUDIO_URL": "", "BASE_MODEL": "x"}}))
http = app.test_client()
config = open("label_config/restaurant.xml").read()
assert http.get("/health").status_code == 200
assert http.post("/setup", json={{"project": "3.1", "schema": config}}).status_code == 200
tasks = [{{"id": 1, "data": {{"text": "cheap thai food"}}}}]
assert http.post("/predict", json={{"project": "3.1", "label_config": config, "tasks": tasks}}).status_code == 200
print(sorted(m for m in {TRAINING_CODE!r} if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "[]"


def test_the_training_loop_runs_the_training_code_by_name_in_its_child():
    from backend.training.jobs import TRAINING_TARGET, NamedTarget, resolve
    from backend.training.training_run import run_training_job

    assert resolve(TRAINING_TARGET) is run_training_job and NamedTarget(settings=None).name == TRAINING_TARGET


def test_the_rule_checker_sees_an_import_inside_a_function(tmp_path):
    # the checks above must be able to fail: a lazy import deep in a function counts
    module = tmp_path / "m.py"
    module.write_text("def f():\n    if True:\n        from backend.shared.store import ModelStore\n")
    assert "backend.shared.store" in imported_modules(module)


@pytest.mark.parametrize("module", ["backend.data", "backend.data.formats", "backend.data.tasks", "exporters.cli"])
def test_importing_the_data_layer_loads_no_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
