"""Training knobs for speed and scale: steps_per_execution, the mirrored and multi-worker strategies, mixed
precision."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pandas as pd

from .conftest import bm, read_json

THREE = ["--set", "train.epochs=3", "--set", "train.early_stopping.enabled=false", "--set", "train.tensorboard=false"]
EPOCHS20 = ["--set", "train.epochs=20", "--set", "train.optimizer.learning_rate=0.01", "--set",
            "train.early_stopping.enabled=false", "--set", "train.tensorboard=false"]


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
    bm("train", penguins_prep, "--out", tmp_path / "default", *THREE)
    # on one device MirroredStrategy is the same computation: the same history, to float error
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "mirrored" / "history.csv"),
                                  pd.read_csv(tmp_path / "default" / "history.csv"), atol=1e-5, rtol=1e-4)
    assert "strategy: mirrored" in (tmp_path / "mirrored" / "config.yaml").read_text()
    doc = json.loads(bm("evaluate", tmp_path / "bf16", "--json", "--no-plots").stdout)
    assert doc["metrics"]["accuracy"] > 0.5


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_multi_worker_two_processes(penguins_prep, tmp_path, monkeypatch):
    """Two `bigmodel train` workers on 127.0.0.1 with their TF_CONFIG train one model in step (each sees half of
    every global batch) to the quality of a single-process run; only the chief (worker 0) writes its RUN_DIR."""
    cluster = [f"127.0.0.1:{p}" for p in _ports(2)]
    args = ["train", str(penguins_prep), *EPOCHS20, "--strategy", "multi_worker", "--json"]
    procs = []
    for i in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
               "TF_CONFIG": json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen([sys.executable, "-m", "bigmodel_cli", *args, "--out", str(tmp_path / f"w{i}")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    chief, worker = (json.loads(o) for o, _ in outs)
    assert chief["out"] == str(tmp_path / "w0") and worker["out"] is None
    assert (tmp_path / "w0" / "model.keras").exists() and not (tmp_path / "w1").exists()
    assert chief["final"] == worker["final"]  # the same weights on both workers, so the same validation metrics
    assert read_json(tmp_path / "w0" / "manifest.json")["workers"] == 2
    bm("train", penguins_prep, "--out", tmp_path / "single", *EPOCHS20)
    acc = {r: json.loads(bm("evaluate", tmp_path / r, "--json", "--no-plots").stdout)["metrics"]["accuracy"]
           for r in ("w0", "single")}
    assert acc["w0"] >= acc["single"] - 0.03, acc
    monkeypatch.delenv("TF_CONFIG", raising=False)
    r = bm("train", penguins_prep, "--out", tmp_path / "x", "--strategy", "multi_worker", code=2)
    assert "TF_CONFIG" in r.stderr and not (tmp_path / "x").exists()
    r = bm("train", penguins_prep, "--out", tmp_path / "x", "--strategy", "multi_worker", "--set",
           "train.class_weight=balanced", code=2)
    assert "multi_worker does not support" in r.stderr
