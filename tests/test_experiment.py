"""`bigmodel experiment`: the lifecycle in one process, writing what the single commands write."""

from __future__ import annotations

import json

import pandas as pd

from .conftest import CANCER, PENGUINS, bm, read_json

QUICK = ["--set", "train.epochs=3", "--set", "train.tensorboard=false"]


def test_experiment_writes_what_the_stages_write(tmp_path):
    """One process: the prep, run and export folders, the metrics (on --test) and the predictions equal those of
    the separate commands with the same options; --json holds every stage's result."""
    exp = tmp_path / "exp"
    r = bm("experiment", PENGUINS, "--target", "species", "--out", exp, "--test", PENGUINS, "--format", "onnx",
           *QUICK, "--json")
    doc = json.loads(r.stdout)
    assert set(doc) == {"out", "preprocess", "train", "evaluate", "export", "report", "failed"} and doc["failed"] == []
    assert doc["export"]["passed"] and (exp / "export" / "model.onnx").stat().st_size > 0
    assert (exp / "run" / "report.html").exists() and doc["evaluate"]["data"]["rows"] == 344
    assert [line for line in r.stderr.splitlines() if line.startswith("[")] == [
        "[1/5] preprocess", "[2/5] train", "[3/5] evaluate", "[4/5] export", "[5/5] report"]
    one = tmp_path / "stages"
    bm("preprocess", PENGUINS, "--target", "species", "--out", one / "prep", *QUICK)
    bm("train", one / "prep", "--out", one / "run", *QUICK)
    bm("evaluate", one / "run", "--data", PENGUINS)
    assert read_json(one / "run" / "metrics.json")["metrics"] == doc["evaluate"]["metrics"]
    assert read_json(one / "prep" / "manifest.json")["splits"] == read_json(exp / "prep" / "manifest.json")["splits"]
    for run in (one / "run", exp / "run"):
        bm("predict", run, PENGUINS, "--out", run / "p.csv")
    pd.testing.assert_frame_equal(pd.read_csv(one / "run" / "p.csv"), pd.read_csv(exp / "run" / "p.csv"))
    assert json.loads(bm("evaluate", exp / "run", "--json", "--no-plots").stdout)["data"]["split"] == "test"


def test_a_failed_gate_is_exit_1_after_everything_is_written(tmp_path):
    exp = tmp_path / "exp"
    r = bm("experiment", CANCER, "--target", "diagnosis", "--out", exp, "--gate", "accuracy>=1.01", *QUICK,
           "--json", code=1)
    assert "gate accuracy>=1.01" in r.stderr and json.loads(r.stdout)["failed"] == [
        f"gate accuracy>=1.01 (got {read_json(exp / 'run' / 'metrics.json')['metrics']['accuracy']})"]
    assert (exp / "run" / "report.html").exists() and not (exp / "export").exists()  # no --format: no export
    r = bm("experiment", CANCER, "--target", "nope", "--out", tmp_path / "bad", code=2)
    assert r.stderr.splitlines() == ["[1/4] preprocess", r.stderr.splitlines()[-1]]  # progress, then one line
    assert r.stderr.splitlines()[-1].startswith("error:") and "'nope'" in r.stderr
