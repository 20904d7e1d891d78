"""The tabular recipe's parts (#28): robust scaling with smooth clipping, periodic numerical embeddings, label
smoothing, Adam's beta_2 and a cosine learning-rate schedule; each trains, reloads safely and exports with parity."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from .conftest import PENGUINS, bm, read_json

# under `make test` (pytest -n 2 --dist loadgroup) one worker runs this module, so its module fixtures are made once
pytestmark = pytest.mark.xdist_group("recipe")

RECIPE = ["--set", "preprocess.scaling=robust",
          "--set", "model.layers=[{type: PeriodicEmbeddings}, {type: Dense, units: 32, activation: relu}]",
          "--set", "train.label_smoothing=0.1", "--set", "train.optimizer.beta_2=0.95",
          "--set", "train.optimizer.schedule=cosine", "--set", "train.epochs=6", "--set", "train.batch_size=64",
          "--set", "train.optimizer.learning_rate=0.001"]


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    bm("preprocess", PENGUINS, "--target", "species", "--out", root / "prep", *RECIPE)
    bm("train", root / "prep", "--out", root / "run")
    return root


def test_robust_scaling_centres_on_the_median_and_clips_smoothly(recipe_run):
    from bigmodel_cli import features
    from bigmodel_cli.schema import Schema

    schema = Schema.load(recipe_run / "prep")
    assert schema.scaling == "robust"
    train = pd.read_parquet(recipe_run / "prep" / "train.parquet")
    mass = next(f for f in schema.features if f.name == "body_mass_g")
    q25, q50, q75 = train["body_mass_g"].quantile([0.25, 0.5, 0.75])
    assert (mass.q25, mass.fill, mass.q75) == pytest.approx((q25, q50, q75))
    encoder = features.preprocessing_model(schema)
    position = features.numeric_columns(schema)[[f.name for f in schema.features if f.is_numeric].index(mass.name)]
    rows = train.head(3).copy()
    rows["body_mass_g"] = [q50, q50 + (q75 - q25), 1e9]  # the median, one IQR above, a wild outlier
    got = features.apply(encoder, features.to_inputs(rows, schema, "rows"))[:, position]
    assert got[0] == pytest.approx(0, abs=1e-6)
    assert got[1] == pytest.approx(1 / math.sqrt(1 + 1 / 9), rel=1e-5)  # x / sqrt(1 + (x/3)^2) at x = 1
    assert 2.99 < got[2] < 3.0001  # bounded by 3 (float32), not 1e9 / IQR


def test_periodic_embeddings_embed_only_the_numeric_columns(recipe_run):
    from bigmodel_cli import features
    from bigmodel_cli.folders import load_network
    from bigmodel_cli.schema import Schema

    schema = Schema.load(recipe_run / "prep")
    net = load_network(recipe_run / "run" / "model.keras")  # safe_mode=True: the layer is registered
    emb = next(layer for layer in net.layers if type(layer).__name__ == "PeriodicEmbeddings")
    numeric = features.numeric_columns(schema)
    assert emb.columns == numeric and len(numeric) == 5
    width = sum(features.widths(schema))
    assert emb.output.shape[-1] == width - 5 + 5 * (emb.dim + 1)
    x = np.random.default_rng(0).normal(size=(4, width)).astype("float32")
    out = np.asarray(emb(x))
    assert np.allclose(out[:, [i * (emb.dim + 1) for i in range(5)]], x[:, numeric])  # x_j itself is kept
    rest = [i for i in range(width) if i not in numeric]
    assert np.allclose(out[:, 5 * (emb.dim + 1):], x[:, rest])  # one-hot columns pass through


def test_label_smoothing_beta_2_and_the_cosine_schedule(recipe_run):
    from bigmodel_cli.folders import load_network

    net = load_network(recipe_run / "run" / "model.keras")
    loss = net.loss
    assert type(loss).__name__ == "SmoothedSparseCrossentropy" and loss.label_smoothing == 0.1
    p = np.array([[0.7, 0.2, 0.1]], dtype="float32")
    target = np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    assert float(loss(np.array([0]), p)) == pytest.approx(-(target * np.log(p[0])).sum(), rel=1e-5)
    assert net.optimizer.beta_2 == 0.95
    history = pd.read_csv(recipe_run / "run" / "history.csv")
    lr = history["learning_rate"].to_numpy()
    epochs = len(lr)
    assert lr == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * e / 6)) for e in range(epochs)], rel=1e-5)


def test_the_recipe_exports_to_onnx_and_tflite_with_parity(recipe_run):
    for fmt in ("onnx", "tflite"):
        doc = json.loads(bm("export", recipe_run / "run", "--format", fmt, "--out", recipe_run / fmt, "--json").stdout)
        assert doc["passed"], doc
        assert max(doc["max_abs_diff"].values()) <= 1e-5


@pytest.mark.parametrize(("override", "needle"), [
    ("train.optimizer.beta_2=0.9 --set train.optimizer.name=sgd", "train.optimizer.beta_2: optimizer 'sgd' has no "
     "setting 'beta_2'"),
    ("train.label_smoothing=0.1 --set train.loss=categorical_hinge", "train.label_smoothing applies to the default"),
    ("train.optimizer.schedule=cosine --set train.reduce_lr={factor: 0.5}", "choose one"),
    ("model.ensemble=4 --set train.privacy={noise_multiplier: 1.0}", "model.ensemble cannot be combined with "
     "train.privacy"),
])
def test_recipe_settings_that_cannot_apply_are_one_line_errors(recipe_run, tmp_path, override, needle):
    sets = [a for part in override.split(" --set ") for a in ("--set", part)]
    r = bm("train", recipe_run / "prep", "--out", tmp_path / "run", *sets, "--set", "train.epochs=1", code=2)
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert read_json(recipe_run / "run" / "manifest.json")  # the good run is untouched


def test_a_schedule_where_it_cannot_apply_is_refused():
    from bigmodel_cli.config import load_config
    from bigmodel_cli.errors import ConfigError
    from bigmodel_cli.federated.budget import budget

    with pytest.raises(ConfigError, match="does not support optimizer.schedule"):
        load_config(None, ["train.optimizer.schedule=cosine", "train.strategy=multi_worker"])
    with pytest.raises(ConfigError, match="not to federated rounds"):
        budget(load_config(None, ["train.optimizer.schedule=cosine"]), 100)
    assert budget(load_config(), 100).rounds == 20  # constant: the federation's budget as before


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    """Penguin body mass (regression) with the piecewise-linear encoding and a 4-member ensemble."""
    root = tmp_path_factory.mktemp("ensemble")
    bm("preprocess", PENGUINS, "--target", "body_mass_g", "--out", root / "prep", "--set", "preprocess.numeric_bins=8",
       "--set", "model.ensemble=4", "--set", "train.epochs=4", "--set", "train.batch_size=64")
    bm("train", root / "prep", "--out", root / "run")
    return root


def test_piecewise_linear_bins_follow_the_train_quantiles(ensemble_run):
    from bigmodel_cli import features
    from bigmodel_cli.schema import Schema

    schema = Schema.load(ensemble_run / "prep")
    train = pd.read_parquet(ensemble_run / "prep" / "train.parquet")
    flipper = next(f for f in schema.features if f.name == "flipper_length_mm")
    values = train["flipper_length_mm"].dropna()
    assert flipper.edges == pytest.approx(sorted(set(values.quantile(np.linspace(0, 1, 9)))))
    widths = dict(zip([f.name for f in schema.features], features.widths(schema), strict=True))
    assert widths["flipper_length_mm"] == len(flipper.edges)  # the scaled value and one column per bin
    encoder = features.preprocessing_model(schema)
    at = sum(w for name, w in widths.items() if name in [f.name for f in schema.features][
        :[f.name for f in schema.features].index("flipper_length_mm")])
    rows = train.head(3).copy()
    e = flipper.edges
    rows["flipper_length_mm"] = [e[0] - 100, (e[2] + e[3]) / 2, e[-1] + 100]  # below all, mid bin 2, above all
    got = features.apply(encoder, features.to_inputs(rows, schema, "rows"))[:, at + 1: at + len(e)]
    assert got[0] == pytest.approx(np.zeros(len(e) - 1))
    assert got[1] == pytest.approx([1, 1, 0.5] + [0] * (len(e) - 4), abs=1e-5)
    assert got[2] == pytest.approx(np.ones(len(e) - 1))


def test_the_ensemble_trains_on_its_members_losses_and_predicts_their_mean(ensemble_run):
    from bigmodel_cli import features
    from bigmodel_cli.folders import load_network
    from bigmodel_cli.schema import Schema

    net = load_network(ensemble_run / "run" / "model.keras")
    assert type(net).__name__ == "EnsembleSequential" and net.layers[-1].name == "ensemble_mean"
    schema = Schema.load(ensemble_run / "prep")
    df = pd.read_parquet(ensemble_run / "prep" / "val.parquet")
    x = features.apply(features.preprocessing_model(schema), features.to_inputs(df, schema, "val"))
    y = schema.labels(df, "val")
    members = np.asarray(_members(net, x))  # (n, 4, 1), in grams
    assert members.shape == (len(x), 4, 1) and members.std(axis=1).mean() > 0  # the members differ
    assert np.asarray(net(x)) == pytest.approx(members.mean(axis=1), rel=1e-5)
    mse = ((members[:, :, 0] - y[:, None]) ** 2).mean()  # the mean over members of each one's MSE
    trained = float(net.compute_loss(y=y, y_pred=net(x, training=True), training=True))
    assert trained == pytest.approx(mse, rel=1e-4)
    assert trained > ((members.mean(axis=1)[:, 0] - y) ** 2).mean()  # not the loss of the mean prediction


def _members(net, x):
    out = x
    for layer in net.layers[:-1]:
        out = layer(out)
    return out


def test_the_ensemble_exports_with_parity(ensemble_run):
    for fmt in ("onnx", "tflite"):
        doc = json.loads(bm("export", ensemble_run / "run", "--format", fmt, "--out", ensemble_run / fmt,
                            "--json").stdout)
        assert doc["passed"], doc


def test_a_fresh_process_loads_the_defaults_network_safely(ensemble_run):
    """Registration must not depend on what else a process imported: load_network alone, in a new process."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from bigmodel_cli.folders import load_network; "
            "n = load_network(Path(sys.argv[1])); print(type(n).__name__, len(n.layers))")
    r = subprocess.run([sys.executable, "-c", code, str(ensemble_run / "run" / "model.keras")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[0] == "EnsembleSequential"


def test_ensemble_auto_is_one_member_where_a_step_takes_one_loss_per_example():
    from bigmodel_cli.config import load_config
    from bigmodel_cli.model import members

    assert members(load_config()) == 8
    assert members(load_config(None, ["train.privacy={noise_multiplier: 1.0}"])) == 1
    assert members(load_config(None, ["train.strategy=multi_worker"])) == 1
    assert members(load_config(None, ["model.ensemble=4"])) == 4
