"""Federated training on Flower's simulation engine: FedAvg against centralized training, skewed partitions."""

from __future__ import annotations

import json

import pytest

from .conftest import bm, read_json

pytest.importorskip("flwr", reason="the federated extra is not installed")

FAST = ["--set", "train.optimizer.learning_rate=0.01", "--set", "train.tensorboard=false",
        "--set", "train.early_stopping.enabled=false"]


def test_fedavg_iid_matches_centralized(penguins_prep, tmp_path):
    rounds, local = 12, 2
    bm("federated", penguins_prep, "--out", tmp_path / "fed", *FAST, "--set", "federated.clients=4",
       "--set", f"federated.rounds={rounds}", "--set", f"federated.local_epochs={local}")
    bm("train", penguins_prep, "--out", tmp_path / "central", *FAST, "--set", f"train.epochs={rounds * local}")
    fed = json.loads(bm("evaluate", tmp_path / "fed", "--json", "--no-plots").stdout)["metrics"]["accuracy"]
    central = json.loads(bm("evaluate", tmp_path / "central", "--json", "--no-plots").stdout)["metrics"]["accuracy"]
    assert fed >= central - 0.03, (fed, central)
    m = read_json(tmp_path / "fed" / "manifest.json")
    assert m["kind"] == "run" and m["federated"]["clients"] == 4 and m["epochs_run"] == rounds
    assert sum(sum(b.values()) for b in m["federated"]["class_balance"]) == 240
    bm("export", tmp_path / "fed", "--format", "keras", "--out", tmp_path / "export")  # an ordinary run folder


def test_dirichlet_and_by_column_partitions(penguins_prep, tmp_path):
    r = bm("federated", penguins_prep, "--out", tmp_path / "dir", *FAST, "--set", "federated.partition=dirichlet",
           "--set", "federated.alpha=0.1", "--set", "federated.clients=3", "--set", "federated.rounds=2", "--json")
    assert json.loads(r.stdout)["epochs_run"] == 2
    balance = read_json(tmp_path / "dir" / "manifest.json")["federated"]["class_balance"]
    assert len(balance) == 3 and any(min(b.values()) == 0 or max(b.values()) > 0.8 * sum(b.values()) for b in balance)
    bm("federated", penguins_prep, "--out", tmp_path / "isl", *FAST, "--set", "federated.partition=by_column",
       "--set", "federated.column=island", "--set", "federated.rounds=1")
    assert read_json(tmp_path / "isl" / "manifest.json")["federated"]["clients"] == 3  # Biscoe, Dream, Torgersen
    r = bm("federated", penguins_prep, "--out", tmp_path / "bad", "--set", "federated.partition=by_column", code=2)
    assert "needs column" in r.stderr
