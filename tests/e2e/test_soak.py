"""Soak: a real Label Studio and the ML backend under everything at once, for SOAK_SECONDS (default 600).

Meanwhile two annotators take tasks from the labeling stream (``GET /api/projects/<id>/next``; when the stream
hands one the task the other has open, as both are the one admin user, it opens an unlabelled task in the Data
Manager instead) and submit (or skip) them; the lead presses Start Training (sometimes twice in a row) and Retrieve
Predictions at random; an importer adds 10-30 unlabelled tasks every so often; the backend is restarted twice on its
own port and MODEL_DIR, down 5-20 s each time with a Start Training pressed in the gap (the first restart while a run
publishes, the second while a press is kept behind a run, when those come). Then the actors stop, the backend is
left to finish what it was given, Start Training is pressed once more and, once the backend is idle with its
promoted version announced, Label Studio is read back:

(a) no task holds two predictions of one model version;
(b) every task without an annotation holds a prediction of the announced version (docs/publishing.md, "Every promoted version
    reaches the annotators"; the project has far fewer tasks than PUBLISH_MAX_TASKS);
(c) every Start Training press was run or answered: not delivered while the backend was down (Label Studio marks the
    ML record as failed), or run: a training run started after it before the backend was next seen idle, and one
    cut short by a restart was run again by the next process (a press is kept until it runs).

The backend's runs are followed across its processes by polling ``/status`` (a run is (process, runs_started)); what
each press got comes from the backend's log ("webhook START_TRAINING for project N: started/scheduled/...").
Everything runs on loopback. SOAK_SEED (default 1) seeds every actor's schedule, so a failure can be replayed (the
threads' interleaving is the machine's own). The closing JSON line (also a file whose path is printed, with every
press and, beside it, every /status sample) has the counts; a failed check names the tasks, versions, prediction ids
and presses, and the backend's log path.
"""
from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import urllib.error
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pytest

from scripts.scenario import (backend_status, connect_backend, create_project, examples_to_tasks, import_tasks,
                              read_label_config, retrieve_predictions, text_tasks, wait_until)
from scripts.stack import BackendServer, StackError, get_json
from tests.e2e.conftest import TINY_TRAINING_ENV

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
SOAK_SEED = int(os.environ.get("SOAK_SEED", "1"))
N_ANNOTATED = 150
N_UNLABELLED = 300
PUBLISH_MAX_TASKS = 10_000  # the backend's default; the soak's project stays far below it

ANNOTATOR_READ_S = (1.0, 6.0)  # an annotator's time on a task before submitting
SKIP_SHARE = 0.1  # of the tasks an annotator opens, skipped (a cancelled annotation)
LEAD_PAUSE_S = (8.0, 35.0)  # between two presses of the lead
TRAIN_SHARE = 0.65  # of the lead's presses, Start Training (the others: Retrieve Predictions)
AGAIN_SHARE = 0.4  # after a Start Training, the lead presses it again (a run goes then: the press must be kept)
AGAIN_PAUSE_S = (1.0, 6.0)
IMPORT_PAUSE_S = (15.0, 45.0)
DOWN_S = (5.0, 20.0)  # how long a restart leaves the backend down
IMPORT_SIZE = (10, 30)
STATUS_POLL_S = 0.25  # the monitor's /status interval: a training run (several seconds) is always seen

# Bounds of the closing waits. In the debug and full runs on a 2-core machine one training run of the tiny model took
# 10-25 s (fetching to promotion, ~150 imported plus up to ~250 submitted annotations), and publishing ~400 tasks
# up to ~50 s while Label Studio was busy: at most ~75 s a run. When the actors stop the backend may still owe the
# run that is going and one kept press (~150 s); the last press is one run more: 300 s each leaves 2x headroom
# (measured: 35 s and 13 s in the full run).
SETTLE_TIMEOUT_S = 300
FINAL_TIMEOUT_S = 300
ACTOR_JOIN_S = 240  # a Retrieve Predictions over all tasks may take a minute or two in Label Studio

TRAIN_STAGES = {"fetching", "training", "evaluating", "reporting"}  # a publish-only job goes straight to publishing
WEBHOOK_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ backend\.serving\.app: "
                          r"webhook START_TRAINING for project (\d+): (.*)$")
TRAINED_LINE = re.compile(r"project (\d+): trained (v\d+)")


def _now() -> float:
    return time.time()


# --- the backend, restartable on the same port and MODEL_DIR --------------------------------------------------------
class Backend:
    """The ML backend behind one fixed URL (Label Studio's ML record stays valid): ``restart`` stops the process group
    it started and starts a new ``BackendServer`` on the same port, model dir and log. ``gen`` counts processes."""

    def __init__(self, make: Callable[[int], BackendServer]):
        self.make = make
        self.lock = threading.Lock()
        self.server = make(0)
        self.server.start()
        self.port = self.server.port
        self.url = self.server.url
        self.log_path = self.server.managed.log_path
        self.gen = 1
        self.up = True
        self.down: list[tuple[float, float | None]] = []  # (stopped at, up again at)
        self.restarts: list[dict] = []

    def state(self) -> tuple[int, bool]:
        with self.lock:
            return self.gen, self.up

    def was_up_between(self, start: float, end: float) -> bool:
        with self.lock:
            return all(until is not None and (until < start or began > end) for began, until in self.down)

    def restart(self, reason: str, status: dict | None, down_s: float, stop: threading.Event,
                in_the_gap: Callable[[], Any] = lambda: None) -> None:
        """Stop the backend, leave it down ``down_s`` (a deployment's gap: presses then reach nobody; ``in_the_gap``
        runs half-way into it), start it."""
        began = _now()
        with self.lock:
            self.up = False
            self.down.append((began, None))
        self.server.stop()
        stopped = _now()
        with self.lock:
            self.gen += 1  # after the old process is gone, before the new one answers
        stop.wait(down_s / 2)  # the gap itself (cut short when the soak ends)
        if not stop.is_set():
            in_the_gap()
        stop.wait(max(0.0, began + down_s - _now()))
        self.server = self.make(self.port)
        try:
            self.server.start()
        finally:
            with self.lock:
                self.down[-1] = (began, _now())
                self.up = True
        self.restarts.append({"reason": reason, "stage": ((status or {}).get("progress") or {}).get("stage"),
                              "training": (status or {}).get("training"), "stop_s": round(stopped - began, 1),
                              "down_s": round(_now() - began, 1), "gen": self.gen})

    def stop(self) -> None:
        self.server.stop()


# --- what the monitor saw -----------------------------------------------------------------------------------------
@dataclass
class Sample:
    sent: float
    gen: int
    entry: dict | None  # the project's /status entry; None when the backend did not answer

    @property
    def identity(self) -> tuple[int, int]:
        return self.gen, int(self.entry.get("runs_started") or 0)

    @property
    def idle(self) -> bool:
        return not self.entry.get("training") and not self.entry.get("pending")


class Monitor:
    """Polls ``/status?project=ID`` every STATUS_POLL_S, so that the runs of every backend process are known: a run
    is (process generation, its runs_started), and its stages say whether it trained or only published."""

    def __init__(self, backend: Backend, project: int):
        self.backend = backend
        self.project = project
        self.samples: list[Sample] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="soak-monitor", daemon=True)

    def _loop(self) -> None:
        while not self.stop_event.is_set():
            gen, _ = self.backend.state()
            sent = _now()
            try:
                entry = backend_status(self.backend.url, self.project).raw
            except (urllib.error.URLError, OSError, ValueError):
                entry = None
            if self.backend.state()[0] == gen:  # else a restart came in between: which process answered is unsure
                with self.lock:
                    self.samples.append(Sample(sent, gen, entry))
            self.stop_event.wait(STATUS_POLL_S)

    def latest(self) -> Sample | None:
        with self.lock:
            return self.samples[-1] if self.samples else None

    def snapshot(self) -> list[Sample]:
        with self.lock:
            return list(self.samples)

    def runs(self) -> dict[tuple[int, int], dict]:
        """Every run seen: its stages, whether it finished in its process, and what it returned."""
        runs: dict[tuple[int, int], dict] = {}
        finished: dict[int, int] = defaultdict(int)
        for sample in self.snapshot():
            if sample.entry is None:
                continue
            entry = sample.entry
            finished[sample.gen] = max(finished[sample.gen], int(entry.get("runs_finished") or 0))
            started = int(entry.get("runs_started") or 0)
            for number in range(1, started + 1):
                runs.setdefault((sample.gen, number), {"stages": set(), "result": None, "error": None,
                                                       "started_at": None})
            if started:
                run = runs[(sample.gen, started)]
                run["started_at"] = run["started_at"] or entry.get("last_started_at")
                if entry.get("training"):
                    run["stages"].add((entry.get("progress") or {}).get("stage"))
                elif int(entry.get("runs_finished") or 0) == started:
                    run["result"], run["error"] = entry.get("last_result"), entry.get("last_error")
        for (gen, number), run in runs.items():
            run["finished"] = finished[gen] >= number
            run["kind"] = _run_kind(run)
        return runs


def _run_kind(run: dict) -> str:
    if run["stages"] & TRAIN_STAGES:
        return "training"
    result = run["result"] if isinstance(run["result"], dict) else {}
    if "train_size" in result or str(result.get("decision", "")).startswith("nothing new"):
        return "training"
    if run["stages"] - {"starting", "queued", "done", None} == {"publishing"} \
            or str(result.get("decision", "")).startswith(("published", "nothing to publish")):
        return "publish"
    return "unknown"


# --- the lead's presses ---------------------------------------------------------------------------------------------
@dataclass
class Press:
    at: float  # seconds since the soak started
    t0: float
    t1: float
    gen: int
    up: bool
    ls_error: str | None = None
    final: bool = False
    decision: str | None = None  # what the backend logged; None: not delivered
    verdict: str = ""


def _log_decisions(log_path: Path, project: int) -> list[tuple[float, str]]:
    """(epoch seconds, decision) of every START_TRAINING webhook the backend logged for ``project``."""
    found = []
    for line in log_path.read_text(errors="replace").splitlines():
        match = WEBHOOK_LINE.match(line)
        if match and int(match.group(2)) == project:
            when = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as logged
            found.append((when, match.group(3)))
    return found


def _judge_presses(presses: list[Press], decisions: list[tuple[float, str]], samples: list[Sample],
                   runs: dict[tuple[int, int], dict], backend: Backend) -> None:
    """Fill each press's ``decision`` (from the backend's log) and ``verdict``: ``run`` (``...cut short by a restart
    and run again``), ``not delivered: ...``, or ``LOST: ...`` (the check (c) fails on those)."""
    for press in presses:
        mine = [decision for when, decision in decisions if press.t0 - 0.5 <= when <= press.t1 + 0.5]
        press.decision = mine[0] if mine else None
        if len(mine) > 1:
            press.verdict = f"LOST: {len(mine)} START_TRAINING webhooks logged for one press: {mine}"
    delivered = [press for press in presses if press.decision is not None]
    samples = [sample for sample in samples if sample.entry is not None]
    for press in presses:
        if press.verdict:
            continue
        if press.decision is None:
            if press.ls_error:
                press.verdict = f"not delivered: Label Studio answered {press.ls_error}"
            elif not backend.was_up_between(press.t0, press.t1) or not press.up:
                press.verdict = "not delivered: the backend was down (Label Studio marks the ML record failed)"
            else:
                press.verdict = "LOST: Label Studio answered OK and the backend was up, but it logged no webhook"
        elif press.decision == "started":
            seen = [x for x in samples if x.sent >= press.t1 and x.gen == press.gen and x.entry.get("training")]
            press.verdict = (_to_the_end(seen[0].identity, delivered, samples, runs) if seen
                             else "run (too short to be seen)")
        elif press.decision in ("scheduled", "already scheduled"):
            found = _next_training_run(press.t1, None, press.gen, delivered, samples, runs)
            press.verdict = _to_the_end(found, delivered, samples, runs) if isinstance(found, tuple) else found
        else:
            press.verdict = f"LOST: the backend answered {press.decision!r} (Label Studio told the lead it was sent)"


def _next_training_run(after: float, going: tuple[int, int] | None, gen: int, delivered: list[Press],
                       samples: list[Sample], runs: dict[tuple[int, int], dict]) -> tuple[int, int] | str:
    """The training run owed since ``after`` (a press kept behind the run ``going``, or a run cut short in process
    ``gen``): the first run newer than ``going`` that the monitor saw, if it trained and came before the backend was
    seen idle and before a later press found nothing kept (answered "started", or "scheduled" where a kept one
    would have made it "already scheduled"); else why it is LOST."""
    events: list[tuple[float, Any]] = [(s.sent, s) for s in samples if s.sent >= after]
    events += [(p.t0, p) for p in delivered if p.t0 > after]
    events.sort(key=lambda event: event[0])
    for when, event in events:
        if isinstance(event, Press):
            if event.decision in ("started", "scheduled"):
                # "scheduled" also follows the owed run when it started moments before (between two /status)
                peek = next((s for s in samples if s.sent >= event.t1), None)
                if (going is not None and event.decision == "scheduled" and peek is not None
                        and peek.identity > going and runs.get(peek.identity, {}).get("kind") == "training"):
                    return peek.identity
                return (f"LOST: a later press at {event.at:.1f} s was answered {event.decision!r} before the run it "
                        "was owed started")
            continue
        sample: Sample = event
        if going is None:  # the first /status after a kept press: which run was going when it came
            if sample.gen != gen:
                going = (gen, 10**9)  # the process it reached is gone: any run of a later one is newer
            elif sample.entry.get("pending"):
                going = sample.identity
                continue
            else:
                going = (sample.gen, sample.identity[1] - 1)  # the kept run started already (or nothing is going)
        if sample.entry.get("training") and sample.identity > going:
            kind = runs.get(sample.identity, {}).get("kind", "unknown")
            if kind == "publish":
                return f"LOST: the run that followed ({sample.identity}) only published"
            return sample.identity if kind == "training" else f"run (of unseen kind: {sample.identity})"
        if sample.idle:
            return (f"LOST: the backend (process {sample.gen}) was seen idle at "
                    f"{time.strftime('%H:%M:%S', time.localtime(sample.sent))} before the run it was owed started")
    return "LOST?: no /status came after it that shows its run"


def _to_the_end(identity: tuple[int, int], delivered: list[Press], samples: list[Sample],
                runs: dict[tuple[int, int], dict], depth: int = 0) -> str:
    """``run`` when the run ``identity`` finished; when a restart cut it short, the next process must run it again."""
    if runs.get(identity, {}).get("finished", True):
        return "run" if depth == 0 else "run, cut short by a restart and run again"
    gone = max((s.sent for s in samples if s.gen == identity[0]), default=0.0)
    again = _next_training_run(gone, (identity[0], 10**9), identity[0], delivered, samples, runs)
    if isinstance(again, tuple) and depth < 5:
        return _to_the_end(again, delivered, samples, runs, depth + 1)
    return again if again.startswith("run") else f"LOST: its run {identity} was cut short by a restart; {again[6:]}"


# --- the test ---------------------------------------------------------------------------------------------------------
@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: Counter = field(default_factory=Counter)
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    stream_versions: Counter = field(default_factory=Counter)
    presses: list[Press] = field(default_factory=list)
    imported: list[int] = field(default_factory=list)

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counts[name] += n

    def error(self, actor: str, error: BaseException) -> None:
        with self.lock:
            self.counts[f"{actor}_errors"] += 1
            if len(self.errors[actor]) < 5:
                self.errors[actor].append(f"{type(error).__name__}: {str(error)[:200]}")


def _next_task(ls_url: str, token: str, project: int) -> dict | None:
    """The labeling stream's next task for the (one) user, as the labelling UI asks it; None when there is none."""
    try:
        return get_json(f"{ls_url}/api/projects/{project}/next", timeout=120.0,
                        headers={"Authorization": f"Token {token}"})
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise


def _all_tasks(ls_url: str, token: str, project: int) -> list[dict]:
    """Every task of ``project`` (Data Manager fields, annotation counts included), page by page."""
    tasks: list[dict] = []
    page = 1
    while True:
        body = get_json(f"{ls_url}/api/tasks?project={project}&page={page}&page_size=500&fields=all", timeout=120.0,
                        headers={"Authorization": f"Token {token}"})
        tasks += body.get("tasks", [])
        if not body.get("tasks") or len(tasks) >= int(body.get("total", 0)):
            return tasks
        page += 1


def test_soak_every_version_reaches_every_unlabelled_task_once_and_every_press_is_kept(
        label_studio, tiny_base_model_dir, tmp_path, capsys):
    from label_studio_sdk import LabelStudio

    from tests.helpers.synthetic import restaurant_examples

    rng = random.Random(SOAK_SEED)
    config = read_label_config()
    ls = label_studio.client()
    project = create_project(ls, f"Soak (seed {SOAK_SEED})", config)
    annotated = examples_to_tasks(restaurant_examples(N_ANNOTATED, seed=1000 + SOAK_SEED), config)
    unlabelled_examples = restaurant_examples(N_UNLABELLED, seed=2000 + SOAK_SEED)
    gold: dict[str, list] = {}  # text -> the annotation an annotator submits for it
    gold_lock = threading.Lock()

    def learn(examples) -> None:
        with gold_lock:
            for task in examples_to_tasks(examples, config):
                gold.setdefault(task["data"]["text"], task["annotations"][0]["result"])

    learn(unlabelled_examples)
    initial_ids = import_tasks(ls, project, annotated + text_tasks([e.text for e in unlabelled_examples]))

    model_dir = tmp_path / "models"

    def make(port: int) -> BackendServer:
        return BackendServer(label_studio.url, label_studio.token, model_dir, str(tiny_base_model_dir), port=port,
                             extra_env=TINY_TRAINING_ENV)

    try:
        backend = Backend(make)
    except StackError as error:
        pytest.fail(str(error), pytrace=False)
    monitor = Monitor(backend, project)
    tally = Tally()
    stop = threading.Event()
    soak_started = _now()
    claims: dict[int, int] = {}  # task id -> the annotator who opened it first (never released: one annotation each)
    claims_lock = threading.Lock()
    restart_errors: list[str] = []
    unlabelled_at_start = initial_ids[N_ANNOTATED:]

    def candidates() -> list[int]:
        with tally.lock:
            return unlabelled_at_start + tally.imported
    try:
        ml_id = connect_backend(ls, project, backend.url, title="NER backend (soak)")
        monitor.thread.start()

        def annotator(number: int) -> None:
            my_rng = random.Random(SOAK_SEED * 1000 + number)
            client = label_studio.client()
            while not stop.is_set():
                try:
                    task = _next_task(label_studio.url, label_studio.token, project)
                except Exception as error:  # noqa: BLE001 - counted; Label Studio or the backend may be busy
                    tally.error("next", error)
                    stop.wait(my_rng.uniform(1, 3))
                    continue
                if task is None:
                    tally.add("stream_empty")
                    stop.wait(my_rng.uniform(2, 5))
                    continue
                task_id = int(task["id"])
                with claims_lock:
                    other = claims.setdefault(task_id, number)
                    if other != number:  # the other annotator (the same user) has it open: take one in the Data Manager
                        open_ids = [i for i in candidates() if i not in claims]
                        task_id = my_rng.choice(open_ids) if open_ids else None
                        if task_id is not None:
                            claims[task_id] = number
                if other != number:
                    if task_id is None:
                        tally.add("stream_same_task")
                        stop.wait(my_rng.uniform(0.5, 1.5))
                        continue
                    try:  # opening a task in the Data Manager asks the backend for one without any prediction
                        task = get_json(f"{label_studio.url}/api/tasks/{task_id}?project={project}", timeout=120.0,
                                        headers={"Authorization": f"Token {label_studio.token}"})
                    except Exception as error:  # noqa: BLE001
                        tally.error("next", error)
                        continue
                    tally.add("opened_in_data_manager")
                else:
                    tally.add("opened_in_stream")
                with tally.lock:
                    for version in {p.get("model_version") for p in task.get("predictions") or []} or {None}:
                        tally.stream_versions[str(version)] += 1
                if stop.wait(my_rng.uniform(*ANNOTATOR_READ_S)):
                    break
                text = (task.get("data") or {}).get("text", "")
                try:
                    if my_rng.random() < SKIP_SHARE:
                        client.annotations.create(id=task_id, result=[], was_cancelled=True)
                        tally.add("skips")
                    else:
                        with gold_lock:
                            result = gold.get(text)
                        if result is None:  # not a text of ours: a span over its first word
                            word = text.split()[0] if text.split() else ""
                            result = [{"from_name": "label", "to_name": "text", "type": "labels",
                                       "value": {"start": 0, "end": len(word), "text": word, "labels": ["Cuisine"]}}]
                        client.annotations.create(id=task_id, result=result, was_cancelled=False)
                        tally.add("annotations_submitted")
                except Exception as error:  # noqa: BLE001
                    tally.error("submit", error)

        lead_client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token, timeout=300)

        def press(final: bool = False) -> Press:
            gen, up = backend.state()
            t0 = _now()
            error = None
            try:
                lead_client.ml.train(id=ml_id)
            except Exception as failure:  # noqa: BLE001 - an answer of Label Studio's to record
                error = f"{type(failure).__name__}: {str(failure)[:200]}"
            pressed = Press(at=round(t0 - soak_started, 1), t0=t0, t1=_now(), gen=gen, up=up, ls_error=error,
                            final=final)
            with tally.lock:
                tally.presses.append(pressed)
            return pressed

        def lead() -> None:
            my_rng = random.Random(SOAK_SEED * 1000 + 10)
            while not stop.wait(my_rng.uniform(*LEAD_PAUSE_S)):
                if my_rng.random() < TRAIN_SHARE:
                    press()
                    while my_rng.random() < AGAIN_SHARE and not stop.wait(my_rng.uniform(*AGAIN_PAUSE_S)):
                        press()  # an impatient lead: a press while the first one's run goes
                    continue
                try:
                    retrieve_predictions(lead_client, project)
                    tally.add("retrieves")
                except Exception as error:  # noqa: BLE001
                    tally.error("retrieve", error)

        def importer() -> None:
            my_rng = random.Random(SOAK_SEED * 1000 + 20)
            client = label_studio.client()
            batch = 0
            while not stop.wait(my_rng.uniform(*IMPORT_PAUSE_S)):
                batch += 1
                examples = restaurant_examples(my_rng.randint(*IMPORT_SIZE), seed=100_000 + SOAK_SEED * 100 + batch)
                learn(examples)
                try:
                    ids = import_tasks(client, project, text_tasks([e.text for e in examples]))
                    with tally.lock:
                        tally.imported += ids
                    tally.add("imports")
                except Exception as error:  # noqa: BLE001
                    tally.error("import", error)

        # the restarts: the first in the first part while a run publishes (if one does within 0.2 of the soak), the
        # second in the second part while a press is kept behind a run (else while a run goes, else at once)
        first_at = rng.uniform(0.2, 0.35) * SOAK_SECONDS
        second_at = rng.uniform(0.55, 0.7) * SOAK_SECONDS

        def publishing(entry: dict) -> bool:
            return bool(entry.get("training")) and (entry.get("progress") or {}).get("stage") == "publishing"

        def kept(entry: dict) -> bool:
            """A run going with a press of the lead's behind it (pending alone may be a publishing for new tasks)."""
            if not entry.get("training") or not entry.get("pending") or not entry.get("last_started_at"):
                return False
            started = datetime.strptime(entry["last_started_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=timezone.utc).timestamp()
            with tally.lock:
                return any(press.t0 > started + 1 and press.up for press in tally.presses)

        def going(entry: dict) -> bool:
            return bool(entry.get("training"))

        def restarter() -> None:
            restart_rng = random.Random(SOAK_SEED * 1000 + 30)
            for at, wishes, patience in ((first_at, [("publishing", publishing)], 0.2 * SOAK_SECONDS),
                                         (second_at, [("a press kept", kept), ("a run going", going)],
                                          0.15 * SOAK_SECONDS)):
                if stop.wait(max(0.0, soak_started + at - _now())):
                    return
                for name, wish in wishes:
                    give_up = _now() + patience / len(wishes)
                    while _now() < give_up and not stop.is_set():
                        sample = monitor.latest()
                        if sample and sample.entry and wish(sample.entry):
                            break
                        stop.wait(0.05)  # polls the monitor's latest sample, bounded by give_up
                    sample = monitor.latest()
                    entry = sample.entry if sample else None
                    if entry and wish(entry):
                        reason = name
                        break
                else:
                    reason = "none of " + ", ".join(name for name, _ in wishes) + " came"
                try:
                    # the lead presses Start Training while the backend is down: Label Studio cannot deliver it
                    backend.restart(f"at {_now() - soak_started:.0f} s: {reason}", entry,
                                    restart_rng.uniform(*DOWN_S), stop, in_the_gap=press)
                except StackError as error:
                    restart_errors.append(str(error))
                    return

        actors = [threading.Thread(target=annotator, args=(n,), name=f"soak-annotator-{n}", daemon=True) for n in (1, 2)]
        actors += [threading.Thread(target=lead, name="soak-lead", daemon=True),
                   threading.Thread(target=importer, name="soak-importer", daemon=True)]
        restart_thread = threading.Thread(target=restarter, name="soak-restarter", daemon=True)
        for thread in (*actors, restart_thread):
            thread.start()
        stop.wait(SOAK_SECONDS)  # the soak itself: the actors run this long
        stop.set()
        restart_thread.join(timeout=180)  # a restart under way completes (stop <= 20 s, start <= 120 s)
        for thread in actors:
            thread.join(timeout=ACTOR_JOIN_S)
        stuck = [thread.name for thread in (*actors, restart_thread) if thread.is_alive()]
        assert not stuck, f"actors still busy {ACTOR_JOIN_S} s after the soak ended: {stuck}"
        assert not restart_errors, f"the backend did not come back after a restart: {restart_errors}"
        soak_s = _now() - soak_started

        # the backend finishes what it was given (a run going, a kept press), without anyone pressing again
        def status():
            try:
                return backend_status(backend.url, project)
            except (urllib.error.URLError, OSError, ValueError):
                return None

        def waited(condition, timeout_s: float, what: str) -> float:
            """wait_until, failing with the backend's last /status and its log when the bound passes."""
            try:
                return wait_until(condition, timeout_s, what)
            except TimeoutError as error:
                last = status()
                pytest.fail(f"{error}; last /status: {last.raw if last else 'no answer'}; "
                            f"backend log {backend.log_path}", pytrace=False)

        waited(lambda: status() is not None, 60, "the backend to answer /status")
        settle_s = waited(lambda: (lambda s: s is not None and not s.running and not s.pending)(status()),
                          SETTLE_TIMEOUT_S, "the backend to finish the runs it was given during the soak")
        # the last press: its run ends with the promoted version published and announced
        final = press(final=True)
        final_run = lambda s: any(run["kind"] == "training" and run["finished"] and key[0] == final.gen  # noqa: E731
                                  for key, run in monitor.runs().items()
                                  if key[1] > _runs_before(monitor, final))
        final_s = waited(lambda: (lambda s: s is not None and not s.running and not s.pending
                                  and s.raw.get("current_version")
                                  and s.raw.get("current_version") == s.raw.get("announced_version")
                                  and final_run(s))(status()),
                         FINAL_TIMEOUT_S, "the last press's run to finish with its version announced")
        end = status().raw
    finally:
        stop.set()
        monitor.stop_event.set()
        monitor.thread.join(timeout=10)
        backend.stop()

    # --- Label Studio read back -----------------------------------------------------------------------------------
    tasks = _all_tasks(label_studio.url, label_studio.token, project)
    predictions = [p if isinstance(p, dict) else p.model_dump(mode="json") for p in ls.predictions.list(project=project)]
    by_task: dict[int, list[str]] = defaultdict(list)
    stored: dict[tuple[int, str], list[str]] = defaultdict(list)  # (task, version) -> "prediction id @ created at"
    for prediction in predictions:
        by_task[int(prediction["task"])].append(prediction.get("model_version"))
        stored[(int(prediction["task"]), prediction.get("model_version"))].append(
            f"#{prediction.get('id')} @ {prediction.get('created_at')}")
    announced = end.get("announced_version")
    duplicates = {task_id: sorted(v for v, n in Counter(versions).items() if n > 1)
                  for task_id, versions in by_task.items() if len(versions) != len(set(versions))}
    unlabelled = [task for task in tasks if not task.get("annotations") and not task.get("total_annotations")
                  and not task.get("cancelled_annotations")]
    unlabelled_ids = sorted(int(task["id"]) for task in unlabelled)[:PUBLISH_MAX_TASKS]
    without = {task_id: sorted(set(by_task.get(task_id, []))) for task_id in unlabelled_ids
               if announced not in by_task.get(task_id, [])}

    decisions = _log_decisions(backend.log_path, project)
    runs = monitor.runs()
    _judge_presses(tally.presses, decisions, monitor.snapshot(), runs, backend)
    lost = [press for press in tally.presses if press.verdict.startswith("LOST")]
    log_text = backend.log_path.read_text(errors="replace")
    versions_made = sorted({m.group(2) for m in TRAINED_LINE.finditer(log_text) if int(m.group(1)) == project},
                           key=lambda v: int(v[1:]))

    summary = {
        "soak_seconds": SOAK_SECONDS, "seed": SOAK_SEED, "actors_s": round(soak_s, 1),
        "settle_s": round(settle_s, 1), "final_run_s": round(final_s, 1),
        "tasks": len(tasks), "tasks_imported_at_start": len(initial_ids), "imports": tally.counts["imports"],
        "tasks_imported_during": len(tally.imported), "opened_in_stream": tally.counts["opened_in_stream"],
        "opened_in_data_manager": tally.counts["opened_in_data_manager"],
        "annotations_submitted": tally.counts["annotations_submitted"], "skips": tally.counts["skips"],
        "stream_empty": tally.counts["stream_empty"], "stream_same_task": tally.counts["stream_same_task"],
        "opened_tasks_showed_versions": dict(tally.stream_versions),
        "start_training_presses": len(tally.presses),
        "presses_by_answer": dict(Counter(press.decision or "not delivered" for press in tally.presses)),
        "presses_by_verdict": dict(Counter(press.verdict.split(":")[0] for press in tally.presses)),
        "retrieve_presses": tally.counts["retrieves"], "restarts": backend.restarts,
        "runs_seen": dict(Counter(run["kind"] for run in runs.values())),
        "runs_interrupted_by_restarts": sorted(f"{g}.{n}:{r['kind']}" for (g, n), r in runs.items()
                                               if not r["finished"]),
        "runs_failed": sorted(f"{g}.{n}: {r['error']}" for (g, n), r in runs.items() if r["error"]),
        "versions_made": len(versions_made), "versions": versions_made,
        "current_version": end.get("current_version"), "announced_version": announced,
        "project_model_version": ls.projects.get(id=project).model_version,
        "last_error": end.get("last_error"), "warnings": end.get("warnings"),
        "predictions": len(predictions),
        "predictions_by_task_counts": sum(int(task.get("total_predictions") or 0) for task in tasks),
        "tasks_checked": len(tasks), "unlabelled_tasks": len(unlabelled_ids),
        "duplicates_found": len(duplicates),
        "duplicates_by_version": dict(Counter(v for versions in duplicates.values() for v in versions)), "unlabelled_without_serving_version": len(without),
        "presses_lost": len(lost),
        "errors": {actor: tally.counts[f"{actor}_errors"] for actor in ("next", "submit", "retrieve", "import")},
        "error_samples": dict(tally.errors), "backend_log": str(backend.log_path),
    }
    report = tmp_path / "soak-summary.json"
    report.write_text(json.dumps({**summary, "press_log": [
        {"at": p.at, "t0": round(p.t0, 3), "t1": round(p.t1, 3), "gen": p.gen, "up": p.up, "ls_error": p.ls_error, "decision": p.decision, "verdict": p.verdict,
         "final": p.final} for p in tally.presses]}, indent=1, default=str))
    with (tmp_path / "status-samples.jsonl").open("w") as out:  # what the monitor saw, for a post-mortem
        for sample in monitor.snapshot():
            entry = sample.entry or {}
            out.write(json.dumps({"t": round(sample.sent, 3), "gen": sample.gen, "up": sample.entry is not None, **{
                key: entry.get(key) for key in ("training", "pending", "runs_started", "runs_finished",
                                                "last_started_at", "current_version", "announced_version")},
                "stage": (entry.get("progress") or {}).get("stage")}) + "\n")
    with capsys.disabled():
        print(f"\nsoak summary ({report}):\nSOAK {json.dumps(summary, default=str)}")

    problems = []  # all three checks are reported together: one soak run finds every kind of defect it can
    # (a) never two predictions of one version on a task
    if duplicates:
        problems.append(
            f"(a) {len(duplicates)} task(s) hold two predictions of one model version: "
            + "; ".join(f"task {task_id}: " + ", ".join(f"{v} ({' and '.join(stored[(task_id, v)])})" for v in versions)
                        for task_id, versions in sorted(duplicates.items())[:30]))
    # (b) every unlabelled task holds the announced version
    if not announced:
        problems.append(f"(b) no version announced at the end: {end}")
    elif without:
        problems.append(
            f"(b) {len(without)} of {len(unlabelled_ids)} unlabelled task(s) hold no prediction of the announced "
            f"version {announced} (task: the versions it holds): {dict(list(without.items())[:30])}")
    # (c) every press was run, or answered without reaching the backend
    if lost:
        problems.append("(c) Start Training presses neither run nor answered:\n" + "\n".join(
            f"  at {p.at} s (backend process {p.gen}): answered {p.decision!r}: {p.verdict}" for p in lost))
    assert not problems, "\n\n".join(problems) + f"\n\nbackend log: {backend.log_path}; summary: {report}"


def _runs_before(monitor: Monitor, press: Press) -> int:
    """runs_started of the press's backend process in the last /status sent before the press."""
    before = [s for s in monitor.snapshot() if s.sent < press.t0 and s.gen == press.gen and s.entry is not None]
    return before[-1].identity[1] if before else 0
