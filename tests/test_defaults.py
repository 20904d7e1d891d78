"""The zero-config defaults: regression in target units, name-like columns as ids, a split without test rows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from .conftest import PENGUINS, bm, read_json

# under `make test` (pytest -n 2 --dist loadgroup) one worker runs this module, so its module fixtures are made once
pytestmark = pytest.mark.xdist_group("defaults")


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    """Penguin body mass (grams, mean ~4200, std ~800) from the other columns."""
    root = tmp_path_factory.mktemp("mass")
    bm("preprocess", PENGUINS, "--target", "body_mass_g", "--out", root / "prep")
    bm("train", root / "prep", "--out", root / "run", "--set", "train.epochs=40")
    return root


def test_regression_learns_a_standardized_target_and_predicts_in_its_units(regression_run):
    from bigmodel_cli.folders import load_network

    schema = read_json(regression_run / "prep" / "schema.json")
    train = pd.read_parquet(regression_run / "prep" / "train.parquet")["body_mass_g"]
    assert schema["target_mean"] == pytest.approx(train.mean()) and schema["target_std"] == pytest.approx(
        train.std(ddof=0))
    last = load_network(regression_run / "run" / "model.keras").get_layer("target_units")  # before the members' mean
    assert type(last).__name__ == "Rescaling" and last.scale == pytest.approx(schema["target_std"])
    doc = json.loads(bm("evaluate", regression_run / "run", "--json", "--no-plots").stdout)
    test = pd.read_parquet(regression_run / "prep" / "test.parquet")["body_mass_g"]
    # in grams, and far better than predicting the mean (40 epochs of raw-unit fitting stay near the mean's RMSE)
    assert doc["metrics"]["rmse"] < 0.6 * test.std() and doc["metrics"]["r2"] > 0.6
    bm("predict", regression_run / "run", PENGUINS, "--out", regression_run / "p.csv")
    pred = pd.read_csv(regression_run / "p.csv")["predicted_body_mass_g"]
    assert 2500 < pred.min() and pred.max() < 7000  # grams, not standardized units


def test_regression_export_is_in_target_units(regression_run):
    out = regression_run / "export"
    doc = json.loads(bm("export", regression_run / "run", "--out", out, "--json").stdout)
    assert doc["passed"] and doc["max_abs_diff"]["savedmodel"] <= 1e-3  # grams: float32 at ~4000
    from bigmodel_cli.keras_env import import_keras, tensorflow

    import_keras()
    tf = tensorflow()
    schema = read_json(out / "schema.json")
    rows = pd.read_csv(PENGUINS).dropna().head(20)
    serve = tf.saved_model.load(str(out / "savedmodel")).signatures["serving_default"]
    inputs = {f["key"]: tf.constant(rows[[f["name"]]].to_numpy(dtype="float32") if f["kind"] == "numeric"
                                    else rows[[f["name"]]].astype(str).to_numpy()) for f in schema["features"]}
    got = serve(**inputs)["output_0"].numpy()[:, 0]
    assert np.abs(got - rows["body_mass_g"]).mean() < 500  # raw-unit predictions from the exported model


def test_target_scaling_none_fits_raw_units(tmp_path):
    bm("preprocess", PENGUINS, "--target", "body_mass_g", "--out", tmp_path / "prep",
       "--set", "preprocess.target_scaling=none")
    assert read_json(tmp_path / "prep" / "schema.json")["target_std"] is None
    bm("train", tmp_path / "prep", "--out", tmp_path / "run", "--set", "train.epochs=2")
    from bigmodel_cli.folders import load_network

    assert "Rescaling" not in [type(layer).__name__ for layer in load_network(tmp_path / "run" / "model.keras").layers]


def test_name_like_column_is_an_id_not_text(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    first = rng.choice(["John", "Mary", "Anna", "Karl", "Ida", "Olof", "Emil", "Rosa"], n)
    title = rng.choice(["Mr.", "Mrs.", "Miss", "Master"], n)
    df = pd.DataFrame({"name": [f"Surname{i}, {t} {f}" for i, (t, f) in enumerate(zip(title, first, strict=True))],
                       "age": rng.integers(1, 80, n), "label": rng.choice(["a", "b"], n)})
    df.to_csv(tmp_path / "people.csv", index=False)
    r = bm("preprocess", tmp_path / "people.csv", "--target", "label", "--out", tmp_path / "prep", "--json")
    doc = json.loads(r.stdout)
    assert doc["columns"]["name"]["kind"] == "id"
    assert any("'name' has a distinct short value" in n for n in doc["notes"])
    assert [f["name"] for f in read_json(tmp_path / "prep" / "schema.json")["features"]] == ["age"]


def test_split_without_test_rows(tmp_path):
    """data.split.test 0: every row trains or validates; evaluate asks for the user's file; export checks on val."""
    bm("preprocess", PENGUINS, "--target", "species", "--out", tmp_path / "prep",
       "--set", "data.split={train: 0.85, val: 0.15, test: 0}")
    assert read_json(tmp_path / "prep" / "report.json")["splits"]["test"] == 0
    bm("train", tmp_path / "prep", "--out", tmp_path / "run", "--set", "train.epochs=3")
    r = bm("evaluate", tmp_path / "run", code=2)
    assert "test split of its prep folder is empty" in r.stderr and "--data" in r.stderr
    doc = json.loads(bm("evaluate", tmp_path / "run", "--data", PENGUINS, "--json", "--no-plots").stdout)
    assert doc["data"]["rows"] == 344
    doc = json.loads(bm("export", tmp_path / "run", "--out", tmp_path / "export", "--json").stdout)
    assert doc["passed"] and read_json(tmp_path / "export" / "manifest.json")["parity"]["split"] == "val"


def test_refit_trains_on_train_and_val_for_the_chosen_epochs(penguins_prep, tmp_path):
    common = ["--set", "train.epochs=6", "--set", "train.early_stopping.patience=2"]
    bm("train", penguins_prep, "--out", tmp_path / "plain", *common, "--set", "train.refit=false")
    bm("train", penguins_prep, "--out", tmp_path / "refit", *common, "--set", "train.refit=true")
    plain, refit = read_json(tmp_path / "plain" / "manifest.json"), read_json(tmp_path / "refit" / "manifest.json")
    assert refit["refit"] is True and plain["refit"] is False and refit["best_epoch"] == plain["best_epoch"]
    from bigmodel_cli.folders import load_network

    a, b = (load_network(tmp_path / r / "model.keras").get_weights() for r in ("plain", "refit"))
    assert max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True)) > 1e-3  # another network
    # the same command twice: the same refitted model
    bm("train", penguins_prep, "--out", tmp_path / "again", *common, "--set", "train.refit=true")
    again = load_network(tmp_path / "again" / "model.keras").get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(b, again, strict=True))


def test_a_reset_network_trains_as_a_fresh_one(penguins_prep):
    """The refit reuses the first fit's network (its train step is traced already): model.reset puts back the
    weights, the dropout layers' random states and the optimizer's moments and step count, so a second fit gives
    bit for bit the first one's weights."""
    from bigmodel_cli import model
    from bigmodel_cli.config import load_config
    from bigmodel_cli.folders import open_prep
    from bigmodel_cli.keras_env import import_keras

    import_keras(0)
    cfg = load_config(None, ["train.batch_size=16", "model.dropout=0.3"])
    schema = open_prep(penguins_prep).schema
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 9)).astype("float32"), rng.integers(0, 3, 64)
    net = model.build(cfg, schema, 9)
    initial = model.initial_state(net)
    start = net.get_weights()
    net.fit(x, y, epochs=2, verbose=0, shuffle=False)
    first = net.get_weights()
    model.reset(net, initial)
    assert all(np.array_equal(a, b) for a, b in zip(start, net.get_weights(), strict=True))
    net.fit(x, y, epochs=2, verbose=0, shuffle=False)
    assert all(np.array_equal(a, b) for a, b in zip(first, net.get_weights(), strict=True))
    assert not np.array_equal(first[0], start[0])


def test_reduce_lr_on_plateau_lowers_the_learning_rate(penguins_prep, tmp_path):
    bm("train", penguins_prep, "--out", tmp_path / "run", "--set", "train.epochs=8",
       "--set", "train.reduce_lr={factor: 0.5, patience: 0}", "--set", "train.early_stopping.monitor=val_accuracy",
       "--set", "train.early_stopping.patience=20")
    h = pd.read_csv(tmp_path / "run" / "history.csv")
    assert "learning_rate" in h and h["learning_rate"].iloc[-1] < h["learning_rate"].iloc[0]


def test_dropout_follows_each_dense_for_classification_only(regression_run, penguins_run):
    """model.dropout auto: a Dropout(0.15) after each Dense of the default layers for classification, none for
    regression or where model.layers has a Dropout of its own; a number applies to every task."""
    from bigmodel_cli.config import load_config
    from bigmodel_cli.folders import load_network
    from bigmodel_cli.model import dropout
    from bigmodel_cli.schema import Schema

    def rates(run):
        return [layer.rate for layer in load_network(run / "model.keras").layers if type(layer).__name__ == "Dropout"]

    assert rates(penguins_run) == [0.15, 0.15] and rates(regression_run / "run") == []
    classes = Schema.from_dict(read_json(penguins_run / "schema.json"))
    mass = Schema.from_dict(read_json(regression_run / "prep" / "schema.json"))
    assert dropout(load_config(None, ["model.dropout=0.3"]), mass) == 0.3
    own = load_config(None, ["model.layers=[{type: Dense, units: 8}, {type: Dropout, rate: 0.5}]"])
    assert dropout(own, classes) == 0.0 and dropout(load_config(), classes) == 0.15
