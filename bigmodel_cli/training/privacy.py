"""Record-level differential privacy for `train`: DP-SGD as a Keras 3 `train_step` (TensorFlow backend),
and its privacy accounting with Google's `dp-accounting` library.

DP-SGD: the batch is split into microbatches (one example each by default); the gradient of each
microbatch's mean loss is clipped to `l2_norm_clip` in global L2 norm, the clipped gradients are summed,
Gaussian noise with standard deviation `noise_multiplier * l2_norm_clip` is added, and the sum is divided
by the number of microbatches. ε is computed at the configured δ by the RDP accountant for the subsampled
Gaussian mechanism, with sampling rate batch/rows and one step per batch (the usual approximation of
shuffled fixed-size batches by Poisson sampling, as in TensorFlow Privacy's tutorials).

The noise comes from a generator seeded by the OS's entropy, never from the run's `seed` (which the run folder
records: noise regenerated from it could be subtracted) and never saved with the model: a DP run is not
reproducible bit for bit, while its initialisation and data order still follow the seed.
"""

from __future__ import annotations

import secrets
from typing import Any

from ..errors import ConfigError
from ..keras_env import import_keras, tensorflow

keras: Any
tf: Any
keras, tf = import_keras(), tensorflow()  # at import: DPSequential subclasses keras.Sequential


class _Untracked:
    """Holds the noise generator out of Keras' and TensorFlow's tracking, so that its state (from which every
    noise draw could be recomputed) is neither saved in model.keras nor exported."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator


def epsilon(rows: int, batch_size: int, epochs: int, noise_multiplier: float, delta: float) -> float | None:
    """ε of DP-SGD after `epochs` passes over `rows` examples in batches of `batch_size` (RDP accountant);
    None without noise (clipping alone gives no guarantee)."""
    try:
        import dp_accounting as dpa
        from dp_accounting import rdp
    except ImportError:
        raise ConfigError("train.privacy needs the dp-accounting package: pip install 'bigmodel[privacy]'") from None
    if noise_multiplier == 0:
        return None
    q = min(1.0, batch_size / rows)
    steps = epochs * (rows // batch_size)
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(noise_multiplier)), steps)
    accountant = rdp.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def per_example_loss(loss: Any, y_true: Any, y_pred: Any) -> Any:
    """One loss value per example, however the loss was named: a function (`binary_crossentropy`) returns them; a
    `keras.losses.Loss` object (`BinaryCrossentropy`) reduces the batch to one number when called, so its unreduced
    `call` is used (clipping that one number's gradient would clip per batch, not per record)."""
    if isinstance(loss, keras.losses.Loss):
        return loss.call(y_true, y_pred)
    return loss(y_true, y_pred)


@keras.saving.register_keras_serializable(package="bigmodel")
class DPSequential(keras.Sequential):
    """A Sequential trained with DP-SGD; it predicts, saves and loads (safe_mode) like any Sequential."""

    def __init__(self, *args: Any, l2_norm_clip: float = 1.0, noise_multiplier: float = 1.0,
                 microbatches: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.l2_norm_clip = float(l2_norm_clip)
        self.noise_multiplier = float(noise_multiplier)
        self.microbatches = microbatches
        # from_non_deterministic_state is refused under op determinism; an explicit seed from the OS is the same
        self._noise = _Untracked(tf.random.Generator.from_seed(secrets.randbits(63)))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "l2_norm_clip": self.l2_norm_clip,
                "noise_multiplier": self.noise_multiplier, "microbatches": self.microbatches}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> DPSequential:
        config = dict(config)
        dp = {k: config.pop(k) for k in ("l2_norm_clip", "noise_multiplier", "microbatches") if k in config}
        model = super().from_config(config, custom_objects=custom_objects)  # Sequential's, which drops extra keys
        for key, value in dp.items():
            setattr(model, key, value)
        return model

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            target = y
            if y.shape.rank == 1 and y_pred.shape[-1] == 1:  # binary / regression: (n,) labels, (n, 1) outputs
                target = tf.cast(tf.expand_dims(y, -1), y_pred.dtype)
            per_example = tf.reshape(per_example_loss(self.loss, target, y_pred), [-1])
            groups = self.microbatches or tf.shape(per_example)[0]
            micro = tf.reduce_mean(tf.reshape(per_example, [groups, -1]), axis=1)
        # weight regularizers (a layer's l2, federated FedProx's proximal term) depend on the weights alone, not on
        # any example: their gradient is added after the clipping and noise, at no privacy cost
        with tf.GradientTape() as weight_tape:
            terms = self._get_regularization_losses()
            penalty = tf.add_n(terms) if terms else None
        jacobians = tape.jacobian(micro, variables)  # one gradient per microbatch: (groups, *variable.shape)
        squares = [tf.reduce_sum(tf.reshape(tf.square(j), [groups, -1]), axis=1) for j in jacobians]
        norms = tf.sqrt(tf.add_n(squares))
        scale = tf.minimum(1.0, self.l2_norm_clip / tf.maximum(norms, 1e-12))
        n = tf.cast(groups, tf.float32)
        grads = []
        for j, v in zip(jacobians, variables, strict=True):
            clipped = tf.tensordot(scale, tf.reshape(j, [groups, -1]), axes=1)
            noise = self._noise.generator.normal(tf.shape(clipped), stddev=self.noise_multiplier * self.l2_norm_clip)
            grads.append(tf.reshape((clipped + noise) / n, tf.shape(v)))
        if penalty is not None:
            grads = [g if r is None else g + r for g, r in zip(grads, weight_tape.gradient(penalty, variables),
                                                              strict=True)]
        self.optimizer.apply(grads, variables)
        loss = tf.reduce_mean(per_example)
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(y, y_pred)
        return {m.name: m.result() for m in self.metrics}
