"""The model store: numbered versions appear whole, the pointer swaps atomically, a restart serves the last
promoted version, and a killed training leaves nothing half-written."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backend.model.metrics import Scores
from backend.shared import store as store_module
from backend.shared.store import Manifest, ModelStore


def _train_into(store: ModelStore, project: str, f1: float, promote: bool = True) -> str:
    folder = store.new_temporary_dir(project)
    (folder / "model.safetensors").write_bytes(b"weights")
    manifest = Manifest(project=project, base_model="tiny", labels=["Dish"], train_size=8, validation_size=2,
                        scores=Scores.from_dict({"overall": {"precision": f1, "recall": f1, "f1": f1, "support": 3}}),
                        promoted=promote)
    version = store.commit(project, folder, manifest)
    if promote:
        store.promote(project, version)
    return version


def test_versions_are_numbered_from_v1_and_hold_their_files(tmp_path):
    store = ModelStore(tmp_path)
    assert store.current("3") is None
    assert [_train_into(store, "3", 0.5), _train_into(store, "3", 0.6)] == ["v1", "v2"]
    assert (store.version_dir("3", "v2") / "model.safetensors").read_bytes() == b"weights"
    assert store.manifest("3", "v2").version == "v2"
    assert store.current("3") == "v2"


def test_a_version_that_is_not_promoted_is_kept_but_not_served(tmp_path):
    store = ModelStore(tmp_path)
    _train_into(store, "3", 0.7)
    _train_into(store, "3", 0.4, promote=False)
    assert store.current("3") == "v1"
    listed = [(v.version, v.f1, v.promoted, v.current) for v in store.versions("3")]
    assert listed == [("v1", 0.7, True, True), ("v2", 0.4, False, False)]


def test_a_restarted_store_serves_the_last_promoted_version(tmp_path):
    store = ModelStore(tmp_path)
    _train_into(store, "5", 0.5)
    _train_into(store, "5", 0.6)
    _train_into(store, "5", 0.1, promote=False)
    assert ModelStore(tmp_path).current("5") == "v2"


def test_projects_are_kept_apart(tmp_path):
    store = ModelStore(tmp_path)
    _train_into(store, "1", 0.5)
    _train_into(store, "2", 0.5)
    _train_into(store, "2", 0.6)
    assert (store.current("1"), store.current("2")) == ("v1", "v2")
    assert store.projects() == ["1", "2"]


def test_promotion_changes_the_pointer_stamp(tmp_path):
    store = ModelStore(tmp_path)
    assert store.pointer_stamp("3") is None
    _train_into(store, "3", 0.5)
    before = store.pointer_stamp("3")
    _train_into(store, "3", 0.6)
    assert store.pointer_stamp("3") not in (None, before)


def test_a_crash_while_writing_the_pointer_keeps_the_old_pointer(tmp_path, monkeypatch):
    store = ModelStore(tmp_path)
    _train_into(store, "3", 0.5)
    _train_into(store, "3", 0.6, promote=False)

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(store_module.os, "replace", crash)
    with pytest.raises(OSError):
        store.promote("3", "v2")
    monkeypatch.undo()
    assert store.current("3") == "v1"
    assert not list(store.project_dir("3").glob(".*.part")), "the partial pointer file is removed"


def test_a_training_killed_mid_save_leaves_only_a_temporary_folder_that_start_up_removes(tmp_path):
    store = ModelStore(tmp_path)
    _train_into(store, "3", 0.5)
    script = textwrap.dedent(f"""
        import sys, time
        from backend.shared.store import ModelStore
        folder = ModelStore({str(tmp_path)!r}).new_temporary_dir("3")
        (folder / "model.safetensors").write_bytes(b"half")
        print("saving", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parents[2])
    try:
        assert child.stdout.readline().strip() == "saving"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
    restarted = ModelStore(tmp_path)
    assert restarted.current("3") == "v1" and restarted.version_names("3") == ["v1"]
    removed = restarted.clean_temporary()
    assert len(removed) == 1 and not removed[0].exists()
    assert restarted.current("3") == "v1"


def test_commit_never_overwrites_a_version_that_appeared_meanwhile(tmp_path, monkeypatch):
    store = ModelStore(tmp_path)
    _train_into(store, "3", 0.5)
    folder = store.new_temporary_dir("3")
    (folder / "model.safetensors").write_bytes(b"new")
    # another writer committed v2 between our listing and our rename
    real_names = store.version_names
    monkeypatch.setattr(store, "version_names", lambda project: real_names(project)[:1])
    store.version_dir("3", "v2").mkdir()
    (store.version_dir("3", "v2") / "other").write_text("theirs")
    assert store.commit("3", folder, Manifest(project="3", base_model="tiny", labels=["Dish"])) == "v3"
    assert (store.version_dir("3", "v2") / "other").read_text() == "theirs"


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", "."])
def test_a_project_id_cannot_escape_the_store(tmp_path, bad):
    with pytest.raises(ValueError):
        ModelStore(tmp_path).project_dir(bad)


def test_promoting_a_missing_version_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="v9"):
        ModelStore(tmp_path).promote("3", "v9")


def test_start_up_cleaning_leaves_a_training_in_progress_alone(tmp_path):
    store = ModelStore(tmp_path)
    _train_into(store, "3", 0.5)
    # a folder being written by another live process (our parent stands in for it)
    busy = store.project_dir("3") / f".tmp-{os.getppid()}-abc"
    busy.mkdir()
    assert store.clean_temporary() == [] and busy.exists()


def test_retention_keeps_the_serving_version_the_last_promoted_and_the_newest_run(tmp_path):
    store = ModelStore(tmp_path)
    for promote in (True, True, False, True, False, True, True, False, False):
        _train_into(store, "3", 0.5, promote=promote)
    # promoted: v1 v2 v4 v6 v7 (v7 serves); never promoted: v3 v5 v8 v9
    assert store.prune("3", keep_promoted=3) == ["v1", "v2", "v3", "v5", "v8"]
    assert store.version_names("3") == ["v4", "v6", "v7", "v9"] and store.current("3") == "v7"
    assert not list(store.project_dir("3").glob(".tmp-*"))
    assert store.prune("3", keep_promoted=None) == [] and len(store.version_names("3")) == 4
    assert store.disk_bytes("3") >= 4 * len(b"weights")


def test_promoted_is_what_the_pointer_did_not_what_a_manifest_intended(tmp_path):
    store = ModelStore(tmp_path)
    _train_into(store, "3", 0.5)
    # a run killed between commit and promotion: its manifest says promoted, the pointer never moved
    folder = store.new_temporary_dir("3")
    store.commit("3", folder, Manifest(project="3", base_model="tiny", labels=["Dish"], promoted=True))
    assert [(v.version, v.promoted, v.current) for v in store.versions("3")] == [("v1", True, True),
                                                                                 ("v2", False, False)]
    assert store.promoted("3") == {"v1"}


def test_a_temporary_folder_of_a_dead_writer_is_removed_even_if_its_pid_came_back(tmp_path):
    store = ModelStore(tmp_path)
    _train_into(store, "3", 0.5)
    # the parent process is alive, but it is not the writer: the start time in the name is not the parent's
    reused = store.project_dir("3") / f".tmp-{os.getppid()}.1-abc"
    reused.mkdir()
    assert store.clean_temporary() == [reused] and not reused.exists()


def test_on_a_shared_model_dir_a_host_removes_only_its_own_dead_writers_folders(tmp_path):
    from backend.shared.store import _host_tag

    store = ModelStore(tmp_path)
    _train_into(store, "3", 0.5)
    # pid 1 runs on every host; a folder from another host may belong to a training running there right now
    other_host = store.project_dir("3") / ".tmp-999999.5.0badc0de-abc"
    ours_dead = store.project_dir("3") / f".tmp-999999.5.{_host_tag()}-abc"
    other_host.mkdir()
    ours_dead.mkdir()
    assert store.clean_temporary() == [ours_dead] and other_host.exists()
    assert store.new_temporary_dir("3").name.split("-")[1].endswith(_host_tag())


def test_an_unreadable_pointer_is_named_as_a_problem(tmp_path):
    store = ModelStore(tmp_path)
    _train_into(store, "3", 0.5)
    assert store.problems("3") == []
    (store.project_dir("3") / "current.json").write_text("{not json")
    assert store.current("3") is None
    [problem] = store.problems("3")
    assert "current.json" in problem and "no model serves it" in problem
