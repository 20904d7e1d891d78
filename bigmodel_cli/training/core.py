"""One training from a prep folder to a run folder — what `bigmodel train` does and each of `tune`'s trials: encode the
splits, build (or resume) the Sequential, fit it with early stopping and checkpoints (or multi-worker), refit on
train + val, pick the decision threshold, write the run folder. The rules it shares with the other trainers are in
rules.py."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
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

from .. import artifacts, interrupts, portable, tracking
from ..config import Config
from ..errors import BigModelError, ConfigError, DataError
from ..folders import Prep, open_prep, write_run
from ..gates import lower_is_better
from .rules import (
    RESUMABLE,
    class_weights,
    config_sha256,
    decision_threshold,
    monitored,
    resume_changes,
    schedule,
)

OnEpoch = Callable[[int, int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainResult:
    out: Path | None  # None: a multi-worker non-chief, which writes nothing
    epochs_run: int
    best_epoch: int
    final: dict[str, float]
    seconds: float
    tracking: dict[str, Any] | None = None  # the MLflow run logged to (train --track)
    warnings: tuple[str, ...] = ()  # e.g. a tracking server that stopped answering

    def to_dict(self) -> dict[str, Any]:
        return {"out": None if self.out is None else str(self.out), "epochs_run": self.epochs_run,
                "best_epoch": self.best_epoch, "final": self.final, "seconds": round(self.seconds, 3),
                "tracking": self.tracking, "warnings": list(self.warnings)}


@dataclass(frozen=True)
class _Run:
    """One training's context, handed from pass to pass."""

    prep: Prep
    folder: artifacts.Folder | None  # None: a multi-worker non-chief, which writes nothing
    cfg: Config
    on_epoch: OnEpoch | None
    resume: bool
    multi: Any  # the MultiWorkerMirroredStrategy, or None
    started: str
    t0: float
    portable: bool = True  # write model.onnx as train.portable asks
    tracking: dict[str, Any] | None = None  # the manifest's "tracking" entry (tracking.Tracker.record)

    @functools.cached_property
    def config_sha256(self) -> str:
        return config_sha256(self.cfg)

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.folder.path if self.folder else ".") / artifacts.CHECKPOINT


@dataclass(frozen=True)
class _Encoded:
    """The train and val splits as the network's input matrix and labels."""

    x: dict[str, Any]  # np.ndarray, or a streaming.DiskMatrix for a streamed train split
    y: dict[str, np.ndarray]

    @property
    def has_val(self) -> bool:
        return len(self.y["val"]) > 0


@dataclass(frozen=True)
class _Fit:
    """What the epochs produced: the network (best weights), the history rows, the best epoch (1-based)."""

    net: Any
    history: list[dict[str, float]]
    best_epoch: int
    refit: bool = False  # net was refitted on train + val
    threshold: float | None = None  # binary: the decision threshold, picked on val before any refit
    initial: list[Any] | None = None  # model.initial_state of net before it trained (a new network, a refit ahead)


def train_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int,
                  drop_remainder: bool = False) -> tuple[Any, Any]:
    """One epoch of batches whose order depends only on (seed, epoch): the epoch is a variable that the
    returned callback sets when each epoch begins, read when Keras starts the epoch's iterator. So a resumed
    run sees the same batches as an uninterrupted one. Rows are gathered by index from in-memory tensors
    and prefetched."""
    from ..keras_env import import_keras, tensorflow

    keras, tf = import_keras(), tensorflow()
    n = len(x)
    ys = tf.constant(y)
    from ..streaming import DiskMatrix

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


@dataclass(frozen=True)
class TrainOptions:
    """What `train` (or one of tune's trials) is asked to do."""

    prep: Path  # the prep folder
    out: Path  # the run folder to write
    config: Config  # resolved (config.resolve)
    resume: bool = False  # continue from out/checkpoint
    portable: bool = True  # model.onnx as train.portable asks (tune's trials: not)
    tracking_parent: str | None = None  # the MLflow run this one is nested under (a tune study's, for its trials)


def run(options: TrainOptions, on_event: OnEpoch | None = None) -> TrainResult:
    """Train on the prep folder's train split (validation on its val split) and write the run folder; `on_event`
    hears every epoch.

    The run folder's previous model stays untouched until the new one is complete; with `resume`, training
    continues from its checkpoint (the last complete epoch of an interrupted run).
    """
    cfg, on_epoch, resume = options.config, on_event, options.resume
    prepared = open_prep(Path(options.prep))
    if options.portable:
        portable.why_not(cfg, prepared.schema)  # train.portable: true that cannot be kept: say so before training
    folder = artifacts.Folder(Path(options.out), "run")
    multi = None
    if cfg.train.strategy == "multi_worker":
        from ..keras_env import import_keras
        from . import multi_worker

        if resume:
            raise ConfigError("--resume is not available with train.strategy multi_worker")
        import_keras(cfg.seed)
        multi = multi_worker.strategy()  # before any other TensorFlow op
        if not multi_worker.is_chief(multi):  # trains in step with the chief, writes nothing
            return _train(_Run(prepared, None, cfg, on_epoch, False, multi, artifacts.now(), time.perf_counter()))
    existed = folder.path.exists()
    folder.prepare()
    with folder.lock():
        partial = folder / artifacts.LOGS_PARTIAL
        if not resume:
            shutil.rmtree(partial, ignore_errors=True)  # an interrupted run's logs, not resumed
        tracker = None
        try:
            tracker = tracking.start(cfg, prepared, folder.path, "train",  # (required and down: refused here)
                                     options.tracking_parent)
            result = _train(_Run(prepared, folder, cfg, tracker.epochs(on_epoch) if tracker else on_epoch, resume,
                                 multi, artifacts.now(), time.perf_counter(), options.portable,
                                 tracker.record() if tracker else None))
            if tracker is not None:
                tracker.finish(folder.path)
        except BaseException as e:  # a failed or interrupted run leaves RUN_DIR as it was (its checkpoint aside)
            if tracker is not None:
                tracker.finish(None, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            shutil.rmtree(partial, ignore_errors=True)
            if isinstance(e, BigModelError) and not resume:  # nothing worth resuming (a bad config, divergence)
                shutil.rmtree(folder / artifacts.CHECKPOINT, ignore_errors=True)
            if not existed:
                (folder / artifacts.LOCK).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    folder.path.rmdir()  # only if nothing else is in it
            raise
    if tracker is None:
        return result
    tracker.check()  # required tracking that failed while training: exit 2 now, the run folder complete
    return dataclasses.replace(result, tracking=tracker.record(), warnings=tuple(tracker.warnings))


@contextlib.contextmanager
def _precision(cfg: Config) -> Iterator[None]:
    """Keras' global dtype policy for train.mixed_precision (for accelerators; float32 by default), restored after."""
    from ..keras_env import import_keras

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
    from ..keras_env import tensorflow

    tf = tensorflow()
    return tf.distribute.MirroredStrategy() if cfg.train.strategy == "mirrored" else tf.distribute.get_strategy()


def _train(ctx: _Run) -> TrainResult:
    """Encode the splits, fit, write the run folder."""
    from ..keras_env import import_keras

    import_keras(ctx.cfg.seed)
    with _encoded(ctx) as data:
        rows = data.y.get("train")
        n = len(rows) if rows is not None and hasattr(rows, "__len__") else None
        if ctx.cfg.train.privacy is not None and n is not None and n < ctx.cfg.train.batch_size:
            raise ConfigError(f"train.batch_size {ctx.cfg.train.batch_size} is more than the {n} train rows: "
                              f"DP-SGD trains on whole batches only, so it would not train at all; set "
                              f"train.batch_size to at most {n}")
        if ctx.multi is not None:
            from . import multi_worker

            with _precision(ctx.cfg):
                fit = _Fit(*multi_worker.fit(ctx.multi, ctx.cfg, ctx.prep.schema, data.x, data.y,
                                             monitored(ctx.cfg, data.has_val), ctx.on_epoch))
        else:
            fit = _fit(ctx, data)
            _refuse_diverged(fit)
            # the threshold is picked on val by the network that never trained on it
            fit = dataclasses.replace(fit, threshold=decision_threshold(ctx.cfg, ctx.prep.schema, fit.net,
                                                                        data.x["val"], data.y["val"]))
            if refits(ctx, data):
                fit = _refit(ctx, data, fit)
        return _finish(ctx, data, fit)


def _refuse_diverged(fit: _Fit) -> None:
    """NaN or inf in the kept weights (early stopping restores the best epoch, which may still be finite)."""
    if all(np.isfinite(w).all() for w in fit.net.get_weights()):
        return
    losses = np.array([float(h.get("loss", 0.0)) for h in fit.history])
    at = f" at epoch {int(np.flatnonzero(~np.isfinite(losses))[0]) + 1}" if (~np.isfinite(losses)).any() else ""
    raise DataError(f"train: training diverged (the loss became NaN{at}); lower train.optimizer.learning_rate, or "
                    f"look for extreme values in the data (the data report lists each column's range)")


def refits(ctx: _Run, data: _Encoded) -> bool:
    """train.refit applies: early stopping chose the epoch count on a val split, the train split is in memory,
    no DP-SGD (a second pass over the rows would need its own accounting), not multi-worker."""
    t = ctx.cfg.train
    return (t.refit and t.early_stopping.enabled and data.has_val and t.privacy is None and not ctx.prep.streamed
            and ctx.multi is None)


def _refit(ctx: _Run, data: _Encoded, fit: _Fit) -> _Fit:
    """A fresh network (same seed) trained on train + val for the epochs early stopping chose (as AutoGluon's
    refit_full): every labelled row the user gave trains the model that is kept. The fresh network is the first
    fit's, reset to its initial state (model.reset): its train step is traced already."""
    from .. import model
    from ..keras_env import import_keras

    keras = import_keras(ctx.cfg.seed)
    cfg = ctx.cfg
    x = np.concatenate([data.x["train"], data.x["val"]])
    y = np.concatenate([data.y["train"], data.y["val"]])
    if fit.initial is not None:  # the first fit's network, as it was built: its traced train step is kept
        net = fit.net
        model.reset(net, fit.initial)
    else:  # (a resumed run's network came from its checkpoint)
        with _precision(cfg), distribution(cfg).scope():
            net = model.build(cfg, ctx.prep.schema, x.shape[1])
    batches, set_epoch = train_dataset(x, y, cfg.train.batch_size, cfg.seed)
    callbacks: list[Any] = [set_epoch]
    if (scheduler := schedule(cfg, cfg.train.budget(len(data.y["train"]))[0])) is not None:  # the first fit's curve
        callbacks.append(scheduler)
    if cfg.train.reduce_lr is not None:  # the same schedule, by the epochs the first fit reduced at
        lrs = [float(row["learning_rate"]) for row in fit.history[:fit.best_epoch] if "learning_rate" in row]
        if lrs:
            callbacks.append(keras.callbacks.LearningRateScheduler(lambda epoch, lr: lrs[min(epoch, len(lrs) - 1)]))
    if ctx.on_epoch is not None:  # progress of the refit too: on a large table it takes as long as the fit
        report, total = ctx.on_epoch, fit.best_epoch
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: report(
            epoch + 1, total, {f"refit_{k}": float(v) for k, v in logs.items()})))
    callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: interrupts.check()))
    net.fit(batches, epochs=fit.best_epoch, verbose=0, callbacks=callbacks, shuffle=False,
            class_weight=class_weights(cfg, ctx.prep.schema, y))
    return dataclasses.replace(fit, net=net, refit=True, initial=None)


@contextlib.contextmanager
def _encoded(ctx: _Run) -> Iterator[_Encoded]:
    """The splits through the fitted preprocessing: in memory, or (a streamed prep folder) the train features
    in a temporary on-disk matrix that batches are gathered from."""
    from .. import features

    schema = ctx.prep.schema
    encoder = features.preprocessing_model(schema)
    if not ctx.prep.streamed:
        splits = {name: ctx.prep.split(name) for name in ("train", "val")}
        yield _Encoded({n: features.apply(encoder, features.to_inputs(df, schema, n)) for n, df in splits.items()},
                       {n: schema.labels(df, n) for n, df in splits.items()})
        return
    from ..streaming import encode_split

    with tempfile.TemporaryDirectory(prefix=".features.", dir=ctx.folder.path if ctx.folder else None) as work:
        x, y = {}, {}
        for n in ("train", "val"):
            x[n], y[n] = encode_split(ctx.prep.split_path(n), schema, encoder, Path(work) / f"{n}.f32",
                                      f"the {n} split")
        val = x["val"]
        x["val"] = np.asarray(val)  # a fraction of the rows: Keras validates from memory
        val.close()
        try:
            yield _Encoded(x, y)
        finally:
            x["train"].close()


def _network(ctx: _Run, width: int) -> tuple[Any, Any, list[Any] | None]:
    """A new network for `width` encoded features, or (resuming) the checkpoint's, with the progress so far and
    early stopping's best weights; a checkpoint of another prep folder or config is refused."""
    from .. import model
    from . import checkpoint

    cfg = ctx.cfg
    progress = checkpoint.Progress(config_sha256=ctx.config_sha256, splits=ctx.prep.manifest["splits"],
                                   config=cfg.model_dump(mode="json"))
    with _precision(cfg), distribution(cfg).scope():  # the network's layers take the policy as they are made
        if not ctx.resume:
            return model.build(cfg, ctx.prep.schema, width), progress, None
        net, progress, best_weights = checkpoint.load(ctx.checkpoint_dir)
    if progress.splits != ctx.prep.manifest["splits"]:
        raise DataError(f"{ctx.checkpoint_dir}: the interrupted run used another prep folder; resume with "
                        f"the same one, or train without --resume")
    changed = resume_changes(progress, cfg, ctx.config_sha256)
    if changed:
        raise DataError(f"{ctx.checkpoint_dir}: the interrupted run used another config ({', '.join(changed)} "
                        f"differ); only {', '.join(RESUMABLE)} may change on --resume")
    progress.config, progress.config_sha256 = cfg.model_dump(mode="json"), ctx.config_sha256
    return net, progress, best_weights


def _fit(ctx: _Run, data: _Encoded) -> _Fit:
    """Build (or, resuming, reload) the network and run the epochs with early stopping and checkpoints."""
    from .. import model
    from ..keras_env import import_keras
    from . import checkpoint

    keras = import_keras()
    cfg, es = ctx.cfg, ctx.cfg.train.early_stopping
    net, progress, best_weights = _network(ctx, data.x["train"].shape[1])
    initial = model.initial_state(net) if not ctx.resume and refits(ctx, data) else None
    monitor = monitored(cfg, data.has_val)
    epochs, patience = cfg.train.budget(len(data.y["train"]))
    stopper = None
    if es.enabled:
        saved = (progress.early_stopping, best_weights) if ctx.resume and progress.early_stopping else None
        stopper = checkpoint.EarlyStopping(monitor=monitor, patience=patience, min_delta=es.min_delta,
                                           mode="min" if lower_is_better(monitor) else "max",
                                           restore_best_weights=True, verbose=0, resume=saved)
    reducer = None
    if (r := cfg.train.reduce_lr) is not None:
        reducer = checkpoint.ReduceLROnPlateau(
            monitor=monitor, factor=r.factor, patience=r.patience, min_lr=r.min_lr,
            mode="min" if lower_is_better(monitor) else "max", verbose=0,
            resume=progress.reduce_lr if ctx.resume else None)
    saver = checkpoint.Checkpoint(ctx.checkpoint_dir, progress, stopper, cfg.train.checkpoint_seconds, reducer)
    callbacks: list[Any] = [c for c in (schedule(cfg, epochs), reducer, stopper, saver) if c is not None]
    callbacks.append(keras.callbacks.TerminateOnNaN())  # a diverged run stops at once (and is refused in _finish)
    if cfg.train.tensorboard and ctx.folder is not None:  # (a multi-worker non-chief writes nothing)
        # into a temporary folder: RUN_DIR/logs is replaced only when the run is complete
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(ctx.folder / artifacts.LOGS_PARTIAL),
                                                     write_graph=False))
    if ctx.on_epoch is not None:
        report, total = ctx.on_epoch, epochs
        callbacks.append(keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: report(epoch + 1, total, {k: float(v) for k, v in logs.items()})))
    if progress.epoch < epochs and not progress.stopped:
        # DP-SGD's accounting assumes batches of one size: the last partial batch of an epoch is dropped
        batches, set_epoch = train_dataset(data.x["train"], data.y["train"], cfg.train.batch_size, cfg.seed,
                                           drop_remainder=cfg.train.privacy is not None)
        net.fit(batches, initial_epoch=progress.epoch, epochs=epochs,
                validation_data=(data.x["val"], data.y["val"]) if data.has_val else None, verbose=0,
                callbacks=[set_epoch, *callbacks], shuffle=False,
                class_weight=class_weights(cfg, ctx.prep.schema, data.y["train"]))
    elif stopper is not None and best_weights is not None:
        net.set_weights(best_weights)  # the interrupted run had finished training: only its ending is left
    # the weights kept are early stopping's best epoch (Keras restores them at the end), else the last epoch's
    if stopper is not None and progress.early_stopping and progress.early_stopping.get("best") is not None:
        best = int(progress.early_stopping["best_epoch"]) + 1
    else:
        best = len(progress.history)
    return _Fit(net, progress.history, best, initial=initial)


def _finish(ctx: _Run, data: _Encoded, fit: _Fit) -> TrainResult:
    """The decision threshold, ε and the history; then the run folder (unless ctx.folder is None)."""
    cfg, es = ctx.cfg, ctx.cfg.train.early_stopping
    history = pd.DataFrame(fit.history)
    monitor = monitored(cfg, data.has_val)
    if es.enabled and monitor not in history:
        raise ConfigError(f"train.early_stopping.monitor: '{es.monitor}' is not logged; "
                          f"choose one of {', '.join(history.columns)}")
    history.insert(0, "epoch", np.arange(1, len(history) + 1))
    _refuse_diverged(fit)  # the refit's too
    seconds = time.perf_counter() - ctx.t0
    if ctx.folder is None:  # a multi-worker non-chief
        final = {k: float(v) for k, v in history.iloc[fit.best_epoch - 1].items() if k != "epoch"}
        return TrainResult(None, len(history), fit.best_epoch, final, seconds)
    extra = {"workers": len(json.loads(os.environ["TF_CONFIG"])["cluster"].get("worker", []))} \
        if cfg.train.strategy == "multi_worker" else {}
    final = write_run(ctx.folder, ctx.prep, cfg, fit.net, history, fit.best_epoch, {
        "started": ctx.started, "seconds": round(seconds, 3), "epochs_run": len(history),
        "best_epoch": fit.best_epoch, "resumed": ctx.resume, "refit": fit.refit,
        "privacy": _privacy(cfg, len(data.y["train"]), len(history)),
        "threshold": fit.threshold if fit.threshold is not None else decision_threshold(
            cfg, ctx.prep.schema, fit.net, data.x["val"], data.y["val"]),
        **({"tracking": ctx.tracking} if ctx.tracking else {}), **extra}, graph=ctx.portable)
    if (ctx.folder / artifacts.LOGS_PARTIAL).exists():
        artifacts.replace_dir(ctx.folder / artifacts.LOGS_PARTIAL, ctx.folder / artifacts.LOGS)
    shutil.rmtree(ctx.checkpoint_dir, ignore_errors=True)
    return TrainResult(ctx.folder.path, len(history), fit.best_epoch, final, seconds)


def _privacy(cfg: Config, rows: int, epochs: int) -> dict[str, Any] | None:
    """DP-SGD's guarantee for the manifest: ε at δ after `epochs` epochs over `rows` rows."""
    if (p := cfg.train.privacy) is None:
        return None
    from .privacy import epsilon

    return {"epsilon": epsilon(rows, cfg.train.batch_size, epochs, p.noise_multiplier, p.delta), "delta": p.delta,
            "noise_multiplier": p.noise_multiplier, "l2_norm_clip": p.l2_norm_clip, "accountant": "rdp (dp-accounting)"}
