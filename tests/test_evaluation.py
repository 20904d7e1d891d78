"""Evaluation for CI: gates, compare, bootstrap intervals, decision threshold, plots, HTML report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from bigmodel_cli import bootstrap

from .conftest import CANCER, FAST, PENGUINS, bm, read_json

# under `make test` (pytest -n 2 --dist loadgroup) one worker runs this module, so its module fixtures are made once
pytestmark = pytest.mark.xdist_group("evaluation")

PNG = b"\x89PNG\r\n\x1a\n"


def test_passing_and_failing_gates(cancer_run):
    r = bm("evaluate", cancer_run, "--gate", "accuracy>=0.5", "--gate", "log_loss<=5", "--no-plots")
    assert "gates" in r.stdout and "FAIL" not in r.stdout
    r = bm("evaluate", cancer_run, "--gate", "accuracy>=0.5", "--gate", "roc_auc>1.0", "--no-plots", code=1)
    assert "FAIL" in r.stdout and "roc_auc>1.0" in r.stdout
    assert r.stderr.startswith("failed: 1 gate(s) failed: roc_auc>1.0")
    doc = read_json(cancer_run / "metrics.json")
    assert [g["passed"] for g in doc["gates"]] == [True, False]
    # --json still prints the document, and the exit code still says the gate failed
    r = bm("evaluate", cancer_run, "--gate", "f1>2", "--json", "--no-plots", code=1)
    assert json.loads(r.stdout)["gates"][0]["passed"] is False


def test_gates_from_config_and_bad_gates(cancer_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cancer_run, run)
    cfg = (run / "config.yaml").read_text().replace("gates: []", "gates: ['accuracy>=0.99999']")
    (run / "config.yaml").write_text(cfg)
    bm("evaluate", run, "--no-plots", code=1)
    r = bm("evaluate", cancer_run, "--gate", "macro_f1>=0.5", "--no-plots", code=2)
    assert "no metric 'macro_f1'" in r.stderr and "valid metrics: accuracy, precision" in r.stderr
    r = bm("evaluate", cancer_run, "--gate", "accuracy=>0.5", "--no-plots", code=2)
    assert "expected METRIC OP NUMBER" in r.stderr


@pytest.fixture(scope="module")
def worse_run(cancer_prep):
    run = cancer_prep.parent / "worse"
    bm("train", cancer_prep, "--out", run, "--set", "train.epochs=1", "--set", "train.optimizer.learning_rate=1e-7",
       "--set", "seed=7")
    bm("evaluate", run, "--no-plots")
    return run


def test_compare_regression_beyond_and_within_tolerance(cancer_run, worse_run):
    bm("evaluate", cancer_run, "--no-plots")
    base = read_json(cancer_run / "metrics.json")["metrics"]["accuracy"]
    worse = read_json(worse_run / "metrics.json")["metrics"]["accuracy"]
    assert base - worse > 0.05, (base, worse)
    r = bm("compare", cancer_run, worse_run, "--fail-on-regression", "accuracy:0.01", code=1)
    assert "regression" in r.stderr and "accuracy" in r.stderr
    bm("compare", cancer_run, worse_run, "--fail-on-regression", "accuracy:0.99")
    # lower is better for log_loss: the worse run's higher log loss is a regression too
    assert read_json(worse_run / "metrics.json")["metrics"]["log_loss"] > read_json(
        cancer_run / "metrics.json")["metrics"]["log_loss"] + 0.05
    r = bm("compare", cancer_run, worse_run, "--fail-on-regression", "log_loss:0.01", code=1)
    assert "log_loss" in r.stderr
    bm("compare", cancer_run, cancer_run, "--fail-on-regression", "log_loss:0")  # same run: no regression
    doc = json.loads(bm("compare", cancer_run, worse_run, "--format", "json").stdout)
    assert doc["metrics"]["accuracy"]["deltas"][1] == pytest.approx(worse - base)
    assert doc["config_diff"]["train.epochs"] == [3, 1] and doc["config_diff"]["seed"] == [42, 7]
    assert doc["warnings"] == []
    md = bm("compare", cancer_run, worse_run, "--format", "markdown").stdout
    assert md.startswith("| metric | `run` | `worse` |") and "`train.epochs`" in md
    r = bm("compare", cancer_run, worse_run, "--fail-on-regression", "r2:0.1", code=2)
    assert "no metric 'r2'" in r.stderr
    bm("compare", cancer_run, code=2)


def test_compare_warns_on_different_data(cancer_run, tmp_path):
    bm("evaluate", cancer_run, "--no-plots")  # the test split: this test must not rely on another having run first
    other = tmp_path / "run"
    shutil.copytree(cancer_run, other)
    bm("evaluate", other, "--split", "val", "--no-plots")
    r = bm("compare", cancer_run, other)
    assert "evaluated on different data" in r.stderr


def test_bootstrap_intervals_contain_estimate_and_are_reproducible(cancer_run, penguins_run):
    for run in (cancer_run, penguins_run):
        first = json.loads(bm("evaluate", run, "--bootstrap", "300", "--json", "--no-plots").stdout)
        again = json.loads(bm("evaluate", run, "--bootstrap", "300", "--json", "--no-plots").stdout)
        assert first["bootstrap"] == again["bootstrap"]
        assert first["bootstrap"]["resamples"] == 300 and first["bootstrap"]["seed"] == 42
        for name, value in first["metrics"].items():
            lo, hi = first["bootstrap"]["intervals"][name]
            assert lo - 1e-9 <= value <= hi + 1e-9, (name, value, lo, hi)
    r = bm("evaluate", cancer_run, "--bootstrap", "50", "--no-plots")
    assert "95% interval" in r.stdout


def test_bootstrap_with_unit_weights_matches_scikit_learn():
    rng = np.random.default_rng(1)
    for k in (2, 3):
        y = rng.integers(0, k, 500)
        probs = rng.dirichlet(np.ones(k), 500)
        pred = probs.argmax(axis=1)
        got = {m: v[0] for m, v in bootstrap.classification(np.ones((1, 500)), y, pred, probs).items()}
        assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
        assert got["log_loss"] == pytest.approx(skm.log_loss(y, probs), rel=1e-6)
        if k == 2:
            assert got["f1"] == pytest.approx(skm.f1_score(y, pred))
            assert got["precision"] == pytest.approx(skm.precision_score(y, pred))
            assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs[:, 1]))
        else:
            assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
            assert got["macro_recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
        got = {m: v[0] for m, v in bootstrap.classification(np.ones((1, 500)), y, pred, probs).items()}
        auc = "roc_auc" if k == 2 else "roc_auc_ovr"
        want = skm.roc_auc_score(y, probs[:, 1] if k == 2 else probs, multi_class="ovr")
        assert got[auc] == pytest.approx(want)
    # random weights and tied scores: the weighted AUC equals scikit-learn's with sample_weight
    y = rng.integers(0, 2, 400)
    score = rng.integers(0, 20, 400) / 20.0
    w = rng.integers(0, 4, (3, 400)).astype(float)
    got = bootstrap.weighted_auc(w, y == 1, score)
    for b in range(3):
        assert got[b] == pytest.approx(skm.roc_auc_score(y, score, sample_weight=w[b]))
    assert np.isnan(bootstrap.weighted_auc(np.ones((1, 3)), np.array([True] * 3), np.arange(3.0)))[0]
    y, pred = rng.normal(size=300), rng.normal(size=300)
    got = {m: v[0] for m, v in bootstrap.regression(np.ones((1, 300)), y, pred).items()}
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, pred))
    assert got["rmse"] == pytest.approx(skm.root_mean_squared_error(y, pred))
    assert got["r2"] == pytest.approx(skm.r2_score(y, pred))


def test_auto_threshold_is_stored_and_used(cancer_prep, tmp_path):
    run = tmp_path / "run"
    bm("train", cancer_prep, "--out", run, *FAST, "--set", "evaluate.threshold=auto")
    t = read_json(run / "manifest.json")["threshold"]
    assert 0 < t < 1
    from sklearn.metrics import f1_score

    from bigmodel_cli.folders import load_run

    loaded = load_run(run)  # validation F1 at the chosen threshold is at least that at 0.5
    val = loaded.split("val")
    p = loaded.predict(val, "val").probabilities[:, 1]
    y = loaded.schema.labels(val, "val")
    assert f1_score(y, p >= t) >= f1_score(y, p >= 0.5)
    doc = json.loads(bm("evaluate", run, "--json", "--no-plots").stdout)
    assert doc["threshold"] == t
    bm("predict", run, CANCER, "--out", tmp_path / "p.csv")
    pred = pd.read_csv(tmp_path / "p.csv")
    assert ((pred["prob_malignant"] >= t) == (pred["predicted_diagnosis"] == "malignant")).all()
    bm("export", run, "--format", "keras", "--out", tmp_path / "export")
    assert read_json(tmp_path / "export" / "manifest.json")["threshold"] == t


def assert_pngs(run: Path, names: set[str]) -> None:
    files = {p.name for p in (run / "eval").glob("*.png")}
    assert names <= files, names - files
    for name in names:
        data = (run / "eval" / name).read_bytes()
        assert data[:8] == PNG and len(data) > 5000, name


def test_plots_for_each_task(cancer_run, penguins_run, tmp_path):
    bm("evaluate", cancer_run)
    assert_pngs(cancer_run, {"confusion_matrix.png", "roc.png", "precision_recall.png", "calibration.png"})
    assert read_json(cancer_run / "metrics.json")["plots"][0].startswith("eval/")
    bm("evaluate", penguins_run)
    assert_pngs(penguins_run, {"confusion_matrix.png", "roc.png", "calibration.png"})
    bm("preprocess", PENGUINS, "--target", "body_mass_g", "--out", tmp_path / "prep")
    bm("train", tmp_path / "prep", "--out", tmp_path / "run", *FAST)
    bm("evaluate", tmp_path / "run")
    assert_pngs(tmp_path / "run", {"predicted_vs_actual.png", "residuals.png"})


def test_tensorboard_logs_written(penguins_run, penguins_prep, tmp_path):
    assert list((penguins_run / "logs").rglob("events.out.tfevents.*"))
    bm("train", penguins_prep, "--out", tmp_path / "run", "--set", "train.epochs=1", "--set", "train.tensorboard=false")
    assert not (tmp_path / "run" / "logs").exists()


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids, self.urls, self.images = set(), [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        for key in ("src", "href"):
            if key in a:
                self.urls.append(a[key])
        if tag == "img":
            self.images += 1


@pytest.fixture(scope="module")
def report_file(cancer_run):
    bm("evaluate", cancer_run, "--bootstrap", "100", "--gate", "accuracy>=0.1")
    out = cancer_run.parent / "report.html"
    doc = json.loads(bm("report", cancer_run, "--out", out, "--json").stdout)
    assert doc["images"] >= 5
    return out


def test_report_has_every_section_and_no_external_url(report_file):
    text = report_file.read_text()
    parser = Links()
    parser.feed(text)
    assert {"data", "config", "training", "metrics", "plots", "gates", "manifest"} <= parser.ids
    assert parser.images >= 5
    assert all(u.startswith(("data:image/png;base64,", "#")) for u in parser.urls), parser.urls
    assert "http://" not in text and "https://" not in text
    for needle in ("95% interval", "accuracy&gt;=0.1", "rows in", "config_sha256", "seed: 42"):
        assert needle in text, needle


def test_report_needs_an_evaluated_run(penguins_prep, tmp_path):
    bm("train", penguins_prep, "--out", tmp_path / "run", "--set", "train.epochs=1")
    r = bm("report", tmp_path / "run", code=2)
    assert "run `bigmodel evaluate" in r.stderr


@pytest.mark.skipif(not os.environ.get("BIGMODEL_BROWSER_TESTS"), reason="opt-in: BIGMODEL_BROWSER_TESTS=1 "
                    "(needs Debian's chromium); `make report-check` runs it")
def test_report_renders_in_headless_chromium(report_file, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is not installed (apt-get install chromium)"
    shot = tmp_path / "report.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    "--window-size=1200,3000", f"--screenshot={shot}", report_file.as_uri()],
                   check=True, capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data[:8] == PNG and len(data) > 50_000
