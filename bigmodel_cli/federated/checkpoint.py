"""A federation's progress, and its checkpoint in RUN_DIR/checkpoint/ for `--resume`: after every round the global and
best weights, the history, early stopping's counters and adaptive DP's clipping norm, written whole (a temp folder
swapped in), with the config and the prep folder's split hashes that a resumed run must match."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .. import artifacts
from ..config import Config
from ..errors import DataError
from ..folders import Prep
from ..training.rules import Stopper, config_sha256, resume_changes

STATE, WEIGHTS = artifacts.FED_STATE, artifacts.FED_WEIGHTS
# what --resume may change: how long the federation trains, never the model, data, optimiser or clients
RESUMABLE = ("federated.rounds", "train.epochs", "train.early_stopping.patience", "train.checkpoint_seconds",
             "train.tensorboard")


@dataclass
class Progress:
    """What a federation has after the rounds so far (early stopping's counters are its Stopper's)."""

    history: list[dict[str, float]] = field(default_factory=list)  # a row per round
    weights: list[np.ndarray] | None = None  # the last round's global model
    best_weights: list[np.ndarray] | None = None  # the best round's, with early stopping
    clipping_norm: float | None = None  # adaptive client DP: the norm a resumed run continues from
    resumed: bool = False


def save(path: Path, progress: Progress, stopper: Stopper, cfg: Config, prep: Prep) -> None:
    """The state after a round, written whole (temp folder, then swapped in)."""
    assert progress.weights is not None
    with artifacts.atomic_dir(path) as tmp:
        arrays: dict[str, Any] = {f"global_{i}": w for i, w in enumerate(progress.weights)}
        arrays |= {f"best_{i}": w for i, w in enumerate(progress.best_weights or [])}
        np.savez(tmp / WEIGHTS, **arrays)
        history = progress.history
        artifacts.write_json(tmp / STATE, {
            "federated": True, "history": history, "columns": list(history[0]), "best": stopper.best,
            "best_round": stopper.best_round, "wait": stopper.wait, "clipping_norm": progress.clipping_norm,
            "config": cfg.model_dump(mode="json"), "config_sha256": config_sha256(cfg),
            "splits": prep.manifest["splits"]})


def load(path: Path, cfg: Config, prep: Prep, n_weights: int, stopper: Stopper) -> Progress:
    """The interrupted run's progress (and its Stopper's counters, set on `stopper`), if the config and the prep
    folder are those it ran with (but for RESUMABLE)."""
    folder = path
    if not (folder / STATE).exists():
        old = artifacts.previous_dir(folder)  # killed while swapping two checkpoints: the old one is whole
        folder = old if (old / STATE).exists() else folder
    if not (folder / STATE).exists():
        raise DataError(f"{path}: no federated checkpoint to resume (an interrupted `bigmodel federated` run leaves "
                        f"one); run without --resume")
    try:
        state = artifacts.read_json(folder / STATE)
        with np.load(folder / WEIGHTS, allow_pickle=False) as saved:
            weights = [saved[f"global_{i}"] for i in range(n_weights)]
            best = [saved[f"best_{i}"] for i in range(n_weights)] if "best_0" in saved else None
        history = [{c: row[c] for c in state["columns"]} for row in state["history"]]  # in the run's order
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise DataError(f"{folder}: the checkpoint is damaged ({e}); run without --resume") from None
    if state["splits"] != prep.manifest["splits"]:
        raise DataError(f"{path}: the interrupted run used another prep folder; resume with the same one, or run "
                        f"without --resume")
    before = SimpleNamespace(config=state["config"], config_sha256=state["config_sha256"])
    changed = resume_changes(before, cfg, config_sha256(cfg), RESUMABLE)
    if changed:
        raise DataError(f"{path}: the interrupted run used another config ({', '.join(changed)} differ); only "
                        f"{', '.join(RESUMABLE)} may change on --resume")
    stopper.best, stopper.best_round, stopper.wait = state["best"], state["best_round"], state["wait"]
    return Progress(history, weights, best, state["clipping_norm"], resumed=True)
