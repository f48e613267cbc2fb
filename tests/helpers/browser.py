"""Look at Label Studio the way a person does: headless Chromium driven by Playwright, with a screenshot per step.

Debian's ``chromium`` (``/usr/bin/chromium``, or env ``CHROMIUM_PATH``) is driven by the Playwright wheel's own
driver; no browser is ever downloaded (``playwright install`` is not used). Typical use::

    with LabelStudioBrowser(ls.url, ls.email, ls.password, screenshot_dir(tmp_path_factory)) as browser:
        browser.login()
        page = browser.open_data_manager(project_id)
        rows = table_rows(page)                      # {task id: DataManagerRow}, scrolling the virtual table
        page = browser.open_task(project_id, task_id)
        spans = visible_spans(page)                  # [Span(label, text)] highlighted in the text

Data Manager columns are addressed by Label Studio's own column ids (``tasks:predictions_score``, see
``label_studio/data_manager/functions.py``), which the table head carries as ``data-id``; the prediction columns are
hidden by default, ``show_columns`` un-hides them in the project's saved view (``/api/dm/views``).

Selectors are the ones Label Studio 1.23's frontend renders (``web/dist`` sources): the table rows are
``[data-testid=table-row]`` (virtualised: only the visible ones exist), text regions are ``span.htx-highlight`` (the
last span of a region carries ``data-label="<index>:<Label>"``), the regions panel items are ``.lsf-outliner-item``,
the annotation/prediction tabs ``.lsf-annotation-button`` (a prediction's has ``__userpic_prediction``).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_PATH = Path(os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium")
# As Chromium is run on this machine: no sandbox (root in a container), no GPU, nothing that calls home.
LAUNCH_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
VIEWPORT = {"width": 1600, "height": 1000}

# Data Manager column ids, and un-hiding them in the project's saved view: scripts/scenario.py (the demo does it too)
from scripts.scenario import (  # noqa: E402, F401 (show_columns and PREDICTION_COLUMNS: the tests import them here)
    ID, PREDICTION_COLUMNS, PREDICTION_MODEL_VERSIONS, PREDICTION_SCORE, TOTAL_PREDICTIONS, ls_api as _api, show_columns,
)


# --- availability and where screenshots go ---------------------------------------------------------------------
def unavailable_reason() -> str | None:
    """Why the browser test cannot run here (None when it can): Playwright or Chromium missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return ("the Python package `playwright` is not installed: `.venv/bin/pip install -r requirements-dev.txt` "
                "(its wheel carries the driver; no `playwright install` is needed)")
    if not CHROMIUM_PATH.exists():
        return (f"{CHROMIUM_PATH} is missing: `apt-get install -y chromium` (Debian's package), "
                "or set CHROMIUM_PATH to a Chromium executable")
    return None


def screenshot_dir(tmp_path_factory=None) -> Path:
    """The folder for this run's screenshots: env SCREENSHOT_DIR, else a fresh folder under pytest's tmp path.

    Prints ``screenshots: <path>`` so that CI logs say where they are.
    """
    if os.environ.get("SCREENSHOT_DIR"):
        folder = Path(os.environ["SCREENSHOT_DIR"]).resolve()
        folder.mkdir(parents=True, exist_ok=True)
    elif tmp_path_factory is not None:
        folder = Path(tmp_path_factory.mktemp("screenshots"))
    else:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="screenshots-"))
    print(f"screenshots: {folder}", flush=True)
    return folder


def dm_api_tasks(ls_url: str, token: str, project_id: int) -> dict[int, dict]:
    """The Data Manager's own task API (what backs the table), all fields: {task id: task}."""
    body = _api(f"{ls_url}/api/tasks?project={project_id}&fields=all&page_size=1000", token)
    return {int(task["id"]): task for task in body["tasks"]}


# --- what the pages show -----------------------------------------------------------------------------------------
@dataclass
class DataManagerRow:
    """One rendered row of the Data Manager table: the text of each cell, by column id."""

    task_id: int
    cells: dict[str, str] = field(default_factory=dict)

    @property
    def prediction_score(self) -> str:
        """The "Prediction score" cell as shown ("" when blank)."""
        return self.cells.get(PREDICTION_SCORE, "")

    @property
    def model_versions(self) -> str:
        """The "Prediction model versions" cell as shown (versions separated by commas)."""
        return self.cells.get(PREDICTION_MODEL_VERSIONS, "")

    @property
    def predictions(self) -> str:
        """The "Predictions" (count) cell as shown."""
        return self.cells.get(TOTAL_PREDICTIONS, "")

    def score_value(self) -> float | None:
        """The score as a number, None when the cell shows none."""
        match = re.search(r"-?\d+(?:\.\d+)?", self.prediction_score)
        return float(match.group(0)) if match else None


@dataclass(frozen=True)
class Span:
    """A labelled piece of text as shown: its label and its text."""

    label: str
    text: str


@dataclass(frozen=True)
class EntityTab:
    """One annotation or prediction tab above the labelling area."""

    name: str  # user for an annotation, model version for a prediction (Label Studio shortens names over 15 chars)
    prediction: bool
    selected: bool
    score: str = ""  # "Prediction score = 0.77" of a prediction, when it has one

    def names(self, version: str) -> bool:
        """True when this tab shows ``version`` (also as Label Studio shortens it: first 8 ... last 6)."""
        return self.name == version or (len(version) > 15 and self.name == f"{version[:8]}...{version[-6:]}")


_HEAD_JS = """() => {
  const head = document.querySelector('.lsf-table-head');
  if (!head) return null;
  const wrappers = Array.from(head.children);
  return wrappers.map(w => {
    const cell = w.matches('[data-id]') ? w : w.querySelector('[data-id]');
    return cell ? [cell.getAttribute('data-id'), cell.innerText.trim()] : [null, ''];
  });
}"""

_ROWS_JS = """() => Array.from(document.querySelectorAll('[data-testid=table-row]')).map(
  row => Array.from(row.children).map(cell => cell.innerText.trim()))"""

# the virtual list's scrolling element: the first ancestor of a row that scrolls
_FIND_SCROLLER = """
  const row = document.querySelector('[data-testid=table-row]');
  let el = row && row.parentElement;
  while (el && !(el.scrollHeight > el.clientHeight + 1 && getComputedStyle(el).overflowY !== 'visible')) {
    el = el.parentElement;
  }"""
_SCROLL_JS = """(step) => {""" + _FIND_SCROLLER + """
  if (!el) return {done: true, height: 0};
  if (step === 0) el.scrollTop = 0; else el.scrollTop = el.scrollTop + step * el.clientHeight;
  return {done: el.scrollTop + el.clientHeight >= el.scrollHeight - 2, height: el.scrollHeight};
}"""
_GREW_JS = """(height) => {""" + _FIND_SCROLLER + """
  return !el || el.scrollHeight > height;
}"""



def table_columns(page) -> list[tuple[str | None, str]]:
    """The Data Manager table's columns in display order: (column id or None, header text); icons have no text."""
    return [tuple(column) for column in (page.evaluate(_HEAD_JS) or [])]


def table_rows(page, timeout_s: float = 60.0) -> dict[int, DataManagerRow]:
    """Every row of the Data Manager table by task id, scrolling its virtual list (it renders only the visible rows
    and loads a further page of tasks when one scrolls to its end). Cells are keyed by column id (``table_columns``);
    reading stops when as many rows were read as the footer's "Tasks: <shown> / <total>" says are shown."""
    columns = table_columns(page)
    expected = table_shown_count(page)
    rows: dict[int, DataManagerRow] = {}
    page.evaluate(_SCROLL_JS, 0)
    page.wait_for_timeout(200)
    deadline = time.monotonic() + timeout_s
    stuck = 0
    while time.monotonic() < deadline:
        before = len(rows)
        for cells in page.evaluate(_ROWS_JS):
            named = {column_id: text for (column_id, _), text in zip(columns, cells) if column_id}
            try:
                task_id = int(named.get(ID, ""))
            except ValueError:
                continue  # a placeholder row whose task is still loading
            rows[task_id] = DataManagerRow(task_id, named)
        if expected is not None and len(rows) >= expected:
            break
        state = page.evaluate(_SCROLL_JS, 0.7)
        if state.get("done"):
            try:  # at the end of what is loaded: wait for the next page of tasks to grow the list
                page.wait_for_function(_GREW_JS, arg=state.get("height", 0), timeout=3_000)
            except Exception:  # noqa: BLE001 - nothing more to load
                pass
            stuck = stuck + 1 if len(rows) == before else 0
            if stuck >= 3:
                break
        page.wait_for_timeout(150)
    page.evaluate(_SCROLL_JS, 0)
    return rows


def prediction_cells(page) -> dict[int, tuple[str, str]]:
    """{task id: (the "Prediction score" cell, the "Prediction model versions" cell)} as rendered."""
    return {task_id: (row.prediction_score, row.model_versions) for task_id, row in table_rows(page).items()}


def table_total(page) -> str:
    """The footer's "Tasks: <shown> / <total>" text of the Data Manager ("" when there is none)."""
    match = re.search(r"Tasks:\s*\d+\s*/\s*\d+", page.inner_text("body"))
    return match.group(0) if match else ""


def table_shown_count(page) -> int | None:
    """How many tasks the Data Manager says its table shows (the footer's <shown>), None when it says nothing."""
    match = re.search(r"Tasks:\s*(\d+)\s*/", table_total(page))
    return int(match.group(1)) if match else None


_SPANS_JS = """() => {
  const root = document.querySelector('.lsf-richtext__container') || document;
  const spans = Array.from(root.querySelectorAll('span.htx-highlight'));
  const regions = new Map();
  for (const span of spans) {
    const key = Array.from(span.classList).find(c => c.startsWith('htx-highlight-') && c !== 'htx-highlight-last');
    if (!key || span.classList.contains('__hidden')) continue;
    const region = regions.get(key) || {parts: [], label: ''};
    // only text directly inside this region's spans (a nested span of another region is that region's text)
    region.parts.push(Array.from(span.childNodes).filter(n => n.nodeType === 3 ||
        (n.nodeType === 1 && !n.classList.contains('htx-highlight'))).map(n => n.textContent).join(''));
    if (span.dataset.label) region.label = span.dataset.label;
    regions.set(key, region);
  }
  return Array.from(regions.values()).map(r => [r.label, r.parts.join('')]);
}"""


def visible_spans(page) -> list[Span]:
    """The labelled spans highlighted in the text of the selected annotation/prediction, in text order.

    A region's last ``span.htx-highlight`` carries ``data-label="<index>:<Label>"``; the index is dropped.
    """
    spans = []
    for label, text in page.evaluate(_SPANS_JS):
        label = label.split(":", 1)[1] if re.match(r"^\d+:", label or "") else (label or "")
        spans.append(Span(label, text))
    return spans


_REGIONS_JS = """() => Array.from(document.querySelectorAll('.lsf-outliner-item')).map(item => {
  const label = item.querySelector('.lsf-labels-list .lsf-labels-list') || item.querySelector('.lsf-labels-list');
  const text = item.querySelector('.lsf-outliner-item__text');
  return [label ? label.innerText.trim() : '', text ? text.innerText.trim() : '',
          !!item.querySelector('.lsf-outliner-item__control_type_predict')];
})"""


def region_list(page) -> list[Span]:
    """The regions panel of the sidebar ("Regions"): one Span(label, text) per listed region."""
    return [Span(label, text) for label, text, _ in page.evaluate(_REGIONS_JS)]


_TABS_JS = """() => Array.from(document.querySelectorAll('.lsf-annotation-button')).map(b => {
  const name = b.querySelector('.lsf-annotation-button__name');
  const score = b.querySelector('.lsf-annotation-button__info [title^="Prediction score"]');
  return [name ? name.innerText.trim() : '', !!b.querySelector('.lsf-annotation-button__userpic_prediction'),
          b.classList.contains('lsf-annotation-button_selected'), score ? score.getAttribute('title') : ''];
})"""


def entity_tabs(page) -> list[EntityTab]:
    """The annotation and prediction tabs above the labelling area, in order."""
    return [EntityTab(name, bool(prediction), bool(selected), score)
            for name, prediction, selected, score in page.evaluate(_TABS_JS)]


def select_prediction(page, version: str) -> bool:
    """Click the prediction tab of ``version`` (shows its spans); False when there is none."""
    buttons = page.locator(".lsf-annotation-button")
    for index, tab in enumerate(entity_tabs(page)):
        if tab.prediction and tab.names(version):
            buttons.nth(index).locator(".lsf-annotation-button__mainSection").click()
            page.wait_for_timeout(300)
            _settle_spans(page)
            return True
    return False


def _wait_idle(page, timeout_ms: int = 10_000) -> None:
    try:
        page.wait_for_load_state("networkidle", timeout=timeout_ms)
    except Exception:  # noqa: BLE001 - a page that polls never goes idle; what is rendered is still readable
        pass


def _settle_spans(page, timeout_s: float = 5.0) -> None:
    """Wait until the number of highlighted spans stops changing (regions are drawn after the text)."""
    deadline = time.monotonic() + timeout_s
    last = -1
    while time.monotonic() < deadline:
        count = page.locator("span.htx-highlight").count()
        if count == last:
            return
        last = count
        page.wait_for_timeout(300)


# --- the browser ---------------------------------------------------------------------------------------------------
class LabelStudioBrowser:
    """Headless Chromium logged into one Label Studio; each step returns its page and saves a full-page screenshot."""

    def __init__(self, url: str, email: str, password: str, screenshots: Path, *, viewport: dict | None = None,
                 timeout_ms: int = 60_000, executable: Path | None = None):
        self.url = url.rstrip("/")
        self.email = email
        self.password = password
        self.screenshots = Path(screenshots)
        self.viewport = viewport or VIEWPORT
        self.timeout_ms = timeout_ms
        self.executable = Path(executable or CHROMIUM_PATH)
        self.shots: list[Path] = []
        self._playwright = None
        self._browser = None
        self._context = None
        self.page = None

    # lifecycle
    def start(self) -> "LabelStudioBrowser":
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        try:
            # launch() gives Chromium a fresh temporary user-data dir of its own, removed on close
            self._browser = self._playwright.chromium.launch(
                executable_path=str(self.executable), headless=True, args=list(LAUNCH_ARGS))
            self._context = self._browser.new_context(viewport=self.viewport)
            self._context.set_default_timeout(self.timeout_ms)
            self.page = self._context.new_page()
        except Exception:
            self.close()
            raise
        return self

    def close(self) -> None:
        for closer in (self._context, self._browser):
            try:
                if closer is not None:
                    closer.close()
            except Exception:  # noqa: BLE001 - closing a browser that already died
                pass
        if self._playwright is not None:
            self._playwright.stop()
        self._playwright = self._browser = self._context = self.page = None

    def __enter__(self) -> "LabelStudioBrowser":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # steps
    def screenshot(self, name: str, page=None) -> Path:
        """A full-page screenshot ``NN-<name>.png`` in the screenshot folder."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
        path = self.screenshots / f"{len(self.shots) + 1:02d}-{slug}.png"
        (page or self.page).screenshot(path=str(path), full_page=True)
        self.shots.append(path)
        return path

    def login(self):
        """Log in on /user/login with the admin's email and password; returns the projects page."""
        page = self.page
        page.goto(f"{self.url}/user/login")
        page.fill("input[name=email]", self.email)
        page.fill("input[name=password]", self.password)
        page.click("button[type=submit]")
        # 1.23 lands on its home page ("/"); a failed login stays on /user/login with an error
        try:
            page.wait_for_url(lambda url: "/user/login" not in url, timeout=30_000)
        except Exception as error:
            self.screenshot("login-failed")
            raise AssertionError(f"login as {self.email} failed: still on {page.url}: "
                                 f"{page.inner_text('body')[:300]!r}") from error
        page.goto(f"{self.url}/projects/")
        page.wait_for_selector(".lsf-projects-page")
        _wait_idle(page)
        self.screenshot("projects")
        return page

    def open_data_manager(self, project_id: int):
        """The project's Data Manager (/projects/<id>/data), once its table has rows."""
        page = self.page
        page.goto(f"{self.url}/projects/{project_id}/data")
        page.wait_for_selector("[data-testid=table-row]")
        _wait_idle(page)
        self.screenshot(f"data-manager-project-{project_id}")
        return page

    def open_task(self, project_id: int, task_id: int):
        """One task opened in the Data Manager's labelling view (/projects/<id>/data?task=<task id>)."""
        page = self.page
        page.goto(f"{self.url}/projects/{project_id}/data?task={task_id}")
        page.wait_for_selector(".lsf-richtext__container")
        page.wait_for_selector(".lsf-annotation-button")
        _wait_idle(page)
        _settle_spans(page)
        self.screenshot(f"task-{task_id}")
        return page
