"""Per-epoch training state in RUN_DIR/checkpoint/, so that a killed `train` can `--resume`.

Each epoch writes a new checkpoint folder atomically (temp folder, then rename): the network with its
optimizer state (model.keras), the layers' random-seed states (seeds.npz: Keras saves weights, not a Dropout's
SeedGenerator state), the early-stopping state with its best weights (best.npz, no pickle), and state.json
(epochs done, history so far, the hashes of the config and data it belongs to). The data order of epoch e
depends only on (seed, e), so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts, interrupts
from ..errors import DataError
from ..keras_env import import_keras
from . import privacy  # noqa: F401  (registers DPSequential for loading)

keras: Any = import_keras()  # at import: the callbacks below subclass Keras
STATE, NETWORK, BEST = artifacts.CKPT_STATE, artifacts.CKPT_NETWORK, artifacts.CKPT_BEST
SEEDS = artifacts.CKPT_SEEDS


def seed_states(net: Any) -> list[Any]:
    """The network's random-seed variables (each Dropout's SeedGenerator state): Keras saves weights, not these,
    so without them a resumed run would draw other dropout masks than an uninterrupted one."""
    weights = {id(w) for w in net.weights}
    return [v for v in net.variables if id(v) not in weights]


@dataclass
class Progress:
    """How far an interrupted training got: what `--resume` continues from."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: bool = False  # early stopping ended the run
    early_stopping: dict[str, Any] | None = None  # wait, best, best_epoch
    reduce_lr: dict[str, Any] | None = None  # wait, best, cooldown_counter (the learning rate is optimizer state)
    config_sha256: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # the run's resolved config, to name what a resume changed
    splits: dict[str, str] = field(default_factory=dict)


class EarlyStopping(keras.callbacks.EarlyStopping):
    """Keras' EarlyStopping whose counters and best weights survive a resume."""

    def __init__(self, *args: Any, resume: tuple[dict[str, Any], list[Any] | None] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._resume = resume

    def on_train_begin(self, logs: Any = None) -> None:
        super().on_train_begin(logs)
        if self._resume is not None:
            saved, weights = self._resume
            self.wait, self.best, self.best_epoch = saved["wait"], saved["best"], saved["best_epoch"]
            self.best_weights = weights

    def state(self) -> dict[str, Any]:
        best = None if self.best is None else float(self.best)
        return {"wait": int(self.wait), "best": best, "best_epoch": int(self.best_epoch)}


class ReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """Keras' ReduceLROnPlateau whose counters survive a resume (the reduced rate itself is saved with the
    optimizer): a resumed run reduces at the same epochs as an uninterrupted one."""

    def __init__(self, *args: Any, resume: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume = resume

    def on_train_begin(self, logs: Any = None) -> None:
        super().on_train_begin(logs)
        if self._resume is not None:
            r = self._resume
            self.wait, self.best, self.cooldown_counter = r["wait"], r["best"], r["cooldown_counter"]

    def state(self) -> dict[str, Any]:
        best = None if self.best is None else float(self.best)
        return {"wait": int(self.wait), "best": best, "cooldown_counter": int(self.cooldown_counter)}


class Checkpoint(keras.callbacks.Callback):
    """Write RUN_DIR/checkpoint/ after an epoch (after early stopping has had its say): after the first, then at
    most every `every` seconds, and after the last. Saving costs ~30 ms, as much as a whole epoch of a small
    table, so a checkpoint per epoch would double its training time; a resumed run replays the epochs since the
    last one (the data order of an epoch depends only on (seed, epoch): the same history either way)."""

    def __init__(self, path: Path, progress: Progress, early_stopping: EarlyStopping | None,
                 every: float = 1.0, reduce_lr: ReduceLROnPlateau | None = None) -> None:
        super().__init__()
        self.path, self.progress, self.early_stopping, self.every = Path(path), progress, early_stopping, every
        self.reduce_lr = reduce_lr
        self._saved_at: float | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        interrupts.check()  # a Ctrl-C / SIGTERM whose exception was swallowed mid-epoch ends the run here
        s = self.progress
        s.epoch = epoch + 1
        s.history.append({k: float(v) for k, v in (logs or {}).items()})
        s.stopped = bool(self.model.stop_training)
        es = self.early_stopping
        s.early_stopping = es.state() if es is not None else None
        s.reduce_lr = self.reduce_lr.state() if self.reduce_lr is not None else None  # it ran before this callback
        last = s.stopped or s.epoch == self.params.get("epochs")
        if self._saved_at is None or last or time.monotonic() - self._saved_at >= self.every:
            self._save()  # at epoch end, before early stopping restores the best weights at train end

    def _save(self) -> None:
        es = self.early_stopping
        with artifacts.atomic_dir(self.path) as tmp:
            self.model.save(tmp / NETWORK)
            np.savez(tmp / SEEDS, *[keras.ops.convert_to_numpy(v) for v in seed_states(self.model)])
            if es is not None and es.best_weights is not None:
                np.savez(tmp / BEST, *es.best_weights)
            (tmp / STATE).write_text(json.dumps(asdict(self.progress), indent=1))
        self._saved_at = time.monotonic()


def load(path: Path) -> tuple[Any, Progress, list[Any] | None]:
    """The network, progress and best weights of the last complete epoch (safe_mode loading)."""
    path = Path(path)
    if not (path / STATE).exists():
        old = artifacts.previous_dir(path)  # killed while swapping two checkpoints: the old one is whole
        path = old if (old / STATE).exists() else path
    if not (path / STATE).exists():
        raise DataError(f"{path}: no checkpoint to resume from; run train without --resume")
    try:
        progress = Progress(**json.loads((path / STATE).read_text()))
        from .. import layers  # noqa: F401  (register bigmodel's layers, DPSequential for loading)

        network = keras.saving.load_model(path / NETWORK, safe_mode=True)
        if (path / SEEDS).exists():
            with np.load(path / SEEDS, allow_pickle=False) as npz:
                for i, v in enumerate(seed_states(network)):
                    v.assign(npz[f"arr_{i}"])
        best = None
        if (path / BEST).exists():
            with np.load(path / BEST, allow_pickle=False) as npz:
                best = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise DataError(f"{path}: the checkpoint is damaged ({e}); run train without --resume") from None
    return network, progress, best
