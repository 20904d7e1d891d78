"""`bigmodel explain`: permutation importance and integrated gradients, on real (tiny) trained models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from .conftest import PENGUINS, bm, read_json

# under `make test` (pytest -n 2 --dist loadgroup) one worker runs this module, so its module fixtures are made once
pytestmark = pytest.mark.xdist_group("explain")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """y depends on `signal` only; `noise` and `colour` are independent of it."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(3)
    n = 3000
    signal = rng.normal(size=n)
    df = pd.DataFrame({"signal": signal, "noise": rng.normal(size=n), "colour": rng.choice(["r", "g", "b"], n),
                       "y": np.where(signal + 0.1 * rng.normal(size=n) > 0, "yes", "no")})
    df.to_csv(root / "t.csv", index=False)
    bm("preprocess", root / "t.csv", "--target", "y", "--out", root / "prep")
    bm("train", root / "prep", "--out", root / "run", "--set", "train.epochs=30")
    return root / "run"


def test_the_planted_signal_ranks_first_and_noise_is_zero(planted):
    doc = json.loads(bm("explain", planted, "--json").stdout)
    ranked = [r["column"] for r in doc["importance"]]
    assert ranked[0] == "signal" and doc["importance"][0]["importance"] > 0.2, doc["importance"]
    for r in doc["importance"][1:]:  # within noise of 0: a shuffled irrelevant column changes nothing
        assert abs(r["importance"]) <= 2 * r["std"] + 0.01, r
        assert abs(r["loss_increase"]) <= 2 * r["loss_increase_std"] + 0.01, r
    ig = doc["integrated_gradients"]
    assert ig["completeness_abs_max"] < 1e-2 and ig["completeness_rel_median"] < 1e-2  # the bound docs/stages.md states
    attrs = pd.read_csv(planted / "explain" / "attributions.csv")
    assert {"signal", "noise", "colour", "prediction", "baseline_prediction", "completeness_error"} <= set(attrs)
    # per row: the attributions add up to f(x) - f(baseline), and the signal carries most of it
    gap = attrs["prediction"] - attrs["baseline_prediction"]
    assert np.allclose(attrs[["signal", "noise", "colour"]].sum(axis=1), gap, atol=1e-2)
    assert (attrs["signal"].abs() > attrs[["noise", "colour"]].abs().max(axis=1)).mean() > 0.8
    assert (planted / "explain" / "importance.png").stat().st_size > 0
    assert read_json(planted / "explain" / "importance.json")["importance"] == doc["importance"]


def test_explain_is_deterministic_and_bounded_by_rows(planted):
    a = json.loads(bm("explain", planted, "--json", "--rows", "40", "--split", "test").stdout)
    b = json.loads(bm("explain", planted, "--json", "--rows", "40", "--split", "test").stdout)
    assert a["rows"] == 40 and a["importance"] == b["importance"]
    assert len(pd.read_csv(planted / "explain" / "attributions.csv")) == 40


@pytest.fixture(scope="module")
def mass_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("mass")
    bm("preprocess", PENGUINS, "--target", "body_mass_g", "--out", root / "prep")
    bm("train", root / "prep", "--out", root / "run", "--set", "train.epochs=5")
    return root / "run"


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded")
    bm("preprocess", PENGUINS, "--target", "species", "--out", root / "prep", "--set",
       "preprocess.categorical_encoding=embedding")
    bm("train", root / "prep", "--out", root / "run", "--set", "train.epochs=5")
    return root / "run"


@pytest.mark.parametrize("run", ["penguins_run", "mass_run", "embedded_run"])
def test_multiclass_regression_and_embedded(run, request):
    folder = request.getfixturevalue(run)
    doc = json.loads(bm("explain", folder, "--json").stdout)
    columns = ["island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "sex", "year"]
    columns += ["species"] if run == "mass_run" else ["body_mass_g"]
    assert sorted(r["column"] for r in doc["importance"]) == sorted(columns)
    attrs = pd.read_csv(folder / "explain" / "attributions.csv")
    outputs = attrs["output"].unique().tolist()
    assert outputs == (["body_mass_g"] if run == "mass_run" else ["Adelie", "Chinstrap", "Gentoo"])
    gap = attrs["prediction"] - attrs["baseline_prediction"]
    scale = 1.0 if run != "mass_run" else float(gap.abs().max())  # grams
    assert np.abs(attrs[columns].sum(axis=1) - gap).max() <= 1e-2 * scale
    assert doc["score"] == ("rmse" if run == "mass_run" else "accuracy")


def test_explain_errors_name_the_culprit(penguins_run, cancer_prep, tmp_path):
    r = bm("explain", penguins_run, "--row-ids", "99999", code=2)
    assert r.stderr.startswith("error:") and "--row-ids not found: 99999" in r.stderr
    r = bm("explain", penguins_run, "--split", "holdout", code=2)
    assert "--split" in r.stderr
    pd.read_csv(PENGUINS).drop(columns="species").to_csv(tmp_path / "no_target.csv", index=False)
    r = bm("explain", penguins_run, "--data", tmp_path / "no_target.csv", code=2)
    assert "species" in r.stderr
    r = bm("explain", penguins_run, "--data", cancer_prep, code=2)  # another table's prep folder
    assert r.stderr.startswith("error:") and "missing column(s) the model needs: island" in r.stderr


def test_report_has_the_explain_section(planted, tmp_path):
    bm("explain", planted)
    bm("evaluate", planted, "--no-plots")
    bm("report", planted, "--out", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert 'id="explain"' in page and "Permutation importance on" in page and "signal" in page
