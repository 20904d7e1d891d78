"""`bigmodel train`: fit the configured Sequential on a prep folder's train split."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts, plots
from .config import Config, load_config
from .errors import ConfigError
from .schema import Schema

OnEpoch = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainResult:
    out: Path
    epochs_run: int
    best_epoch: int
    final: dict[str, float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "epochs_run": self.epochs_run, "best_epoch": self.best_epoch,
                "final": self.final, "seconds": round(self.seconds, 3)}


def resolve_config(prep: Path, config: Path | None, overrides: list[str]) -> Config:
    """The run's config: --config (default: the prep folder's own) with --set applied; the data and
    preprocess sections always come from the prep folder, since they were applied there."""
    prep_cfg_path = Path(prep) / artifacts.CONFIG
    artifacts.Folder(Path(prep), "prep").manifest()
    prep_cfg = load_config(prep_cfg_path)
    cfg = load_config(config or prep_cfg_path, overrides)
    return cfg.model_copy(update={"data": prep_cfg.data, "preprocess": prep_cfg.preprocess})


def load_split(prep: Path, split: str) -> pd.DataFrame:
    return pd.read_parquet(Path(prep) / artifacts.SPLIT_FILES[split])


def class_weights(cfg: Config, schema: Schema, y: np.ndarray) -> dict[int, float] | None:
    cw = cfg.train.class_weight
    if cw == "none" or not schema.is_classification:
        return None
    if cw == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(y)
        w = compute_class_weight("balanced", classes=present, y=y)
        return {int(c): float(v) for c, v in zip(present, w, strict=True)}
    unknown = sorted(set(cw) - set(schema.classes))
    if unknown:
        raise ConfigError(f"train.class_weight: unknown class(es) {', '.join(unknown)}; "
                          f"classes are {', '.join(schema.classes)}")
    return {i: float(cw.get(c, 1.0)) for i, c in enumerate(schema.classes)}


def run(prep: Path, out: Path, cfg: Config, on_epoch: OnEpoch | None = None) -> TrainResult:
    """Train on PREP_DIR's train split (validation on its val split) and write RUN_DIR."""
    prep_folder = artifacts.Folder(Path(prep), "prep")
    prep_manifest = prep_folder.manifest()
    schema = Schema.load(prep_folder.path)
    folder = artifacts.Folder(Path(out), "run")
    folder.prepare()

    from . import features, model
    from .keras_env import import_keras

    keras = import_keras(cfg.seed)
    started, t0 = artifacts.now(), time.perf_counter()
    encoder = features.preprocessing_model(schema)
    splits = {name: load_split(prep_folder.path, name) for name in ("train", "val")}
    x = {n: features.predict(encoder, features.to_inputs(df, schema, n)) for n, df in splits.items()}
    y = {n: schema.labels(df, n) for n, df in splits.items()}
    net = model.build(cfg, schema, x["train"].shape[1])

    has_val = len(y["val"]) > 0
    callbacks: list[Any] = []
    es = cfg.train.early_stopping
    monitor = es.monitor if has_val else es.monitor.removeprefix("val_")
    if es.enabled:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=es.patience, min_delta=es.min_delta,
                                                       restore_best_weights=True, verbose=0))
    if on_epoch is not None:
        total = cfg.train.epochs
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: on_epoch(epoch + 1, total, {k: float(v) for k, v in logs.items()})))
    hist = net.fit(
        x["train"], y["train"], validation_data=(x["val"], y["val"]) if has_val else None,
        epochs=cfg.train.epochs, batch_size=cfg.train.batch_size, shuffle=True, verbose=0,
        callbacks=callbacks, class_weight=class_weights(cfg, schema, y["train"]),
    )
    history = pd.DataFrame(hist.history)
    if monitor not in history:
        raise ConfigError(f"train.early_stopping.monitor: '{es.monitor}' is not logged; "
                          f"choose one of {', '.join(history.columns)}")
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    best = int(history["epoch"][history[monitor].idxmin() if "loss" in monitor else history[monitor].idxmax()])
    seconds = time.perf_counter() - t0

    with artifacts.atomic_path(folder / artifacts.MODEL) as tmp:
        net.save(tmp)
    with artifacts.atomic_path(folder / artifacts.HISTORY) as tmp:
        history.to_csv(tmp, index=False)
    plots.training_curves(history, folder / artifacts.CURVE)
    schema.save(folder.path)
    artifacts.write_text(folder / artifacts.CONFIG, cfg.to_yaml())
    final = {k: float(v) for k, v in history.iloc[best - 1].items() if k != "epoch"}
    folder.finish({
        "prep_dir": str(prep_folder.path.resolve()), "data": prep_manifest["data"], "splits": prep_manifest["splits"],
        "config_sha256": artifacts.sha256(folder / artifacts.CONFIG), "seed": cfg.seed,
        "versions": artifacts.versions(), "started": started, "finished": artifacts.now(),
        "seconds": round(seconds, 3), "epochs_run": len(history), "best_epoch": best,
        "task": schema.task, "target": schema.target,
    })
    return TrainResult(folder.path, len(history), best, final, seconds)
