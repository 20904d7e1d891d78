"""`train.strategy: multi_worker`: synchronous data-parallel training over several processes or hosts with
`tf.distribute.MultiWorkerMirroredStrategy`, configured by the standard `TF_CONFIG` environment variable.

Keras 3's `fit` does not run under this strategy (keras-team/keras#20585: "Attempt to convert a value
(PerReplica…)"), so the epochs are a small custom loop — the pattern of TensorFlow's own custom-training
guide: the network is built in the strategy's scope (its variables are mirrored on every worker), each global
batch of `train.batch_size` rows is auto-sharded across the workers by `tf.data`, `strategy.run` computes each
replica's loss and gradients, and the Keras optimizer all-reduces them before applying. Every worker holds the
same weights after every step, so every worker also computes the same validation metrics (on a plain copy of
the network) and takes the same early-stopping decision. Only the chief writes RUN_DIR.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .. import interrupts
from ..config import Config
from ..errors import ConfigError
from ..schema import Schema
from .rules import Stopper


def strategy() -> Any:
    """The strategy, from TF_CONFIG; made before any other TensorFlow op, as the strategy requires."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ConfigError("train.strategy multi_worker needs the TF_CONFIG environment variable "
                          '(e.g. {"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", '
                          '"index": 0}})')
    try:
        doc = json.loads(raw)
        workers = doc["cluster"]["worker"]
        doc["task"]["type"], doc["task"]["index"]  # noqa: B018  (present)
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"TF_CONFIG is not a cluster spec with a task: {raw[:200]}") from None
    if not workers:
        raise ConfigError("TF_CONFIG: cluster.worker lists no workers")
    from ..keras_env import tensorflow

    return tensorflow().distribute.MultiWorkerMirroredStrategy()


def is_chief(strat: Any) -> bool:
    """The chief (task `chief`, or worker 0 when there is none) is the one that writes artifacts."""
    return bool(strat.extended.should_checkpoint)


def _step(strat: Any, net: Any, batch: int) -> Any:
    """One synchronous training step on a global batch: each replica's loss (averaged over the global batch, plus
    the regularisation losses) and gradients, applied on every replica; the summed loss."""
    from ..keras_env import import_keras, tensorflow

    keras, tf = import_keras(), tensorflow()
    per_example = net.loss.call if isinstance(net.loss, keras.losses.Loss) else net.loss

    @tf.function
    def step(batch_xy: Any) -> Any:
        def replica(xb: Any, yb: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = tf.nn.compute_average_loss(per_example(yb, net(xb, training=True)), global_batch_size=batch)
                if net.losses:
                    loss += tf.nn.scale_regularization_loss(tf.add_n(net.losses))
            grads = tape.gradient(loss, net.trainable_variables)
            net.optimizer.apply_gradients(zip(grads, net.trainable_variables, strict=True))
            return loss

        return strat.reduce("SUM", strat.run(replica, args=batch_xy), axis=None)

    return step


def fit(strat: Any, cfg: Config, schema: Schema, x: dict[str, np.ndarray], y: dict[str, np.ndarray],
        monitor: str, on_epoch: Callable[[int, int, dict[str, float]], None] | None) -> tuple[Any, list[dict], int]:
    """Train; return a plain (undistributed) copy of the network with the kept weights, the history and the
    epoch (1-based) those weights are from: early stopping's best, else the last."""
    from .. import model
    from ..keras_env import import_keras, tensorflow

    import_keras()
    tf = tensorflow()
    n_inputs = x["train"].shape[1]
    with strat.scope():
        net = model.build(cfg, schema, n_inputs)
    plain = model.build(cfg, schema, n_inputs)  # same architecture, outside the strategy: for evaluation
    column = schema.task != "multiclass"  # binary / regression outputs have shape (batch, 1)
    y_train = y["train"].reshape(-1, 1).astype("float32") if column else y["train"]
    x_train = np.asarray(x["train"])  # a streamed split is read into memory here
    batch = cfg.train.batch_size
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    step = _step(strat, net, batch)
    es = cfg.train.early_stopping
    history: list[dict] = []
    epochs, patience = cfg.train.budget(len(y_train))
    stopper, best_weights = Stopper(monitor, patience, es.min_delta), None
    for epoch in range(epochs):
        # the same shuffle on every worker (seed, epoch); full global batches only, so every replica steps alike
        data = (tf.data.Dataset.from_tensor_slices((x_train, y_train))
                .shuffle(len(y_train), seed=cfg.seed + epoch, reshuffle_each_iteration=False)
                .batch(batch, drop_remainder=True).with_options(opts))
        losses = [float(step(b)) for b in strat.experimental_distribute_dataset(data)]
        interrupts.check()  # a Ctrl-C / SIGTERM whose exception was swallowed mid-epoch
        plain.set_weights(net.get_weights())
        row = {"loss": float(np.mean(losses)) if losses else float("nan")}
        if len(y["val"]):
            values = plain.evaluate(x["val"], y["val"], verbose=0, return_dict=True)
            row.update({f"val_{k}": float(v) for k, v in values.items()})
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch + 1, epochs, row)
        if es.enabled:
            if stopper.update(epoch + 1, row.get(monitor, row["loss"])):
                best_weights = net.get_weights()
            elif stopper.stopped:
                break
    if best_weights is not None:
        plain.set_weights(best_weights)
        return plain, history, stopper.best_round
    return plain, history, len(history)
