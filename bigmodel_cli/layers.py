"""bigmodel's own Keras layers and loss for tabular data, registered so that a config can name them in
`model.layers` and a saved model loads with `safe_mode=True`.

Every op here is one that tf2onnx (opset 17) and TFLite's builtins carry (mul, add, cos, rsqrt, batch matmul,
transpose, reshape, concat, sin, floor): no einsum, SELU or softplus.
"""

from __future__ import annotations

import math
from typing import Any

from .keras_env import import_keras

keras: Any = import_keras()  # at import: the classes below subclass Keras
ops = keras.ops


def smooth_clip(x: Any, bound: float = 3.0) -> Any:
    """x / sqrt(1 + (x / bound)^2), for tensors and NumPy arrays alike."""
    return x * ops.rsqrt(1.0 + ops.square(x / bound))


@keras.saving.register_keras_serializable(package="bigmodel")
class SmoothClip(keras.layers.Layer):
    """x / sqrt(1 + (x / bound)^2): close to x near 0, bounded by ±bound (RealMLP's smooth clipping after robust
    scaling). Shapes: (n, d) -> (n, d)."""

    def __init__(self, bound: float = 3.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bound = float(bound)

    def call(self, x: Any) -> Any:
        return smooth_clip(x, self.bound)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "bound": self.bound}


@keras.saving.register_keras_serializable(package="bigmodel")
class Cycles(keras.layers.Layer):
    """Where a number stands within each of `periods`, as a point on the unit circle: [sin 2πr/p, cos 2πr/p]
    with r = x mod p, for each period p (a date's days since 1970: the time of day, the day of the week and of
    the year, so that Sunday sits next to Monday and 31 December next to 1 January). The remainder comes first,
    so float32 keeps the phase to minutes. Shapes: (n, 1) -> (n, 2 * len(periods))."""

    def __init__(self, periods: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.periods = [float(p) for p in periods]

    def call(self, x: Any) -> Any:
        parts = []
        for p in self.periods:
            angle = (x - ops.floor(x / p) * p) * (2 * math.pi / p)
            parts += [ops.sin(angle), ops.cos(angle)]
        return ops.concatenate(parts, axis=1)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0], 2 * len(self.periods))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "periods": self.periods}


@keras.saving.register_keras_serializable(package="bigmodel")
class PiecewiseLinear(keras.layers.Layer):
    """A scaled numeric column and its piecewise-linear encoding (Gorishniy et al. 2022) over bins with the
    given sorted `edges` (in the scaled units): bin t is clip((x - e_t) / (e_t+1 - e_t), 0, 1), so that the next
    layer can fit a different slope in every quantile bin, as a tree splits. Shapes: (n, 1) -> (n, len(edges))."""

    def __init__(self, edges: list[float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.edges = [float(e) for e in edges]

    def call(self, x: Any) -> Any:
        left = ops.convert_to_tensor([self.edges[:-1]], dtype=x.dtype)
        width = ops.convert_to_tensor([[b - a for a, b in zip(self.edges, self.edges[1:], strict=False)]],
                                      dtype=x.dtype)
        return ops.concatenate([x, ops.clip((x - left) / width, 0.0, 1.0)], axis=1)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0], len(self.edges))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "edges": self.edges}


@keras.saving.register_keras_serializable(package="bigmodel")
class PeriodicEmbeddings(keras.layers.Layer):
    """Numerical embeddings (Gorishniy et al. 2022; RealMLP's PBLD): each numeric column x_j of the input vector
    becomes [x_j, W_j cos(2π (f_j x_j + b_j)) + c_j], with `frequencies` trainable frequencies f_j ~ N(0, sigma²)
    and phases b_j per column, and a per-column linear map to `dim` values. The other columns (one-hot,
    text) pass through. Shapes: (n, d) -> (n, d - m + m * (dim + 1)) for m numeric `columns`.

    `columns`: the positions of the numeric columns in the input vector (model.build fills them in from the
    schema when a config names the layer without them)."""

    def __init__(self, columns: list[int] | None = None, frequencies: int = 16, dim: int = 4, sigma: float = 0.1,
                 activation: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.columns = None if columns is None else [int(c) for c in columns]
        self.frequencies, self.dim, self.sigma = int(frequencies), int(dim), float(sigma)
        self.activation = keras.activations.get(activation)
        self._activation_name = activation

    def build(self, input_shape: Any) -> None:
        width = int(input_shape[-1])
        cols = list(range(width)) if self.columns is None else self.columns
        if any(not 0 <= c < width for c in cols):
            raise ValueError(f"PeriodicEmbeddings: columns {cols} are not all positions of a {width}-wide input")
        self._cols, self._rest = cols, [i for i in range(width) if i not in set(cols)]
        m, k = len(cols), self.frequencies
        self.freq = self.add_weight(shape=(m, k), name="frequencies",
                                    initializer=keras.initializers.RandomNormal(stddev=self.sigma))
        self.phase = self.add_weight(shape=(m, k), name="phases",
                                     initializer=keras.initializers.RandomUniform(-0.5, 0.5))
        limit = 1 / math.sqrt(k)
        self.kernel = self.add_weight(shape=(m, k, self.dim), name="kernel",
                                      initializer=keras.initializers.RandomUniform(-limit, limit))
        self.bias = self.add_weight(shape=(m, self.dim), name="bias",
                                    initializer=keras.initializers.RandomUniform(-limit, limit))

    def call(self, x: Any) -> Any:
        num = ops.expand_dims(ops.take(x, self._cols, axis=1), 2)  # (n, m, 1); no new-axis slice (not in TFLite)
        z = ops.cos(2 * math.pi * (num * self.freq + self.phase))  # (n, m, k)
        e = ops.matmul(ops.transpose(z, (1, 0, 2)), self.kernel)  # (m, n, dim): one linear map per column
        e = self.activation(ops.transpose(e, (1, 0, 2)) + self.bias)  # (n, m, dim)
        e = ops.concatenate([num, e], axis=2)
        parts = [ops.reshape(e, (-1, len(self._cols) * (self.dim + 1)))]
        if self._rest:
            parts.append(ops.take(x, self._rest, axis=1))
        return ops.concatenate(parts, axis=1)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        width = int(input_shape[-1])
        m = width if self.columns is None else len(self.columns)
        return (input_shape[0], width - m + m * (self.dim + 1))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "columns": self.columns, "frequencies": self.frequencies, "dim": self.dim,
                "sigma": self.sigma, "activation": self._activation_name}


@keras.saving.register_keras_serializable(package="bigmodel")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy with label smoothing (Keras' sparse loss has none): the class index
    becomes a one-hot vector mixed with the uniform one, (1 - s) * onehot + s / classes."""

    def __init__(self, classes: int, label_smoothing: float = 0.1, name: str = "smoothed_sparse_crossentropy",
                 **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.classes, self.label_smoothing = int(classes), float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), self.classes)
        return keras.losses.categorical_crossentropy(y, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "classes": self.classes, "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="bigmodel")
class EnsembleAdapter(keras.layers.Layer):
    """The start of a parameter-efficient ensemble (TabM-mini, Gorishniy et al. 2025): k copies of the input,
    each scaled elementwise by its own trainable vector r_i (initialised to random signs), for the layers after
    it to process as k members sharing their weights. Shapes: (n, d) -> (n, k, d)."""

    def __init__(self, k: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = int(k)

    def build(self, input_shape: Any) -> None:
        def signs(shape: Any, dtype: Any = None) -> Any:  # from Keras' seeded generator, as Dense's kernels
            return ops.sign(keras.random.uniform(shape, -1.0, 1.0))

        self.r = self.add_weight(shape=(self.k, int(input_shape[-1])), name="r", initializer=signs)

    def call(self, x: Any) -> Any:
        return ops.expand_dims(x, 1) * self.r  # expand_dims: a TFLite builtin, unlike a new-axis slice

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0], self.k, input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "k": self.k}


@keras.saving.register_keras_serializable(package="bigmodel")
class EnsembleDense(keras.layers.Layer):
    """k independent dense layers, member i on slice i (the ensemble's heads). Shapes: (n, k, h) -> (n, k, units)."""

    def __init__(self, units: int, k: int, activation: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units, self.k = int(units), int(k)
        self.activation = keras.activations.get(activation)
        self._activation_name = activation

    def build(self, input_shape: Any) -> None:
        h = int(input_shape[-1])
        limit = math.sqrt(6 / (h + self.units))  # Glorot uniform, per member
        self.kernel = self.add_weight(shape=(self.k, h, self.units), name="kernel",
                                      initializer=keras.initializers.RandomUniform(-limit, limit))
        self.bias = self.add_weight(shape=(self.k, self.units), name="bias", initializer="zeros")

    def call(self, x: Any) -> Any:
        y = ops.transpose(ops.matmul(ops.transpose(x, (1, 0, 2)), self.kernel), (1, 0, 2))  # (n, k, units)
        return self.activation(y + self.bias)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0], self.k, self.units)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "k": self.k, "activation": self._activation_name}


@keras.saving.register_keras_serializable(package="bigmodel")
class EnsembleMean(keras.layers.Layer):
    """The ensemble's prediction: the mean of the k members' outputs (probabilities, or values). While training
    it keeps the members' outputs for `EnsembleSequential`'s loss. Shapes: (n, k, u) -> (n, u)."""

    def call(self, x: Any, training: bool | None = None) -> Any:
        if training:
            self.members = x
        return ops.mean(x, axis=1)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package="bigmodel")
class EnsembleSequential(keras.Sequential):
    """A Sequential ending in `EnsembleMean` that trains on the mean of its members' losses (each member learns
    the target on its own, as TabM does) and predicts, validates, saves and exports as any Sequential: the mean."""

    def compute_loss(self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None,
                     training: bool = True) -> Any:
        head = self.layers[-1]
        members = getattr(head, "members", None) if training else None
        if members is None:
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        head.members = None
        losses = [super(EnsembleSequential, self).compute_loss(x, y, members[:, i], sample_weight, training)
                  for i in range(members.shape[1])]
        return ops.mean(ops.stack(losses))


LAYERS = {"SmoothClip": SmoothClip, "PeriodicEmbeddings": PeriodicEmbeddings, "EnsembleAdapter": EnsembleAdapter}
