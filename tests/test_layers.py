"""The three layers the folders show: ``backend.data`` imports neither ``backend.model`` nor ``backend.serving``;
``backend.model`` does not import ``backend.serving``; importing ``backend.data`` loads no torch; the exporters
use the data layer and the one Label Studio client only; the HTTP service does not import the training run."""
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


def test_the_layer_folders_exist_and_say_what_they_are():
    for layer in ("data", "model", "serving"):
        docstring = ast.get_docstring(ast.parse((ROOT / "backend" / layer / "__init__.py").read_text()))
        assert docstring and len(docstring.splitlines()) == 2, layer


@pytest.mark.parametrize("folder, forbidden", [
    ("backend/data", ("backend.model", "backend.serving", "backend.cli", "torch", "transformers")),
    ("backend/model", ("backend.serving", "backend.cli")),
    ("exporters", ("backend.model", "backend.serving.service", "backend.serving.app", "backend.serving.store",
                   "backend.serving.training_run", "backend.cli")),
])
def test_a_layer_imports_only_the_layers_below_it(folder, forbidden):
    assert _offenders(folder, forbidden) == []


def test_the_exporters_use_the_backends_one_label_studio_client():
    serving = {m for modules in imports_of("exporters").values() for m in modules if m.startswith("backend.serving")}
    assert serving and all(m.startswith("backend.serving.labelstudio") for m in serving)


def test_the_http_service_never_imports_the_training_code():
    # the job queue is handed the training run; the service and the app import neither it nor the model's training
    for name in ("backend/serving/service.py", "backend/serving/app.py", "backend/serving/model_cache.py"):
        modules = imported_modules(ROOT / name)
        assert "backend.model.train" not in modules, name
    assert "backend.serving.service" not in imported_modules(ROOT / "backend/serving/training_run.py")


def test_the_rule_checker_sees_an_import_inside_a_function(tmp_path):
    # the checks above must be able to fail: a lazy import deep in a function counts
    module = tmp_path / "m.py"
    module.write_text("def f():\n    if True:\n        from backend.serving.store import ModelStore\n")
    assert "backend.serving.store" in imported_modules(module)


@pytest.mark.parametrize("module", ["backend.data", "backend.data.formats", "backend.data.tasks", "exporters.cli"])
def test_importing_the_data_layer_loads_no_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules, 'transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
