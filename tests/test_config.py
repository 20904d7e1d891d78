"""Config: defaults, --set, and one-line errors that name the key."""

from __future__ import annotations

import pytest

from bigmodel_cli.config import Config, load_config
from bigmodel_cli.errors import ConfigError

from .conftest import PENGUINS, bm


def test_zero_config_defaults():
    cfg = load_config()
    assert cfg == Config()
    # patience auto (#28): 100 steps of batch 128 within 10..30 epochs: 240 rows (2 steps an epoch) get 30
    assert cfg.train.budget(240) == (100, 30) and cfg.train.budget(2_000) == (100, 10) and cfg.data.split.train == 0.8
    auto = load_config(None, ["train.epochs=auto", "train.early_stopping.patience=auto", "train.batch_size=32"]).train
    assert auto.budget(240) == (250, 13) and auto.budget(90) == (500, 30) and auto.budget(100_000) == (100, 10)
    assert cfg.model.layers == [{"type": "Dense", "units": 128, "activation": "relu"}] * 2
    # the #28 defaults: piecewise-linear bins, an 8-member ensemble, batch 128 at lr 2e-3, Adam's beta_2 0.95
    assert (cfg.preprocess.numeric_bins, cfg.model.ensemble, cfg.train.batch_size) == (16, "auto", 128)
    assert (cfg.train.optimizer.learning_rate, cfg.train.optimizer.beta_2) == (0.002, "auto")


def test_set_overrides_nested_keys_and_list_items(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\nmodel:\n  layers:\n    - {type: Dense, units: 8}\n")
    cfg = load_config(path, ["train.optimizer.learning_rate=0.01", "model.layers.0.units=16", "seed=3"])
    assert cfg.train.epochs == 7
    assert cfg.train.optimizer.learning_rate == 0.01
    assert cfg.model.layers[0]["units"] == 16 and cfg.seed == 3


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("train:\n  epocs: 3\n", "unknown key 'train.epocs'; did you mean 'epochs'?"),
        ("train:\n  epochs: many\n", "train.epochs"),
        ("train:\n  epochs: 0\n", "train.epochs: Input should be greater than or equal to 1, got 0"),
        ("train:\n  optimizer: {learning_rate: -1}\n", "train.optimizer.learning_rate"),
        ("data:\n  split: {train: 0.5, val: 0.1, test: 0.1}\n", "data.split: train + val + test must sum to 1"),
        ("train: {epochs: 1}\ntrain: {epochs: 2}\n", "duplicate key 'train'"),
        ("seed: !!python/object/apply:os.system ['true']\n", "invalid YAML"),
        ("- just\n- a list\n", "top level must be a mapping"),
        ("train: [\n", "invalid YAML (line"),
    ],
)
def test_config_errors_name_the_key(tmp_path, yaml_text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert needle in str(e.value)
    assert str(path) in str(e.value)


def test_alias_bomb_is_rejected_quickly(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="alias"):
        load_config(path)


def test_bad_set_syntax():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["train.epochs"])


def test_cli_unknown_key_is_one_line_exit_2(penguins_prep, tmp_path):
    r = bm("train", penguins_prep, "--out", tmp_path / "run", "--set", "train.epocs=3", code=2)
    assert r.stderr.strip().count("\n") == 0
    assert "train.epocs" in r.stderr and "epochs" in r.stderr
    assert not (tmp_path / "run" / "model.keras").exists()


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.layers=[{type: Dens, units: 4}]", "model.layers[0]: unknown layer type 'Dens'; did you mean Dense?"),
        ("model.layers=[{type: Dense}]", "model.layers[0] (Dense)"),
        ("model.layers=[{type: Lambda}]", "Lambda"),
        ("model.layers=[{units: 4}]", "needs a 'type'"),
        ("train.optimizer.name=adamm", "unknown optimizer 'adamm'; did you mean adam"),
        ("train.loss=binary_crossentropyy", "train.loss: unknown loss"),
        ("model.output_activation=softmaxx", "unknown activation 'softmaxx'"),
    ],
)
def test_cli_bad_model_names(penguins_prep, tmp_path, override, needle):
    r = bm("train", penguins_prep, "--out", tmp_path / "run", "--set", override, "--set", "train.epochs=1", code=2)
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_config_file_is_an_error(tmp_path, text):
    """A named but empty config is a failed write or the wrong file, not 'all defaults'."""
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="the config file is empty; to use the defaults, omit --config"):
        load_config(path)
    r = bm("preprocess", PENGUINS, "--target", "species", "--config", path, "--out",
           tmp_path / "prep", code=2)
    assert "empty.yaml: the config file is empty" in r.stderr and not (tmp_path / "prep").exists()
