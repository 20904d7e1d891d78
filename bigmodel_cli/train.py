"""`bigmodel train`: fit the configured Sequential on a prep folder's train split."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts, plots
from .config import Config, load_config
from .errors import ConfigError, DataError
from .schema import Schema

OnEpoch = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainResult:
    out: Path | None  # None: a multi-worker non-chief, which writes nothing
    epochs_run: int
    best_epoch: int
    final: dict[str, float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"out": None if self.out is None else str(self.out), "epochs_run": self.epochs_run,
                "best_epoch": self.best_epoch, "final": self.final, "seconds": round(self.seconds, 3)}


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


def write_run(folder: artifacts.Folder, prep_folder: artifacts.Folder, prep_manifest: dict[str, Any], schema: Schema,
              cfg: Config, net: Any, history: pd.DataFrame, best: int, extra: dict[str, Any]) -> dict[str, float]:
    """Write a complete run folder (model.keras last but the manifest); return the best row's metrics.
    Shared by `train` and `federated`, so that evaluate / export / predict / compare read either."""
    with artifacts.atomic_path(folder / artifacts.HISTORY) as tmp:
        history.to_csv(tmp, index=False)
    plots.training_curves(history, folder / artifacts.CURVE)
    schema.save(folder.path)
    artifacts.write_json(folder / artifacts.REPORT, artifacts.read_json(prep_folder / artifacts.REPORT))
    artifacts.write_text(folder / artifacts.CONFIG, cfg.to_yaml())
    with artifacts.atomic_path(folder / artifacts.MODEL) as tmp:
        net.save(tmp)
    folder.finish({
        "prep_dir": str(prep_folder.path.resolve()), "data": prep_manifest["data"], "splits": prep_manifest["splits"],
        "config_sha256": artifacts.sha256(folder / artifacts.CONFIG), "seed": cfg.seed,
        "versions": artifacts.versions(), "finished": artifacts.now(), "task": schema.task, "target": schema.target,
        **extra,
    })
    return {k: float(v) for k, v in history.iloc[best - 1].items() if k not in ("epoch", "round")}


def decision_threshold(cfg: Config, schema: Schema, net: Any, x_val: np.ndarray, y_val: np.ndarray) -> float | None:
    """Binary tasks: the probability above which the positive class is predicted. `auto` picks, among the
    validation scores, the threshold that maximises evaluate.threshold_metric on the validation split."""
    if schema.task != "binary":
        return None
    if cfg.evaluate.threshold != "auto":
        return float(cfg.evaluate.threshold)
    if len(y_val) == 0:
        raise ConfigError("evaluate.threshold: 'auto' needs a validation split (data.split.val > 0)")
    from sklearn import metrics

    score = {"f1": metrics.f1_score, "accuracy": metrics.accuracy_score, "mcc": metrics.matthews_corrcoef,
             "balanced_accuracy": metrics.balanced_accuracy_score}[cfg.evaluate.threshold_metric]
    p = np.asarray(net.predict(x_val, verbose=0))[:, 0]
    candidates = np.unique(np.quantile(p, np.linspace(0, 1, 201)))
    values = [score(y_val, (p >= c).astype(int)) for c in candidates]
    return float(candidates[int(np.argmax(values))])


def train_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
                  drop_remainder: bool = False) -> tuple[Any, Any]:
    """One epoch of batches whose order depends only on (seed, epoch): the epoch is a variable that the
    returned callback sets when each epoch begins, read when Keras starts the epoch's iterator. So a resumed
    run sees the same batches as an uninterrupted one. Rows are gathered by index from in-memory tensors
    and prefetched."""
    import keras
    import tensorflow as tf

    n = len(x)
    ys = tf.constant(y)
    from .streaming import DiskMatrix

    if isinstance(x, DiskMatrix):  # streaming: each batch's rows are read from the file, in the same order
        width = x.shape[1]

        def rows(i: Any) -> Any:
            out = tf.numpy_function(x.take, [i], tf.float32, stateful=False)
            out.set_shape((None, width))
            return out
    else:
        xs = tf.constant(x)

        def rows(i: Any) -> Any:
            return tf.gather(xs, i)
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False)

    def epoch_order(_: Any) -> Any:
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=tf.stack([tf.constant(seed, tf.int64),
                                                                                       epoch.read_value()]))
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=drop_remainder)

    batches = tf.data.Dataset.from_tensors(0).flat_map(epoch_order)
    steps = n // batch_size if drop_remainder else -(-n // batch_size)
    ds = batches.map(lambda i: (rows(i), tf.gather(ys, i)))
    ds = ds.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(tf.data.AUTOTUNE)
    set_epoch = keras.callbacks.LambdaCallback(on_epoch_begin=lambda e, logs=None: epoch.assign(e))
    return ds, set_epoch


def run(prep: Path, out: Path, cfg: Config, on_epoch: OnEpoch | None = None, resume: bool = False) -> TrainResult:
    """Train on PREP_DIR's train split (validation on its val split) and write RUN_DIR.

    RUN_DIR's previous model stays untouched until the new one is complete; with `resume`, training
    continues from RUN_DIR/checkpoint (the last complete epoch of an interrupted run).
    """
    prep_folder = artifacts.Folder(Path(prep), "prep")
    prep_manifest = prep_folder.manifest()
    schema = Schema.load(prep_folder.path)
    folder = artifacts.Folder(Path(out), "run")
    multi = None
    if cfg.train.strategy == "multi_worker":
        from . import multi_worker
        from .keras_env import import_keras

        if resume:
            raise ConfigError("--resume is not available with train.strategy multi_worker")
        import_keras(cfg.seed)
        multi = multi_worker.strategy()  # before any other TensorFlow op
        if not multi_worker.is_chief(multi):  # trains in step with the chief, writes nothing
            return _train(prep_folder, prep_manifest, schema, None, cfg, on_epoch, False, multi)
    folder.prepare()
    with folder.lock():
        return _train(prep_folder, prep_manifest, schema, folder, cfg, on_epoch, resume, multi)


@contextlib.contextmanager
def _precision(cfg: Config) -> Iterator[None]:
    """Keras' global dtype policy for train.mixed_precision (for accelerators; float32 by default), restored after."""
    from .keras_env import import_keras

    keras = import_keras()
    policy = {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[cfg.train.mixed_precision]
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def distribution(cfg: Config) -> Any:
    """train.strategy: `default` (one device) or `mirrored` (tf.distribute.MirroredStrategy: every GPU of
    this host, or the CPU). `multi_worker` does not come here: see multi_worker.py."""
    import tensorflow as tf

    return tf.distribute.MirroredStrategy() if cfg.train.strategy == "mirrored" else tf.distribute.get_strategy()


def _train(prep_folder: artifacts.Folder, prep_manifest: dict[str, Any], schema: Schema,
           folder: artifacts.Folder | None, cfg: Config, on_epoch: OnEpoch | None, resume: bool,
           multi: Any = None) -> TrainResult:
    """Train and write the run folder (folder None: a multi-worker non-chief, which writes nothing)."""
    from . import features
    from .keras_env import import_keras

    import_keras(cfg.seed)
    started, t0 = artifacts.now(), time.perf_counter()
    config_sha = hashlib.sha256(cfg.to_yaml().encode()).hexdigest()
    encoder = features.preprocessing_model(schema)
    work: Any = contextlib.nullcontext()
    if "streaming" in prep_manifest:  # the train features stay on disk; batches are gathered from there
        from .streaming import encode_split

        work = tempfile.TemporaryDirectory(prefix=".features.", dir=folder.path if folder else None)
        x, y = {}, {}
        for n in ("train", "val"):
            x[n], y[n] = encode_split(prep_folder / artifacts.SPLIT_FILES[n], schema, encoder,
                                      Path(work.name) / f"{n}.f32", f"the {n} split")
        val = x["val"]
        x["val"] = np.asarray(val)  # a fraction of the rows: Keras validates from memory
        val.close()
    else:
        splits = {name: load_split(prep_folder.path, name) for name in ("train", "val")}
        x = {n: features.predict(encoder, features.to_inputs(df, schema, n)) for n, df in splits.items()}
        y = {n: schema.labels(df, n) for n, df in splits.items()}
    with work:
        try:
            return _fit(prep_folder, prep_manifest, schema, folder, cfg, on_epoch, resume, multi, x, y, started, t0,
                        config_sha)
        finally:
            if "streaming" in prep_manifest:
                x["train"].close()


def _fit(prep_folder: artifacts.Folder, prep_manifest: dict[str, Any], schema: Schema,
         folder: artifacts.Folder | None, cfg: Config, on_epoch: OnEpoch | None, resume: bool, multi: Any,
         x: dict[str, np.ndarray], y: dict[str, np.ndarray], started: str, t0: float, config_sha: str) -> TrainResult:
    from . import checkpoint, model
    from .keras_env import import_keras

    keras = import_keras()

    state, best_weights = checkpoint.State(config_sha256=config_sha, splits=prep_manifest["splits"]), None
    has_val = len(y["val"]) > 0
    es = cfg.train.early_stopping
    monitor = es.monitor if has_val else es.monitor.removeprefix("val_")
    if multi is not None:
        from . import multi_worker

        with _precision(cfg):
            net, state.history = multi_worker.fit(multi, cfg, schema, x, y, monitor, on_epoch)
        return _finish(prep_folder, prep_manifest, schema, folder, cfg, net, x, y, state.history, monitor,
                       started, t0, resume, None)
    assert folder is not None
    ckpt_dir = folder / artifacts.CHECKPOINT
    with _precision(cfg), distribution(cfg).scope():  # the network's layers take the policy as they are made
        if resume:
            net, state, best_weights = checkpoint.load(ckpt_dir)
            if state.config_sha256 != config_sha or state.splits != prep_manifest["splits"]:
                raise DataError(f"{ckpt_dir}: the interrupted run used another config or prep folder; "
                                f"resume with the same ones, or train without --resume")
        else:
            net = model.build(cfg, schema, x["train"].shape[1])

    stopper = None
    if es.enabled:
        saved = (state.early_stopping, best_weights) if resume and state.early_stopping else None
        stopper = checkpoint.EarlyStopping(monitor=monitor, patience=es.patience, min_delta=es.min_delta,
                                           restore_best_weights=True, verbose=0, resume=saved)
    callbacks: list[Any] = [c for c in (stopper, checkpoint.Checkpoint(ckpt_dir, state, stopper)) if c is not None]
    if cfg.train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(folder / artifacts.LOGS), write_graph=False))
    if on_epoch is not None:
        total = cfg.train.epochs
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: on_epoch(epoch + 1, total, {k: float(v) for k, v in logs.items()})))
    if state.epoch < cfg.train.epochs and not state.stopped:
        # DP-SGD's accounting assumes batches of one size: the last partial batch of an epoch is dropped
        data, set_epoch = train_dataset(x["train"], y["train"], cfg.train.batch_size, cfg.seed,
                                        drop_remainder=cfg.train.privacy is not None)
        net.fit(
            data, initial_epoch=state.epoch, epochs=cfg.train.epochs,
            validation_data=(x["val"], y["val"]) if has_val else None, verbose=0, callbacks=[set_epoch, *callbacks],
            shuffle=False,
            class_weight=class_weights(cfg, schema, y["train"]),
        )
    elif stopper is not None and best_weights is not None:
        net.set_weights(best_weights)  # the interrupted run had finished training: only its ending is left

    result = _finish(prep_folder, prep_manifest, schema, folder, cfg, net, x, y, state.history, monitor, started, t0,
                     resume, ckpt_dir)
    return result


def _finish(prep_folder: artifacts.Folder, prep_manifest: dict[str, Any], schema: Schema,
            folder: artifacts.Folder | None, cfg: Config, net: Any, x: dict[str, np.ndarray], y: dict[str, np.ndarray],
            rows: list[dict[str, float]], monitor: str, started: str, t0: float, resume: bool,
            ckpt_dir: Path | None) -> TrainResult:
    """The decision threshold, ε, the history and the best epoch; then the run folder (unless folder is None)."""
    es = cfg.train.early_stopping
    threshold = decision_threshold(cfg, schema, net, x["val"], y["val"])
    privacy = None
    if (p := cfg.train.privacy) is not None:
        from .privacy import epsilon

        privacy = {"epsilon": epsilon(len(y["train"]), cfg.train.batch_size, len(rows), p.noise_multiplier,
                                      p.delta), "delta": p.delta, "noise_multiplier": p.noise_multiplier,
                   "l2_norm_clip": p.l2_norm_clip, "accountant": "rdp (dp-accounting)"}
    history = pd.DataFrame(rows)
    if monitor not in history:
        raise ConfigError(f"train.early_stopping.monitor: '{es.monitor}' is not logged; "
                          f"choose one of {', '.join(history.columns)}")
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    best = int(history["epoch"][history[monitor].idxmin() if "loss" in monitor else history[monitor].idxmax()])
    seconds = time.perf_counter() - t0
    if folder is None:  # a multi-worker non-chief
        final = {k: float(v) for k, v in history.iloc[best - 1].items() if k != "epoch"}
        return TrainResult(None, len(history), best, final, seconds)
    extra = {"workers": len(json.loads(os.environ["TF_CONFIG"])["cluster"].get("worker", []))} \
        if cfg.train.strategy == "multi_worker" else {}
    final = write_run(folder, prep_folder, prep_manifest, schema, cfg, net, history, best, {
        "started": started, "seconds": round(seconds, 3), "epochs_run": len(history), "best_epoch": best,
        "resumed": resume, "threshold": threshold, "privacy": privacy, **extra})
    if ckpt_dir is not None:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    return TrainResult(folder.path, len(history), best, final, seconds)
