"""The fitted preprocessing as Keras layers: raw columns in, one float vector out.

The same graph encodes the splits for training and sits in front of the trained `Sequential`
in the exported model, so serving cannot drift from training.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .keras_env import import_keras, tensorflow
from .schema import Feature, Schema, as_str, numeric_column

keras, tf = import_keras(), tensorflow()  # at import: the layers below subclass Keras


@keras.saving.register_keras_serializable(package="bigmodel")
class Impute(keras.layers.Layer):
    """Replace missing values with a fitted constant: NaN/±inf for numbers, '' for strings."""

    def __init__(self, value: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.value = value

    def call(self, x: Any) -> Any:
        if x.dtype == tf.string:
            return tf.where(tf.equal(tf.strings.strip(x), ""), tf.constant(str(self.value)), x)
        return tf.where(tf.math.is_finite(x), x, tf.cast(self.value, x.dtype))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "value": self.value}


def _encoder(f: Feature, schema: Schema) -> list[Any]:
    """The layers that turn one raw column into floats."""
    L = keras.layers
    if f.is_numeric:
        if schema.scaling == "standard":
            mean, var = f.mean, (f.std or 0.0) ** 2
        else:  # min-max to [0, 1]
            mean, var = f.min, (f.max - f.min) ** 2
        var = var if var > 0 else 1.0  # a constant column: x - mean, 0 on the training data, no division by 0
        return [Impute(f.fill, name=f"{f.key}_impute"), L.Normalization(mean=mean, variance=var, name=f"{f.key}_scale")]
    if f.kind == "text":
        idf = {"idf_weights": f.idf_weights} if schema.text_output == "tf_idf" else {}
        return [L.TextVectorization(max_tokens=schema.text_max_tokens, output_mode=schema.text_output,
                                    vocabulary=f.vocabulary or ["[empty]"], name=f"{f.key}_text", **idf)]
    # one-hot, or (categorical_encoding: embedding) the index, 0 for out-of-vocabulary, embedded by the network
    mode = "int" if schema.categorical_encoding == "embedding" else "one_hot"
    return [Impute(f.fill, name=f"{f.key}_impute"),
            L.StringLookup(vocabulary=f.vocabulary or [""], num_oov_indices=1, output_mode=mode,
                           name=f"{f.key}_lookup")]


def inputs(schema: Schema) -> dict[str, Any]:
    return {f.key: keras.Input(shape=(1,), name=f.key, dtype="float32" if f.is_numeric else "string")
            for f in schema.features}


def _parts(schema: Schema, raw: dict[str, Any]) -> list[Any]:
    parts = []
    for f in schema.features:
        x = raw[f.key]
        if f.kind == "text":  # TextVectorization wants one string per row: (n, 1) -> (n,)
            x = keras.ops.squeeze(x, axis=-1)
        for layer in _encoder(f, schema):
            x = layer(x)
        parts.append(keras.ops.cast(x, "float32"))
    return parts


def encode(schema: Schema, raw: dict[str, Any]) -> Any:
    parts = _parts(schema, raw)
    return keras.layers.Concatenate(name="features")(parts) if len(parts) > 1 else parts[0]


def embedded_columns(schema: Schema) -> list[tuple[int, int]]:
    """(position in the encoded vector, vocabulary size incl. the OOV index) of each categorical index column,
    when preprocess.categorical_encoding is `embedding`."""
    if schema.categorical_encoding != "embedding":
        return []
    out, position = [], 0
    for f, part in zip(schema.features, _parts(schema, inputs(schema)), strict=True):
        if f.kind in ("categorical", "boolean"):
            out.append((position, len(f.vocabulary) + 1))
        position += int(part.shape[-1])
    return out


@keras.saving.register_keras_serializable(package="bigmodel")
class Embeddings(keras.layers.Layer):
    """The network's first layer when categoricals are embedded: the index columns of the encoded vector
    go through one trainable `Embedding` each; the other columns pass through; all are concatenated."""

    def __init__(self, columns: list[tuple[int, int]], width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.columns = [(int(p), int(v)) for p, v in columns]
        self.width = int(width)
        index = {p for p, _ in self.columns}
        self.rest = [i for i in range(self.width) if i not in index]
        self.embeddings = [keras.layers.Embedding(v, min(16, (v + 1) // 2), name=f"embedding_{p}")
                           for p, v in self.columns]

    def build(self, input_shape: Any) -> None:
        for emb in self.embeddings:  # so that loading finds the variables to fill
            emb.build((None,))

    def call(self, x: Any) -> Any:
        ops = keras.ops
        parts = [ops.take(x, self.rest, axis=1)] if self.rest else []
        for (p, _), emb in zip(self.columns, self.embeddings, strict=True):
            parts.append(emb(ops.cast(x[:, p], "int32")))
        return ops.concatenate(parts, axis=1)

    def compute_output_shape(self, input_shape: Any) -> tuple[Any, ...]:
        return (input_shape[0], len(self.rest) + sum(e.output_dim for e in self.embeddings))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "columns": self.columns, "width": self.width}


def preprocessing_model(schema: Schema) -> Any:
    """Raw columns (dict) -> the encoded float vector the Sequential model is trained on."""
    raw = inputs(schema)
    return keras.Model(raw, encode(schema, raw), name="preprocessing")


def serving_model(schema: Schema, network: Any) -> Any:
    """Raw columns (dict) -> predictions: the fitted preprocessing in front of the trained network."""
    raw = inputs(schema)
    return keras.Model(raw, network(encode(schema, raw)), name="bigmodel")


def to_inputs(df: pd.DataFrame, schema: Schema, source: str) -> dict[str, np.ndarray]:
    """A DataFrame's feature columns as the arrays the models take (shape (n, 1))."""
    out = {}
    for f in schema.features:
        if f.is_numeric:
            v = numeric_column(df[f.name], f.name, source).astype("float32")
        else:
            v = as_str(df[f.name]).to_numpy(dtype=str)
        out[f.key] = v.reshape(-1, 1)
    return out


def apply(model: Any, x: dict[str, np.ndarray], chunk: int = 65536) -> np.ndarray:
    """Run a model (the encoder, or the serving model) over all rows in large chunks by calling it directly:
    with string inputs this is ~8x faster than `model.predict` with its per-batch overhead (measured on 140k
    rows: 0.4 s vs 3-5 s)."""
    n = len(next(iter(x.values())))
    parts = [keras.ops.convert_to_numpy(model({k: tf.constant(v[i:i + chunk]) for k, v in x.items()}, training=False))
             for i in range(0, n, chunk)]
    return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), dtype="float32")


def unseen_categories(df: pd.DataFrame, schema: Schema) -> dict[str, int]:
    """How many values of each categorical column fall outside the fitted vocabulary (the OOV bucket)."""
    counts = {}
    for f in schema.features:
        if f.kind in ("categorical", "boolean"):
            text = as_str(df[f.name])
            n = int((~text.isin(f.vocabulary) & (text != "")).sum())
            if n:
                counts[f.name] = n
    return counts
