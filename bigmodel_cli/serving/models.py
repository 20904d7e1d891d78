"""What `serve` runs: a run or export folder loaded for one runtime, as a function of the input arrays.

Runtimes: `tf` (the run's or export's Keras model with its preprocessing, in one traced `tf.function`), `onnx`
(an export's model.onnx in onnxruntime) and `tflite` (model.tflite in LiteRT): these two never import
TensorFlow, so no TensorFlow is in the request loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts
from ..errors import ConfigError, DataError
from ..schema import Schema

RUNTIMES = ("tf", "onnx", "tflite")


@dataclass
class Model:
    """What a request needs: the schema (columns in), a function of the input arrays (predictions out)."""

    schema: Schema
    predict: Any  # dict[key, (n, 1) array] -> (n, k) array


def check(path: Path, runtime: str) -> str:
    """The folder's kind ("run" or "export") if `runtime` can serve it; the cheap checks, before listening."""
    path = Path(path)
    manifest = path / artifacts.MANIFEST
    if not path.is_dir():
        raise DataError(f"{path}: no such folder (expected a run or export folder)")
    kind = artifacts.read_json(manifest).get("kind") if manifest.exists() else None
    if kind not in ("run", "export"):
        raise DataError(f"{path}: not a run or export folder (no complete {artifacts.MANIFEST})")
    artifacts.Folder(path, kind).manifest()  # of this version
    if runtime in ("onnx", "tflite"):
        file = path / (artifacts.ONNX if runtime == "onnx" else artifacts.TFLITE)
        portable = kind == "run" and runtime == "onnx" and _checked_graph(path)
        if not portable and (kind != "export" or not file.exists()):
            raise ConfigError(f"--runtime {runtime} needs an export folder with {file.name}"
                              f"{' (or a run folder with its portable graph)' if runtime == 'onnx' else ''}: "
                              f"bigmodel export RUN_DIR --format {runtime} --out EXPORT_DIR")
    return kind


def _checked_graph(run: Path) -> bool:
    """Whether a run folder holds the model.onnx its training wrote and checked (train.portable)."""
    from ..folders import checked_graph

    return checked_graph(run, artifacts.read_json(run / artifacts.MANIFEST))[0] is not None


def load(path: Path, runtime: str, unsafe: bool = False) -> Model:
    """A run folder (tf runtime) or an export folder (any runtime its files allow)."""
    kind = check(path, runtime)
    if runtime in ("onnx", "tflite"):
        from .. import runtimes

        file = Path(path) / (artifacts.ONNX if runtime == "onnx" else artifacts.TFLITE)
        schema = Schema.load(Path(path))
        model = runtimes.load(file)
        if runtime == "tflite":  # a LiteRT interpreter is not thread-safe
            lock = threading.Lock()

            def predict(x: dict[str, np.ndarray]) -> np.ndarray:
                with lock:
                    return model(x)

            return Model(schema, predict)
        return Model(schema, model)
    return _tf_model(Path(path), kind, unsafe)


def _tf_model(path: Path, kind: str, unsafe: bool) -> Model:
    from ..keras_env import tensorflow

    tf = tensorflow()
    if kind == "run":
        from ..folders import load_run

        loaded = load_run(path, unsafe)
        schema, serving = loaded.schema, loaded.serving
    else:
        from .. import features  # noqa: F401  (registers the preprocessing layers for loading)
        from ..folders import load_network

        schema, serving = Schema.load(path), load_network(path / artifacts.MODEL, unsafe)
    spec = {f.key: tf.TensorSpec((None, 1), tf.float32 if f.takes_number else tf.string, name=f.key)
            for f in schema.features}
    call = tf.function(lambda x: serving(x, training=False), input_signature=[spec])

    def predict(x: dict[str, np.ndarray]) -> np.ndarray:
        return call({k: tf.constant(v) for k, v in x.items()}).numpy()

    return Model(schema, predict)
