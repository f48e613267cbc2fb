"""Versioned models on disk, one folder per project: ``v1``, ``v2``, ... and a ``current.json`` pointer.

The pointer names two versions: the promoted one (``current``: what the next training compares with and warm-starts
from) and the announced one (``announced``: what answers Label Studio in ``/setup`` and ``/predict``). A promotion
with publishing on leaves the announced version where it was until publishing has written the promoted version's
predictions into Label Studio; then ``announce`` moves it. So Label Studio never asks for, nor stores, a version that
publishing is still writing (its own check skips the tasks that hold the version ``/setup`` names).

A version is trained into a hidden temporary folder and renamed into place whole; the pointer is replaced
atomically. So a crash or kill at any moment leaves either the old state or the new one, plus at most a
temporary folder that ``clean_temporary`` removes at start-up. Whether a version fits a project's label config
(``fits``) is the store's one check of it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from backend.data.schema import LabelSchema
from backend.data.spans import entity_types
from backend.model.metrics import F1Difference, Scores

MANIFEST = "manifest.json"
POINTER = "current.json"
PUBLISHED = "published.json"  # the last version whose predictions were written into Label Studio, and how it went
PROMOTIONS = "promotions.json"  # every version the pointer has named, oldest first: the truth of "promoted"
REVIEW = "review.json"  # the project's last review of its annotations (backend/training/review.py)
TEMPORARY_PREFIX = ".tmp-"
_VERSION = re.compile(r"^v(\d+)$")
_PROJECT = re.compile(r"^[A-Za-z0-9_-]+$")


def utc_now() -> str:
    """The current time as ISO 8601 UTC with seconds, e.g. ``2025-01-31T12:00:00Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json_atomically(path: Path, data: Any, indent: int | None = 2) -> None:
    """Write ``data`` as JSON so that readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # named like a temporary folder, so that a writer killed mid-write leaves nothing clean_temporary misses
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMPORARY_PREFIX}{_writer_tag()}-{path.name}.",
                                         suffix=".part")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=indent, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


LOW_DISK_MB = 500  # below this a new version (87 MB for the stand-in, 260 MB for DistilBERT) may not fit


def free_megabytes(path: Path) -> float | None:
    """Free space on the file system holding ``path`` (its nearest existing folder), in MB; None if unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free / 2**20
    except OSError:
        return None


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), or None where that cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _host_tag() -> str:
    """This host in a temporary folder's name (8 hex digits of its name): on a shared MODEL_DIR, a process id
    means something only on the host that wrote it."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _writer_tag() -> str:
    """This process in a temporary folder's name: ``<pid>.<start time>.<host>``, so a later process that got the
    same pid (a restarted container numbers from 1 again) is not taken for the writer, nor a process of another
    host sharing the folder."""
    return f"{os.getpid()}.{_process_start(os.getpid()) or 0}.{_host_tag()}"


def _writer_alive(name: str) -> bool:
    """Whether the process that made temporary folder ``name`` (``.tmp-<pid>.<start>.<host>-...``) still runs;
    a folder of another host is taken as alive (only that host can tell)."""
    pid, start, host = (name[len(TEMPORARY_PREFIX):].split("-", 1)[0].split(".") + ["", ""])[:3]
    if host and host != _host_tag():
        return True
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    running_since = _process_start(int(pid))
    return not start or start == "0" or running_since is None or running_since == start


@dataclass
class Manifest:
    """What built a version and how it scored; saved as ``manifest.json`` inside the version folder. The one
    record of a version's labels and its F1.

    ``scores``: the candidate's scores on the project's validation tasks; ``previous_scores``: the model that
    served before, on the same tasks (None when there was none, or nothing to score).
    """

    project: str
    base_model: str
    labels: list[str]
    task_ids: list[int] = field(default_factory=list)
    annotation_ids: list[int] = field(default_factory=list)
    train_size: int = 0
    validation_size: int = 0
    training_seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    scores: Scores | None = None
    previous_version: str | None = None
    previous_scores: Scores | None = None
    promoted: bool = False
    decision: str = ""
    version: str = ""
    created_at: str = field(default_factory=utc_now)
    fingerprint: str = ""  # what it was trained on (training_run.training_fingerprint): the same means nothing new
    f1_difference: F1Difference | None = None  # candidate minus previous F1 with its bootstrap interval
    started_from: str = ""  # "base model <id>", or "<version> (warm start)": what the training continued from
    # the training-set size of the last run of this version's line that started from the base model (its own when
    # it did; 0 in manifests older than the field): how much the line has grown since (training_run.rebase_due)
    line_base_size: int = 0
    suggestions: dict[str, Any] = field(default_factory=dict)  # what annotators kept (data.suggestions.to_dict)

    @property
    def f1(self) -> float | None:
        return self.scores.overall.f1 if self.scores else None

    @property
    def previous_f1(self) -> float | None:
        return self.previous_scores.overall.f1 if self.previous_scores else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("scores", "previous_scores"):  # {"overall": ..., "per_entity": ...}, without per-task counts
            data[name] = getattr(self, name).to_dict() if getattr(self, name) is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("scores", "previous_scores"):
            values[name] = _scores(values.get(name))
        values["f1_difference"] = _difference(values.get("f1_difference"))
        return cls(**values)


def _scores(data: Any) -> Scores | None:
    """``Scores`` from a manifest's JSON; None when absent or not scores (an unreadable record scores nothing)."""
    try:
        return Scores.from_dict(data) if data else None
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


def _difference(data: Any) -> F1Difference | None:
    try:
        return F1Difference.from_dict(data) if isinstance(data, dict) else None
    except (TypeError, ValueError):
        return None


def model_labels(model_dir: Path) -> tuple[str, ...]:
    """The entity labels a saved model predicts: its manifest's (a version of the store), else those of its
    config.json ``id2label`` (a model trained by the command line, as a START_MODEL). No model loading."""
    manifest = read_json(Path(model_dir) / MANIFEST)
    if isinstance(manifest, dict) and isinstance(manifest.get("labels"), list):
        return tuple(label for label in manifest["labels"] if isinstance(label, str))
    config = read_json(Path(model_dir) / "config.json")
    id2label = config.get("id2label") if isinstance(config, dict) else None
    if not isinstance(id2label, dict):
        return ()
    try:
        tags = [id2label[k] for k in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        return ()
    return tuple(entity_types(tags))


def fits(labels: Sequence[str], schema: LabelSchema) -> bool:
    """A model may serve a project only when every label it can predict is a label of the project's config,
    so a suggestion never carries a label the project does not have."""
    return bool(labels) and set(labels) <= set(schema.labels)


START_PREFIX = "start-"


def start_version(start_model: Path | None) -> str:
    """The version name predictions of START_MODEL carry (``start-<folder name>``)."""
    return START_PREFIX + Path(start_model or "model").name


@dataclass(frozen=True)
class VersionInfo:
    """One line of ``/versions``: name, creation time, validation F1, whether it has served, serving now."""

    version: str
    created_at: str
    f1: float | None
    promoted: bool
    current: bool
    train_size: int
    validation_size: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelStore:
    """All projects' model versions under ``root`` (``root/<project>/v<N>``, ``root/<project>/current.json``).

    Safe for one writer per project at a time (the job queue runs one training per project) and any number
    of readers; several processes may read and write, as the training child and the server do.
    """

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._lock = threading.Lock()

    # --- layout -------------------------------------------------------------------------------------------
    def project_dir(self, project: str) -> Path:
        project = str(project)
        if not _PROJECT.match(project):
            raise ValueError(f"project id {project!r} may only hold letters, digits, '-' and '_'")
        return self.root / project

    def version_dir(self, project: str, version: str) -> Path:
        if not _VERSION.match(version):
            raise ValueError(f"version {version!r} is not a version name like 'v3'")
        return self.project_dir(project) / version

    def projects(self) -> list[str]:
        """Projects that have a folder in the store, sorted (numeric ids by number)."""
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir() if p.is_dir() and _PROJECT.match(p.name)]
        return sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))

    def has_project(self, project: str) -> bool:
        return self.project_dir(project).is_dir()

    def version_names(self, project: str) -> list[str]:
        """Committed versions of ``project``, oldest first."""
        folder = self.project_dir(project)
        if not folder.is_dir():
            return []
        numbered = [(int(m.group(1)), p.name) for p in folder.iterdir() if p.is_dir() and (m := _VERSION.match(p.name))]
        return [name for _, name in sorted(numbered)]

    # --- writing ------------------------------------------------------------------------------------------
    def clean_temporary(self) -> list[Path]:
        """Remove leftovers of trainings that were killed before they committed (call at start-up).

        A folder whose writing process is still alive is left alone, so starting a second server (or a test)
        on the same MODEL_DIR never deletes a training in progress.
        """
        removed = []
        for project in self.projects():
            for leftover in self.project_dir(project).glob(TEMPORARY_PREFIX + "*"):
                if _writer_alive(leftover.name):
                    continue
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
                removed.append(leftover)
        return removed

    def new_temporary_dir(self, project: str) -> Path:
        """An empty hidden folder inside the project's folder (same file system, so the commit is a rename)."""
        folder = self.project_dir(project)
        folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{TEMPORARY_PREFIX}{_writer_tag()}-", dir=folder))

    def commit(self, project: str, temporary_dir: Path, manifest: Manifest) -> str:
        """Write ``manifest`` into ``temporary_dir`` and rename the folder to the next version name; return it.

        The folder appears under its final name complete or not at all.
        """
        with self._lock:
            names = self.version_names(project)
            number = int(names[-1][1:]) + 1 if names else 1
            while True:
                name = f"v{number}"
                manifest.version = name
                write_json_atomically(Path(temporary_dir) / MANIFEST, manifest.to_dict())
                try:
                    # os.rename onto an existing (non-empty) folder fails, so a racing writer cannot be overwritten
                    os.rename(temporary_dir, self.version_dir(project, name))
                    return name
                except OSError:
                    if not self.version_dir(project, name).exists():
                        raise
                    number += 1

    def promote(self, project: str, version: str, announce: bool = True) -> None:
        """Make ``version`` the promoted one of ``project`` (an atomic replace of the pointer file), and record it
        among the project's promotions. ``announce=False`` keeps the announced version as it was (publishing
        announces the new one once its predictions are written)."""
        if not (self.version_dir(project, version) / MANIFEST).is_file():
            raise FileNotFoundError(f"cannot promote {version} of project {project}: no committed version folder")
        before = self.current(project)
        announced = version if announce else self.announced(project)
        write_json_atomically(self.project_dir(project) / POINTER,
                              {"version": version, "promoted_at": utc_now(), "announced": announced})
        # the version served before is recorded too: a writer killed between the two writes left it out
        history = self._promotion_history(project)
        missing = [name for name in dict.fromkeys([before, version]) if name and name not in history]
        if missing:
            write_json_atomically(self.project_dir(project) / PROMOTIONS, [*history, *missing])

    def announce(self, project: str, version: str) -> bool:
        """Make ``version`` the announced one (what answers Label Studio), if it is still the promoted one; False
        when a newer promotion came meanwhile (that one is announced by its own publishing)."""
        with self._lock:
            data = read_json(self.project_dir(project) / POINTER)
            if not isinstance(data, dict) or data.get("version") != version:
                return False
            if data.get("announced") != version:
                write_json_atomically(self.project_dir(project) / POINTER,
                                      {**data, "announced": version, "announced_at": utc_now()})
            return True

    def prune(self, project: str, keep_promoted: int | None) -> list[str]:
        """Delete the versions that are kept no longer: all but the promoted and the announced one, the last
        ``keep_promoted`` promoted ones and the newest one that was never promoted (None keeps everything). Returns
        the deleted."""
        if keep_promoted is None:
            return []
        names = self.version_names(project)
        promoted = [name for name in self._promotion_history(project) if name in names]
        never = [name for name in names if name not in promoted]
        keep = {self.current(project), self.announced(project), *promoted[-keep_promoted:], *never[-1:]}
        removed = []
        for name in names:
            if name not in keep:
                # renamed first, so no reader ever sees half a version; the rest is a leftover at worst
                doomed = self.project_dir(project) / f"{TEMPORARY_PREFIX}{_writer_tag()}-deleting-{name}"
                os.rename(self.version_dir(project, name), doomed)
                shutil.rmtree(doomed, ignore_errors=True)
                removed.append(name)
        return removed

    # --- reading ------------------------------------------------------------------------------------------
    def current(self, project: str) -> str | None:
        """The version served for ``project``, or None before its first promotion."""
        data = read_json(self.project_dir(project) / POINTER)
        version = data.get("version") if isinstance(data, dict) else None
        if isinstance(version, str) and _VERSION.match(version) and self.version_dir(project, version).is_dir():
            return version
        return None

    def announced(self, project: str) -> str | None:
        """The version that answers Label Studio (``/setup``, ``/predict``): the promoted one once its predictions
        were published (or at once with publishing off), None before. A pointer written before announcing existed
        announces its promoted version."""
        data = read_json(self.project_dir(project) / POINTER)
        if not isinstance(data, dict):
            return None
        version = data.get("announced", data.get("version"))
        if isinstance(version, str) and _VERSION.match(version) and self.version_dir(project, version).is_dir():
            return version
        return None

    def announcement_due(self, project: str) -> str | None:
        """The promoted version when it is not announced yet (its publishing has not finished), else None."""
        current = self.current(project)
        return current if current is not None and current != self.announced(project) else None

    def promoted(self, project: str) -> set[str]:
        """The versions that have served ``project`` (the pointer's record, not a manifest's intent)."""
        current = self.current(project)
        return set(self._promotion_history(project)) | ({current} if current else set())

    def _promotion_history(self, project: str) -> list[str]:
        data = read_json(self.project_dir(project) / PROMOTIONS)
        return [name for name in data if isinstance(name, str) and _VERSION.match(name)] if isinstance(data, list) else []

    def record_publishing(self, project: str, record: dict[str, Any]) -> None:
        write_json_atomically(self.project_dir(project) / PUBLISHED, record)

    def publishing(self, project: str) -> dict[str, Any]:
        """The record of the project's last publishing (``version``, ``state``, counts); {} before any."""
        data = read_json(self.project_dir(project) / PUBLISHED)
        return data if isinstance(data, dict) else {}

    def record_review(self, project: str, record: dict[str, Any]) -> None:
        write_json_atomically(self.project_dir(project) / REVIEW, record)

    def review(self, project: str) -> dict[str, Any]:
        """The project's last review record (``tasks``, ``agreement``, ...); {} before any."""
        data = read_json(self.project_dir(project) / REVIEW)
        return data if isinstance(data, dict) else {}

    def disk_bytes(self, project: str) -> int:
        """Bytes the project's folder holds (versions, pointer, leftovers)."""
        total = 0
        for path in self.project_dir(project).rglob("*"):
            try:
                total += path.stat().st_size if path.is_file() else 0
            except OSError:
                continue
        return total

    def problems(self, project: str) -> list[str]:
        """What is wrong with the project's part of the store, in words a user can act on (empty when nothing)."""
        folder = self.project_dir(project)
        pointer = folder / POINTER
        found = []
        try:
            if folder.exists():
                list(folder.iterdir())
        except OSError as error:
            return [f"the model store folder of project {project} cannot be read ({error.strerror}): check the "
                    "permissions of MODEL_DIR"]
        if pointer.exists():
            data = read_json(pointer)
            version = data.get("version") if isinstance(data, dict) else None
            if not isinstance(version, str) or not _VERSION.match(version):
                found.append(f"{POINTER} of project {project} cannot be read: no model serves it; promote a version "
                             "again (or delete the file) to repair it")
            elif not self.version_dir(project, version).is_dir():
                found.append(f"{POINTER} of project {project} names {version}, which is not in the store: no model "
                             "serves it; train again to repair it")
        return found

    def pointer_stamp(self, project: str) -> tuple[int, int] | None:
        """A cheap fingerprint of the pointer file (inode, mtime): it changes whenever a version is promoted."""
        try:
            stat = (self.project_dir(project) / POINTER).stat()
        except (OSError, ValueError):
            return None
        return (stat.st_ino, stat.st_mtime_ns)

    def manifest(self, project: str, version: str) -> Manifest | None:
        data = read_json(self.version_dir(project, version) / MANIFEST)
        return Manifest.from_dict(data) if isinstance(data, dict) else None

    def versions(self, project: str) -> list[VersionInfo]:
        """Every committed version of ``project``, oldest first, with time, F1 and flags."""
        current = self.current(project)
        promoted = self.promoted(project)
        infos = []
        for name in self.version_names(project):
            manifest = self.manifest(project, name)
            if manifest is None:
                continue
            infos.append(
                VersionInfo(
                    version=name,
                    created_at=manifest.created_at,
                    f1=manifest.f1,
                    promoted=name in promoted,
                    current=name == current,
                    train_size=manifest.train_size,
                    validation_size=manifest.validation_size,
                )
            )
        return infos
