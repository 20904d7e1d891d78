"""`bigmodel drift`: planted shifts are flagged, fresh samples of the training distribution are not."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .conftest import bm, read_json

pytestmark = pytest.mark.xdist_group("drift")


def sample(n: int, seed: int) -> pd.DataFrame:
    """A table of a number, a skewed number, a category and a binary target, drawn from one distribution."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, n)
    size = rng.lognormal(3, 0.5, n)
    city = rng.choice(["north", "south", "east", "west"], n, p=[0.4, 0.3, 0.2, 0.1])
    y = (x + (city == "north") + rng.normal(0, 0.5, n) > 0.5).astype(int)
    return pd.DataFrame({"x": x, "size": size, "city": city, "y": y})


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("drift")
    sample(4000, 0).to_csv(root / "train.csv", index=False)
    # streamed (chunks of 700 rows), so predict / evaluate --drift below count the rows chunk by chunk
    bm("preprocess", root / "train.csv", "--target", "y", "--out", root / "prep", "--set", "data.streaming=true",
       "--set", "data.chunk_rows=700")
    bm("train", root / "prep", "--out", root / "run", "--set", "train.epochs=1", "--set", "train.refit=false",
       "--set", "train.tensorboard=false")
    return root / "run"


def _drift(run: Path, df: pd.DataFrame, path: Path, code: int, *args: object) -> dict:
    df.to_csv(path, index=False)
    return json.loads(bm("drift", run, path, "--json", *args, code=code).stdout)


def test_fresh_samples_of_the_training_distribution_raise_no_alarm(run, tmp_path):
    """20 fresh samples of 1000 rows (other seeds): no column crosses the default thresholds; the largest PSI stays
    well under 0.2 (the false-alarm rate measured: 0 of 60 column checks)."""
    from bigmodel_cli import drift, reference
    from bigmodel_cli.config import load_config
    from bigmodel_cli.schema import Schema

    ref = read_json(run / "reference.json")
    assert set(ref["columns"]) == {"x", "size", "city"} and ref["rows"] == 3200  # the train split (80%)
    schema, t = Schema.load(run), load_config(run / "config.yaml").drift
    worst = 0.0
    for seed in range(1, 21):
        counts = reference.Tally(ref, schema)
        counts.add(sample(1000, seed), "sample")
        found = counts.result(drift.thresholds(t))["columns"]
        worst = max(worst, *(c["psi"] for c in found.values()))
        assert all(c["psi"] <= t.psi and abs(c["missing"]["data"] - c["missing"]["reference"]) <= t.missing
                   and c.get("out_of_range", 0) <= t.out_of_range for c in found.values()), (seed, found)
    assert worst < 0.1, worst
    doc = _drift(run, sample(1000, 99), tmp_path / "fresh.csv", code=0)  # and through the CLI: exit 0
    assert doc["drifted"] == [] and doc["rows"] == 1000


def test_planted_shifts_are_flagged_and_only_there(run, tmp_path):
    """A mean shift of one number, a new dominant category and a missing-rate jump: each flags its column alone,
    exit 1; the JSON names why."""
    shifted = sample(1000, 7).assign(x=lambda d: d["x"] + 1.0)
    doc = _drift(run, shifted, tmp_path / "mean.csv", 1, "--out", tmp_path / "check")
    assert doc["drifted"] == ["x"] and doc["columns"]["x"]["psi"] > 0.25, doc["columns"]["x"]
    assert read_json(tmp_path / "check" / "drift.json") == doc  # (written before the exit 1, for report --drift)
    bm("evaluate", run, "--no-plots")
    bm("report", run, "--drift", tmp_path / "check", "--out", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert '<section id="drift">' in page and "DRIFT: psi" in page and "mean.csv" in page

    new_city = sample(1000, 8)
    new_city.loc[new_city.index[:600], "city"] = "harbour"
    doc = _drift(run, new_city, tmp_path / "city.csv", code=1)
    assert doc["drifted"] == ["city"] and doc["columns"]["city"]["new_values"] == ["harbour"]
    assert doc["columns"]["city"]["js"] > 0.3

    holes = sample(1000, 9)
    holes.loc[holes.index[::3], "size"] = np.nan
    doc = _drift(run, holes, tmp_path / "holes.csv", code=1)
    assert doc["drifted"] == ["size"] and doc["columns"]["size"]["why"][0].startswith("missing 0.0% -> 33.")

    r = bm("drift", run, tmp_path / "holes.csv", "--missing", "0.5")  # a looser threshold: no alarm
    assert "ok" in r.stdout and "DRIFT" not in r.stdout


def test_a_data_file_without_a_trained_column_is_a_one_line_error(run, tmp_path):
    sample(50, 3).drop(columns="size").to_csv(tmp_path / "short.csv", index=False)
    r = bm("drift", run, tmp_path / "short.csv", code=2)
    assert r.stderr.startswith("error: ") and "missing column(s) the model was trained on: size" in r.stderr


def test_evaluate_and_predict_drift_sections(run, tmp_path):
    """`evaluate --drift` and `predict --drift` on a shifted file (read in chunks: the run streams): the same
    verdicts and figures as `drift` on the whole file, the metrics or predictions written, then exit 1; the report
    shows evaluate's drift section; an unshifted file passes with exit 0."""
    shifted = sample(1000, 7).assign(x=lambda d: d["x"] + 1.0)
    shifted.to_csv(tmp_path / "mean.csv", index=False)
    whole = json.loads(bm("drift", run, tmp_path / "mean.csv", "--json", code=1).stdout)
    r = bm("evaluate", run, "--data", tmp_path / "mean.csv", "--drift", "--out", tmp_path / "ev", "--no-plots",
           code=1)
    assert "1 column(s) drifted: x" in r.stderr, r.stderr
    metrics = read_json(tmp_path / "ev" / "metrics.json")
    assert metrics["metrics"]["accuracy"] > 0 and metrics["drift"]["drifted"] == ["x"]
    r = bm("predict", run, tmp_path / "mean.csv", "--out", tmp_path / "p.csv", "--drift", "--json", code=1)
    predicted = json.loads(r.stdout)
    assert len(pd.read_csv(tmp_path / "p.csv")) == 1000 and predicted["drift"]["rows"] == 1000
    for section in (metrics["drift"], predicted["drift"]):
        assert section["drifted"] == whole["drifted"] and section["rows"] == whole["rows"]
        for name, c in whole["columns"].items():
            got = section["columns"][name]
            assert got["why"] == c["why"] and abs(got["psi"] - c["psi"]) < 1e-9 and abs(got["js"] - c["js"]) < 1e-9
            assert got["missing"] == c["missing"] and got.get("out_of_range") == c.get("out_of_range")
    bm("report", run, "--evaluation", tmp_path / "ev", "--out", tmp_path / "report.html")
    page = (tmp_path / "report.html").read_text()
    assert '<section id="drift">' in page and "DRIFT: psi" in page and "mean.csv" in page
    sample(1000, 11).to_csv(tmp_path / "fresh.csv", index=False)
    r = bm("predict", run, tmp_path / "fresh.csv", "--out", tmp_path / "q.csv", "--drift")
    assert "ok" in r.stdout and "DRIFT" not in r.stdout
