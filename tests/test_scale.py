"""Training knobs for speed and scale: steps_per_execution, the mirrored strategy, mixed precision."""

from __future__ import annotations

import json

import pandas as pd

from .conftest import bm

THREE = ["--set", "train.epochs=3", "--set", "train.early_stopping.enabled=false", "--set", "train.tensorboard=false"]


def test_steps_per_execution_does_not_change_the_result(penguins_prep, tmp_path):
    for spe in (1, 5, 64):
        bm("train", penguins_prep, "--out", tmp_path / f"spe{spe}", *THREE, "--set", f"train.steps_per_execution={spe}")
    one = pd.read_csv(tmp_path / "spe1" / "history.csv")
    for spe in (5, 64):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / f"spe{spe}" / "history.csv"), one, atol=1e-6, rtol=1e-5)


def test_mirrored_strategy_and_mixed_precision(penguins_prep, tmp_path):
    import keras

    bm("train", penguins_prep, "--out", tmp_path / "mirrored", *THREE, "--set", "train.strategy=mirrored")
    bm("train", penguins_prep, "--out", tmp_path / "bf16", *THREE, "--set", "train.mixed_precision=bf16")
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored after training
    model = keras.saving.load_model(tmp_path / "bf16" / "model.keras", safe_mode=True)
    assert model.layers[0].dtype_policy.name == "mixed_bfloat16"
    assert model.layers[-1].dtype_policy.name == "float32"  # the output layer stays float32
    for run in ("mirrored", "bf16"):
        doc = json.loads(bm("evaluate", tmp_path / run, "--json", "--no-plots").stdout)
        assert doc["metrics"]["accuracy"] > 0.5
    r = bm("train", penguins_prep, "--out", tmp_path / "x", "--set", "train.strategy=multi_worker", code=2)
    assert "train.strategy" in r.stderr
