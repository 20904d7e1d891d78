"""Every stage through the CLI on the sample data: init, preprocess, train, evaluate, export, predict."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from bigmodel_cli.config import load_config

from .conftest import CANCER, FAST, PENGUINS, bm, read_json


def test_init_writes_a_commented_loadable_config(tmp_path):
    out = tmp_path / "bm.yaml"
    r = bm("init", PENGUINS, "--target", "species", "--out", out, "--json")
    doc = json.loads(r.stdout)
    assert doc["task"] == "multiclass"
    assert doc["columns"]["island"] == "categorical" and doc["columns"]["bill_length_mm"] == "numeric"
    text = out.read_text()
    assert text.startswith("# bigmodel config") and "# model:" in text
    cfg = load_config(out)
    assert cfg.data.target == "species" and cfg.data.columns["sex"] == "categorical"
    import yaml

    assert list(yaml.safe_load(text)) == list(type(cfg).model_fields)  # every section, every default
    bm("init", PENGUINS, "--target", "species", "--out", out, code=2)  # no silent overwrite
    bm("init", CANCER, "--target", "diagnosis", "--out", out, "--force")
    assert load_config(out).data.columns["patient_id"] == "id"


def test_preprocess_writes_splits_schema_report(penguins_prep):
    for name in ("train.parquet", "val.parquet", "test.parquet", "schema.json", "report.json", "config.yaml",
                 "manifest.json"):
        assert (penguins_prep / name).exists(), name
    report = read_json(penguins_prep / "report.json")
    assert report["rows_in"] == 344 and report["rows_out"] == 344
    assert report["splits"] == {"train": 276, "val": 34, "test": 34}
    assert report["columns"]["sex"]["missing"] == 11 and report["columns"]["sex"]["imputed_with"] == "male"
    assert report["columns"]["bill_length_mm"]["missing"] == 2
    # stratified: each class's share is about the same in every split
    bal = report["class_balance"]
    for cls in ("Adelie", "Chinstrap", "Gentoo"):
        shares = [bal[s][cls] / sum(bal[s].values()) for s in ("train", "val", "test")]
        assert max(shares) - min(shares) < 0.05
    schema = read_json(penguins_prep / "schema.json")
    assert schema["task"] == "multiclass" and schema["classes"] == ["Adelie", "Chinstrap", "Gentoo"]
    feats = {f["name"]: f for f in schema["features"]}
    train = pd.read_parquet(penguins_prep / "train.parquet")
    # fitted on the train split only
    assert feats["bill_length_mm"]["max"] == train["bill_length_mm"].max()
    by_count = sorted(feats["island"]["vocabulary"], key=lambda v: -(train["island"] == v).sum())
    assert feats["island"]["vocabulary"] == by_count


def test_preprocess_cleans_duplicates_and_missing_targets(tmp_path):
    df = pd.read_csv(PENGUINS)
    dirty = pd.concat([df, df.head(5)], ignore_index=True)
    dirty.loc[10, "species"] = None
    path = tmp_path / "dirty.csv.gz"
    dirty.to_csv(path, index=False)
    r = bm("preprocess", path, "--target", "species", "--out", tmp_path / "prep", "--json")
    doc = json.loads(r.stdout)  # by default identical rows are kept: they are observations (randhie: half the rows)
    assert doc["duplicates_dropped"] == 0 and doc["missing_target_dropped"] == 1 and doc["rows_out"] == 348
    assert "dropped 1 row(s) whose target 'species' is missing" in doc["notes"]
    r = bm("preprocess", path, "--target", "species", "--out", tmp_path / "prep2", "--json",
           "--set", "preprocess.drop_duplicates=true")
    doc = json.loads(r.stdout)
    assert doc["duplicates_dropped"] == 5 and doc["missing_target_dropped"] == 1 and doc["rows_out"] == 343
    r = bm("preprocess", path, "--target", "species", "--out", tmp_path / "prep3",
           "--set", "preprocess.drop_duplicates=true")  # the table output: the notes on stderr
    assert "note: dropped 1 row(s) whose target 'species' is missing" in r.stderr
    assert "note: dropped 5 duplicate row(s)" in r.stderr


def test_preprocess_table_output_and_notes(tmp_path):
    r = bm("preprocess", CANCER, "--target", "diagnosis", "--out", tmp_path / "prep")
    assert "binary on 'diagnosis'" in r.stdout and "class balance" in r.stdout
    assert "patient_id" in r.stderr and "id" in r.stderr


@pytest.mark.parametrize("late, column, value", [
    ("9999,1.5, NA,True", "c", None),  # ' NA' after a delimiter is missing
    ("9999,1.5, late,True", "c", "late"),  # the space after a delimiter is skipped
    ('9999,1.5, "a,b",True', "c", "a,b"),  # a quoted field after a space is one field
    ("9999,1.5,k1, False", "b", False),  # ' False' is a boolean
    ("9999, 2.5,k1,True", "x", 2.5),
    ("9999,1.5,k1,True", "c", "k1"),  # no space anywhere
])
def test_spaces_after_delimiters_read_alike_wherever_they_are(tmp_path, late, column, value):
    """A space after a delimiter is skipped wherever it is in the file: also when the first 64 KiB (where
    read_table looks for one before parsing without skipinitialspace) hold none."""
    from bigmodel_cli.config import DataConfig
    from bigmodel_cli.data import read_table

    rows = "\n".join(f"{i},{i / 7:.5f},k{i % 7},{i % 2 == 1}" for i in range(6000))  # ~130 KB
    path = tmp_path / "t.csv"
    path.write_text(f"id,x,c,b\n{rows}\n{late}\n")
    df = read_table(path, DataConfig())
    want = pd.read_csv(path, skipinitialspace=True, index_col=False)
    pd.testing.assert_frame_equal(df, want, check_exact=True)
    got = df[column].iloc[-1]
    assert (pd.isna(got) if value is None else got == value), got
    assert df.shape == (6001, 4)


def test_parquet_input_and_standard_scaling(tmp_path):
    path = tmp_path / "p.parquet"
    pd.read_csv(PENGUINS).to_parquet(path)
    bm("preprocess", path, "--target", "species", "--out", tmp_path / "prep", "--set", "preprocess.scaling=standard",
       "--set", "preprocess.numeric_bins=0")  # one column per number, to read the scaled values
    assert read_json(tmp_path / "prep" / "schema.json")["scaling"] == "standard"
    from bigmodel_cli import features
    from bigmodel_cli.folders import open_prep

    prep = open_prep(tmp_path / "prep")
    widths = [1 if f.is_numeric else len(f.vocabulary) + 1 for f in prep.schema.features]  # one-hot: + the OOV
    starts = np.cumsum([0, *widths[:-1]])
    numeric = [int(starts[i]) for i, f in enumerate(prep.schema.features) if f.is_numeric]
    x = features.apply(features.preprocessing_model(prep.schema),
                       features.to_inputs(prep.split("train"), prep.schema, "train"))
    assert x.shape[1] == sum(widths)
    x = x[:, numeric]
    finite = prep.split("train")[[f.name for f in prep.schema.features if f.is_numeric]]
    complete = finite.notna().all(axis=1).to_numpy()  # imputed rows sit at the median, not the mean
    assert np.allclose(x[complete].mean(axis=0), 0, atol=0.1) and np.allclose(x[complete].std(axis=0), 1, atol=0.1)


def test_train_writes_run_folder(penguins_run, penguins_prep):
    for name in ("model.keras", "history.csv", "config.yaml", "manifest.json", "training_curve.png", "schema.json"):
        assert (penguins_run / name).exists(), name
    m = read_json(penguins_run / "manifest.json")
    assert m["kind"] == "run" and m["seed"] == 42 and m["epochs_run"] == 3 and 1 <= m["best_epoch"] <= 3
    assert set(m["versions"]) == {"bigmodel", "python", "tensorflow", "keras"}
    assert len(m["data"]["sha256"]) == 64 and len(m["config_sha256"]) == 64
    assert m["started"] <= m["finished"]
    hist = pd.read_csv(penguins_run / "history.csv")
    assert list(hist["epoch"]) == [1, 2, 3] and {"loss", "val_loss", "accuracy"} <= set(hist.columns)
    cfg = yaml.safe_load((penguins_run / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 3 and cfg["data"]["target"] == "species"
    assert (penguins_run / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_json_and_custom_layers(penguins_prep, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "model:\n  layers:\n    - {type: Dense, units: 16, activation: tanh}\n    - {type: Dropout, rate: 0.1}\n"
        "    - {type: Dense, units: 8, activation: relu}\n"
        "train:\n  epochs: 2\n  optimizer: {name: sgd, learning_rate: 0.05}\n  class_weight: balanced\n"
        "  early_stopping: {enabled: false}\n"
    )
    r = bm("train", penguins_prep, "--out", tmp_path / "run", "--config", cfg, "--json")
    doc = json.loads(r.stdout)
    assert doc["epochs_run"] == 2 and "val_loss" in doc["final"]
    import keras

    model = keras.saving.load_model(tmp_path / "run" / "model.keras", safe_mode=True)
    assert isinstance(model, keras.Sequential)
    assert [type(layer).__name__ for layer in model.layers] == [  # the configured layers inside the ensemble
        "EnsembleAdapter", "Dense", "Dropout", "Dense", "EnsembleDense", "EnsembleMean"]
    assert type(model.optimizer).__name__ == "SGD"


def test_evaluate_multiclass(penguins_run):
    doc = json.loads(bm("evaluate", penguins_run, "--json").stdout)
    assert doc["task"] == "multiclass" and doc["data"]["split"] == "test" and doc["data"]["rows"] == 34
    assert {"accuracy", "macro_f1", "macro_precision", "macro_recall", "log_loss", "roc_auc_ovr"} <= set(doc["metrics"])
    assert set(doc["per_class"]) == {"Adelie", "Chinstrap", "Gentoo"}
    assert np.sum(doc["confusion_matrix"]["matrix"]) == 34
    assert read_json(penguins_run / "metrics.json") == doc


def test_evaluate_binary_table(cancer_run):
    r = bm("evaluate", cancer_run)
    for word in ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "confusion matrix"):
        assert word in r.stdout
    doc = read_json(cancer_run / "metrics.json")
    assert doc["positive_class"] == "malignant" and doc["metrics"]["roc_auc"] > 0.5


def test_evaluate_raw_csv_with_reordered_columns(penguins_run, penguins_prep, tmp_path):
    on_split = json.loads(bm("evaluate", penguins_run, "--json").stdout)
    test = pd.read_parquet(penguins_prep / "test.parquet")
    shuffled = test[list(reversed(test.columns))].assign(extra="x")
    path = tmp_path / "raw.csv"
    shuffled.to_csv(path, index=False)
    r = bm("evaluate", penguins_run, "--data", path, "--json")
    on_raw = json.loads(r.stdout)
    assert on_raw["data"]["split"] is None and on_raw["ignored_columns"] == ["extra"]
    for k, v in on_split["metrics"].items():
        assert on_raw["metrics"][k] == pytest.approx(v, abs=1e-6), k


def test_evaluate_missing_column_names_it(penguins_run, tmp_path):
    path = tmp_path / "raw.csv"
    pd.read_csv(PENGUINS).drop(columns=["island"]).to_csv(path, index=False)
    r = bm("evaluate", penguins_run, "--data", path, code=2)
    assert "island" in r.stderr and "missing column" in r.stderr


def test_evaluate_other_split_and_prep_dir(penguins_run, penguins_prep):
    doc = json.loads(bm("evaluate", penguins_run, "--data", penguins_prep, "--split", "val", "--json").stdout)
    assert doc["data"]["split"] == "val" and doc["data"]["rows"] == 34
    bm("evaluate", penguins_run, "--split", "nope", code=2)


def test_predict_csv_and_parquet(cancer_run, tmp_path):
    r = bm("predict", cancer_run, CANCER, "--out", tmp_path / "p.csv")
    assert "569" in r.stdout
    pred = pd.read_csv(tmp_path / "p.csv")
    assert list(pred.columns) == ["patient_id", "prob_benign", "prob_malignant", "predicted_diagnosis"]
    assert (pred["patient_id"] == pd.read_csv(CANCER)["patient_id"]).all()
    assert np.allclose(pred["prob_benign"] + pred["prob_malignant"], 1, atol=1e-6)
    assert set(pred["predicted_diagnosis"]) <= {"benign", "malignant"}
    bm("predict", cancer_run, CANCER, "--out", tmp_path / "p.parquet")
    assert np.allclose(pd.read_parquet(tmp_path / "p.parquet")["prob_malignant"], pred["prob_malignant"], atol=1e-6)


def test_predict_without_target_and_unseen_category(penguins_run, tmp_path):
    df = pd.read_csv(PENGUINS).drop(columns=["species"]).head(10)
    df.loc[0, "island"] = "Atlantis"
    path = tmp_path / "new.csv"
    df.to_csv(path, index=False)
    r = bm("predict", penguins_run, path, "--out", tmp_path / "p.csv", "--json")
    assert json.loads(r.stdout)["unseen_categories"] == {"island": 1}
    pred = pd.read_csv(tmp_path / "p.csv")
    assert len(pred) == 10 and {"prob_Adelie", "predicted_species"} <= set(pred.columns)


def test_export_savedmodel_matches_predict(cancer_run, cancer_prep, tmp_path):
    out = tmp_path / "export"
    doc = json.loads(bm("export", cancer_run, "--format", "savedmodel", "--out", out, "--json").stdout)
    assert doc["max_abs_diff"]["savedmodel"] <= 1e-5 and doc["max_abs_diff"]["keras"] <= 1e-5
    assert (out / "savedmodel" / "saved_model.pb").exists() and (out / "model.keras").exists()
    # an independent check: the SavedModel's serving signature on raw test columns vs `bigmodel predict`
    import tensorflow as tf

    test = pd.read_parquet(cancer_prep / "test.parquet")
    test.to_csv(tmp_path / "test.csv", index=False)
    bm("predict", cancer_run, tmp_path / "test.csv", "--out", tmp_path / "pred.csv")
    want = pd.read_csv(tmp_path / "pred.csv")["prob_malignant"].to_numpy()
    serve = tf.saved_model.load(str(out / "savedmodel")).signatures["serving_default"]
    schema = read_json(out / "schema.json")
    inputs = {f["key"]: tf.constant(test[[f["name"]]].to_numpy(dtype="float32")) for f in schema["features"]}
    got = serve(**inputs)["output_0"].numpy()[:, 0]
    assert np.max(np.abs(got - want)) <= 1e-5


def test_export_keras_format_handles_strings_and_missing(penguins_run, tmp_path):
    out = tmp_path / "export"
    bm("export", penguins_run, "--format", "keras", "--out", out)
    assert (out / "model.keras").exists() and not (out / "savedmodel").exists()
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(out / "model.keras", safe_mode=True)
    schema = read_json(out / "schema.json")
    assert sorted(model.input) == sorted(f["key"] for f in schema["features"])  # the raw columns, by name
    # raw rows straight into the exported model: an unseen category and missing values are handled inside it
    rows = {f["key"]: tf.constant([[float("nan")], [40.0]] if f["kind"] == "numeric" else [[""], ["Atlantis"]])
            for f in schema["features"]}
    probs = np.asarray(model(rows))
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    # the same raw rows through `bigmodel predict`: the exported model gives the same probabilities
    raw = pd.DataFrame({f["name"]: [np.nan, 40.0] if f["kind"] == "numeric" else [None, "Atlantis"]
                        for f in schema["features"]})
    raw.to_csv(tmp_path / "raw.csv", index=False)
    bm("predict", penguins_run, tmp_path / "raw.csv", "--out", tmp_path / "raw_pred.csv")
    want = pd.read_csv(tmp_path / "raw_pred.csv")[[f"prob_{c}" for c in schema["classes"]]].to_numpy()
    assert np.allclose(probs, want, atol=1e-5)
    bm("export", penguins_run, "--format", "pmml", "--out", out, code=2)


def test_regression_task(tmp_path):
    bm("preprocess", PENGUINS, "--target", "body_mass_g", "--out", tmp_path / "prep")
    assert read_json(tmp_path / "prep" / "schema.json")["task"] == "regression"
    bm("train", tmp_path / "prep", "--out", tmp_path / "run", *FAST)
    doc = json.loads(bm("evaluate", tmp_path / "run", "--json").stdout)
    assert set(doc["metrics"]) == {"mae", "rmse", "r2"} and doc["metrics"]["mae"] > 0
    bm("predict", tmp_path / "run", PENGUINS, "--out", tmp_path / "p.csv")
    assert "predicted_body_mass_g" in pd.read_csv(tmp_path / "p.csv").columns


def test_text_and_boolean_columns(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    label = rng.integers(0, 2, n)
    words = np.where(label == 1, "great fast reliable product", "slow broken awful thing")
    df = pd.DataFrame({
        "review": [f"{w} number {i}" for i, w in enumerate(words)],
        "verified": np.where(rng.random(n) > 0.5, "yes", "no"),
        "stars": label * 3 + rng.integers(1, 3, n),
        "label": np.where(label == 1, "pos", "neg"),
    })
    path = tmp_path / "reviews.csv"
    df.to_csv(path, index=False)
    bm("preprocess", path, "--target", "label", "--out", tmp_path / "prep")
    kinds = {f["name"]: f["kind"] for f in read_json(tmp_path / "prep" / "schema.json")["features"]}
    assert kinds == {"review": "text", "verified": "boolean", "stars": "numeric"}
    bm("train", tmp_path / "prep", "--out", tmp_path / "run", "--set", "train.epochs=30")
    r = bm("evaluate", tmp_path / "run", "--json")
    doc = json.loads(r.stdout)
    assert doc["metrics"]["accuracy"] >= 0.9
    # free text has no portable graph: evaluate takes TensorFlow's path and says why, in one line
    assert doc["engine"] == "tensorflow" and "'review' is free text" in doc["why_tensorflow"]
    assert "note: using TensorFlow" in r.stderr and "'review' is free text" in r.stderr
    assert not (tmp_path / "run" / "model.onnx").exists()
    bm("export", tmp_path / "run", "--out", tmp_path / "export")
    # asked for a graph it cannot have: said before training, no run folder made
    r = bm("train", tmp_path / "prep", "--out", tmp_path / "run2", "--set", "train.portable=true", code=2)
    assert "train.portable: column 'review' is free text" in r.stderr and not (tmp_path / "run2").exists()


def test_later_stage_refuses_incomplete_folder(penguins_prep, tmp_path):
    half = tmp_path / "half"
    half.mkdir()
    (half / "train.parquet").write_bytes((penguins_prep / "train.parquet").read_bytes())
    r = bm("train", half, "--out", tmp_path / "run", code=2)
    assert "incomplete" in r.stderr
    r = bm("evaluate", penguins_prep, code=2)
    assert "prep folder, not a run folder" in r.stderr


def test_categorical_embeddings(tmp_path):
    bm("preprocess", PENGUINS, "--target", "species", "--out", tmp_path / "prep",
       "--set", "preprocess.categorical_encoding=embedding")
    bm("train", tmp_path / "prep", "--out", tmp_path / "run", "--set", "train.epochs=30")
    import keras

    net = keras.saving.load_model(tmp_path / "run" / "model.keras", safe_mode=True)
    assert isinstance(net, keras.Sequential) and type(net.layers[0]).__name__ == "Embeddings"
    # island and sex: one index column each, embedded by the network (vocabulary + the OOV index)
    assert [e.input_dim for e in net.layers[0].embeddings] == [4, 3]
    doc = json.loads(bm("evaluate", tmp_path / "run", "--json", "--no-plots").stdout)
    assert doc["metrics"]["accuracy"] >= 0.9
    doc = json.loads(bm("export", tmp_path / "run", "--out", tmp_path / "export", "--json").stdout)
    assert max(doc["max_abs_diff"].values()) <= 1e-5
