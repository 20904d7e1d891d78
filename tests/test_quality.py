"""The default config's quality on the sample data, and determinism."""

from __future__ import annotations

import pytest

from .conftest import CANCER, PENGUINS, SAMPLE, bm, read_json


@pytest.mark.parametrize(("data", "config"), [(PENGUINS, "penguins.yaml"), (CANCER, "breast_cancer.yaml")])
def test_default_config_reaches_095_and_is_deterministic(tmp_path, data, config):
    bm("preprocess", data, "--config", SAMPLE / config, "--out", tmp_path / "prep")
    bm("train", tmp_path / "prep", "--out", tmp_path / "run")
    bm("evaluate", tmp_path / "run")
    first = (tmp_path / "run" / "metrics.json").read_bytes()
    assert read_json(tmp_path / "run" / "metrics.json")["metrics"]["accuracy"] >= 0.95
    # the same commands again, into a new folder: byte-identical metrics
    bm("preprocess", data, "--config", SAMPLE / config, "--out", tmp_path / "prep2")
    bm("train", tmp_path / "prep2", "--out", tmp_path / "run2")
    bm("evaluate", tmp_path / "run2")
    second = (tmp_path / "run2" / "metrics.json").read_bytes()
    assert first.replace(b"prep2", b"prep") == second.replace(b"prep2", b"prep")
