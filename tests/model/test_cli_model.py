"""The model commands: `python -m backend train | evaluate | predict`, called in-process through cli.main."""
import io
import json

import pytest

from backend.cli import main
from tests.helpers.synthetic import restaurant_examples, write_bio


@pytest.fixture(scope="module")
def bio_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    train, heldout = folder / "train.bio", folder / "heldout.bio"
    write_bio(restaurant_examples(120, seed=21), train)
    write_bio(restaurant_examples(30, seed=22), heldout)
    return train, heldout


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory, bio_files, tiny_base_model):
    out = tmp_path_factory.mktemp("cli") / "model"
    code = main(["train", "--data", str(bio_files[0]), "--base-model", str(tiny_base_model), "--out", str(out),
                 "--epochs", "2", "--lr", "3e-3", "--batch-size", "16", "--seed", "1", "--threads", "1",
                 "--train-embeddings", "--frozen-layers", "1"])
    assert code == 0
    return out


def test_train_writes_a_version_with_the_requested_recipe_in_its_metrics(cli_model):
    metrics = json.loads((cli_model / "metrics.json").read_text())
    assert metrics["config"]["epochs"] == 2 and metrics["config"]["lr"] == 3e-3 and metrics["config"]["seed"] == 1
    assert metrics["config"]["freeze_embeddings"] is False
    assert metrics["config"]["frozen_layers"] == 1
    assert metrics["train_size"] + metrics["validation_size"] == 120
    assert (cli_model / "model.safetensors").is_file()


def test_train_takes_labels_and_their_order_from_a_label_config(tmp_path, bio_files, tiny_base_model):
    config = tmp_path / "config.xml"
    config.write_text('<View><Labels name="label" toName="text"><Label value="Price"/><Label value="Dish"/>'
                      '</Labels><Text name="text" value="$text"/></View>')
    out = tmp_path / "m"
    assert main(["train", "--data", str(bio_files[1]), "--base-model", str(tiny_base_model), "--out", str(out),
                 "--epochs", "1", "--threads", "1", "--label-config", str(config)]) == 0
    id2label = json.loads((out / "config.json").read_text())["id2label"]  # the model's own label map
    assert [id2label[str(i)] for i in range(len(id2label))] == ["O", "B-Price", "I-Price", "B-Dish", "I-Dish"]


def test_evaluate_json_prints_one_object_with_overall_precision_recall_f1(cli_model, bio_files, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--model", str(cli_model), "--data", str(bio_files[1]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"precision", "recall", "f1"} <= set(result["overall"])
    assert result["overall"]["support"] > 30


def test_evaluate_prints_a_per_entity_table(cli_model, bio_files, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--model", str(cli_model), "--data", str(bio_files[1])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["entity", "precision", "recall", "f1", "support"]
    assert lines[-1].startswith("overall")


def test_predict_reads_lines_and_writes_one_json_line_of_spans_each(cli_model, monkeypatch, capsys):
    texts = ["is there a cheap thai restaurant near me", "", "does olive garden have wifi"]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(texts) + "\n"))
    capsys.readouterr()
    assert main(["predict", "--model", str(cli_model), "--batch-size", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["text"] for row in rows] == texts
    assert rows[1]["spans"] == []
    for row in rows:
        for span in row["spans"]:
            assert row["text"][span["start"]:span["end"]] == span["text"]
            assert 0 <= span["score"] <= 1


def test_train_without_data_files_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--out", "x"])
    assert "--data" in capsys.readouterr().err


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error: ")]
    return line


def test_bad_input_is_one_error_line_naming_it_not_a_traceback(tmp_path, bio_files, tiny_base_model, capsys):
    empty, only_o = tmp_path / "empty.bio", tmp_path / "only_o.bio"
    empty.write_text("")
    only_o.write_text("O\tcheap\nO\tfood\n")
    base = ["--base-model", str(tiny_base_model), "--out", str(tmp_path / "m")]
    assert main(["train", "--data", str(empty), *base]) == 1
    assert "empty.bio: the file is empty" in _one_error_line(capsys)
    assert main(["train", "--data", str(tmp_path / "missing.bio"), *base]) == 1
    assert "missing.bio" in _one_error_line(capsys)
    assert main(["train", "--data", str(only_o), *base]) == 1  # a model that can only say O is refused
    assert "no entity" in _one_error_line(capsys)
    assert main(["train", "--data", str(bio_files[1]), "--base-model", str(tmp_path / "no-such-model"),
                 "--out", str(tmp_path / "m")]) == 1
    assert "no-such-model" in _one_error_line(capsys)
    (tmp_path / "file").write_text("in the way")
    assert main(["train", "--data", str(bio_files[1]), "--base-model", str(tiny_base_model),
                 "--out", str(tmp_path / "file")]) == 1  # refused before training, not after
    assert "in the way" in _one_error_line(capsys)
    assert main(["evaluate", "--model", str(tmp_path), "--data", str(bio_files[1])]) == 1
    assert "not a saved model version" in _one_error_line(capsys)
    assert not (tmp_path / "m").exists()


def test_from_overrides_the_detected_format(cli_model, bio_files, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--model", str(cli_model), "--data", str(bio_files[1]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["overall"]["support"] > 0
    # read as CoNLL, the last column (the word) is taken for the tag: nothing is an entity any more
    assert main(["evaluate", "--model", str(cli_model), "--data", str(bio_files[1]), "--from", "conll2003", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["overall"]["support"] == 0 and "is not O, B-x or I-x" in captured.err


def test_evaluate_warns_about_labels_the_model_does_not_know(cli_model, tmp_path, capsys):
    data = tmp_path / "other.bio"
    data.write_text("B-PER\tangela\nI-PER\tmerkel\nO\tate\nB-Dish\tpizza\n")
    capsys.readouterr()
    assert main(["evaluate", "--model", str(cli_model), "--data", str(data), "--json"]) == 0
    assert "does not know (they count as missed): PER" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--epochs", "--batch-size"])
def test_zero_epochs_or_batch_size_is_refused_by_the_parser(option, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", "x.bio", "--out", "x", option, "0"])
    assert "not a whole number >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_train_with_processes_runs_one_training_as_that_many(tmp_path, bio_files, tiny_base_model):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "two"
    done = subprocess.run(
        [sys.executable, "-m", "backend", "train", "--data", str(bio_files[0]), "--base-model", str(tiny_base_model),
         "--out", str(out), "--epochs", "2", "--lr", "3e-3", "--batch-size", "16", "--threads", "1",
         "--train-embeddings", "--precision", "fp32", "--processes", "2"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["processes"] == 2 and metrics["optimizer_steps"] == 16  # 2 epochs of 120 / 16
    assert done.stdout.startswith(f"saved {out}")
    assert done.stderr.count("LOAD REPORT") <= 1  # the main process says what loading the base gave; the other not


def test_a_training_process_killed_under_processes_2_ends_with_one_error_line_naming_it(tmp_path, bio_files,
                                                                                       tiny_base_model, capsys):
    import os
    import signal
    import threading

    import psutil

    from backend.model.ranks import process_title
    from tests.helpers.waits import wait_for

    def rank_1():
        for child in psutil.Process().children(recursive=True):
            try:
                if child.name() == process_title(1, 2):
                    return child
            except psutil.NoSuchProcess:
                pass
        return None

    def kill_rank_1():
        if wait_for(lambda: rank_1() is not None, "child event"):
            os.kill(rank_1().pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_rank_1)
    killer.start()
    out = tmp_path / "model"
    code = main(["train", "--data", str(bio_files[0]), "--base-model", str(tiny_base_model), "--out", str(out),
                 "--processes", "2", "--epochs", "400", "--lr", "3e-3", "--threads", "1", "--precision", "fp32"])
    killer.join()
    assert code == 1
    line = _one_error_line(capsys)
    assert "training process 1 of 2 (rank 1) was killed by signal 9 (SIGKILL)" in line, line
    assert not (out / "model.safetensors").exists()
