"""Every training knob is declared once (a TrainingConfig field with its help, check and environment name): the
CLI flags and the TRAIN_* settings are generated from it, and agree."""
import argparse
from dataclasses import fields

import pytest

from backend.model.config import (
    DEFAULT_BASE_MODEL, KnobError, TrainingConfig, add_arguments, environment_name, flag_name, from_arguments,
    from_environment,
)

# one valid text per knob, different from its default
VALID = {"base_model": "some/model", "epochs": "4", "lr": "3e-5", "batch_size": "8", "small_data_batch_size": "4",
         "max_batch_tokens": "512", "small_data_size": "100", "max_length": "64", "seed": "7", "device": "cpu",
         "precision": "bf32", "carve_fraction": "0.25", "early_stopping_patience": "0", "threads": "2",
         "weight_decay": "0.1", "warmup_ratio": "0.2", "default_epochs": "3", "min_steps": "10", "max_epochs": "9",
         "freeze_embeddings": "false", "dropout": "0.2", "frozen_layers": "2", "head_lr": "1e-3",
         "eval_batch_size": "16", "processes": "2"}


def _parser():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser


def test_every_knob_has_help_a_flag_and_a_test_value():
    assert {f.name for f in fields(TrainingConfig)} == set(VALID)
    help_text = _parser().format_help()
    for knob in fields(TrainingConfig):
        assert knob.metadata["help"] and flag_name(knob) in help_text


def test_every_knob_but_the_base_model_is_read_from_its_train_variable():
    environ = {environment_name(k): VALID[k.name] for k in fields(TrainingConfig) if environment_name(k)}
    assert "TRAIN_EPOCHS" in environ and "TRAIN_CARVE_FRACTION" in environ
    assert all(name.startswith("TRAIN_") for name in environ) and len(environ) == len(VALID) - 1
    config = from_environment(environ).config(DEFAULT_BASE_MODEL)
    for knob in fields(TrainingConfig):
        if knob.name != "base_model":
            assert getattr(config, knob.name) != knob.default, knob.name


def test_the_flags_and_the_variables_give_the_same_recipe():
    argv = []
    for knob in fields(TrainingConfig):
        if knob.name == "freeze_embeddings":
            argv.append("--no-freeze-embeddings")
        else:
            argv += [flag_name(knob), VALID[knob.name]]
    from_flags = from_arguments(_parser().parse_args(argv))
    environ = {environment_name(k): VALID[k.name] for k in fields(TrainingConfig) if environment_name(k)}
    assert from_flags == from_environment(environ).config("some/model")


def test_flags_left_out_keep_the_defaults():
    assert from_arguments(_parser().parse_args([])) == TrainingConfig()
    assert TrainingConfig().base_model == DEFAULT_BASE_MODEL


@pytest.mark.parametrize("name, text", [("TRAIN_EPOCHS", "0"), ("TRAIN_LR", "nan"), ("TRAIN_CARVE_FRACTION", "1"),
                                        ("TRAIN_PRECISION", "int8"), ("TRAIN_DEVICE", "gpu"),
                                        ("TRAIN_FREEZE_EMBEDDINGS", "maybe"), ("TRAIN_WEIGHT_DECAY", "-1")])
def test_a_bad_value_names_the_variable_and_what_it_expects(name, text):
    with pytest.raises(KnobError, match=f"{name}='{text}' is not valid: expected"):
        from_environment({name: text})


def test_a_bad_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--epochs", "zero"])
    assert "--epochs" in capsys.readouterr().err
