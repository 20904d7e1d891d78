"""Portable graphs: a serving model (raw columns in) as ONNX or TFLite, reloaded in onnxruntime / LiteRT and checked
against the Keras model on the checked rows plus hostile ones (NaN, ±inf, '', unseen categories), all at once and
one by one. `export --format onnx|tflite` writes them into an export folder; `train` writes the ONNX one into the
run folder, so that predict, evaluate and serve can run without TensorFlow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts
from .errors import ConfigError, one_line

FILES = {"onnx": artifacts.ONNX, "tflite": artifacts.TFLITE}
ONNX_OPSET = 17  # tf2onnx 1.17 writes up to 18; 17 is what onnxruntime >= 1.14 and most other runtimes load
ONE_BY_ONE = 64  # rows also checked one per call (batch 1)


class Mismatch(Exception):
    """A reloaded file does not reproduce `bigmodel predict`: leave the atomic write without keeping it."""


def check(name: str, got: np.ndarray, want: np.ndarray, tolerance: float, diffs: dict[str, float]) -> None:
    got = got.reshape(want.shape)
    # relative where |value| > 1 (a regression in raw units: float32 carries ~7 digits of 4000 g as of 0.4), and
    # NaN where predict gives NaN is agreement; NaN anywhere else is the largest difference there is
    gap = np.abs(got - want) / np.maximum(1.0, np.abs(np.nan_to_num(want)))
    gap = np.where(np.isnan(got) & np.isnan(want), 0.0, np.where(np.isnan(gap), np.inf, gap))
    diff = float(gap.max()) if want.size else 0.0
    diffs[name] = diff
    if not diff <= tolerance:
        raise Mismatch(f"export parity: the reloaded {name} differs from `bigmodel predict` by {diff:.3g} "
                        f"(> {tolerance:g}); nothing was written")



def hostile(x: dict[str, np.ndarray], schema: Any) -> dict[str, np.ndarray]:
    """The checked rows plus, per column, copies of the first row with that column NaN / +inf / -inf (numbers)
    or '' / unseen (strings): every format must treat missing values and new categories as predict does."""
    if not len(next(iter(x.values()))):
        return x
    parts = {k: [v.astype(object) if v.dtype.kind in "OUS" else v] for k, v in x.items()}
    for f in schema.features:
        for value in [np.nan, np.inf, -np.inf] if f.takes_number else ["", "unseen category \u00e9\u2603"]:
            for k, v in x.items():
                row = v[:1].astype(object) if v.dtype.kind in "OUS" else v[:1].copy()
                if k == f.key:
                    row[0, 0] = value
                parts[k].append(row)
    return {k: np.concatenate(p) for k, p in parts.items()}


def write(fmt: str, model: Any, work: Path, x: dict, want: np.ndarray, tol: float,
              diffs: dict) -> dict[str, Any]:
    """SavedModel of the portable graph -> model.onnx (tf2onnx) or model.tflite (TFLite builtins only), then
    reloaded in onnxruntime / LiteRT and checked on all rows at once and on the first rows one by one."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        saved = Path(tmp) / "portable"
        model.export(str(saved), format="tf_saved_model", verbose=False)
        path = work / FILES[fmt]
        extra = _to_onnx(saved, path) if fmt == "onnx" else _to_tflite(saved, path)
    verify(fmt, path, x, want, tol, diffs)
    return extra


def verify(fmt: str, path: Path, x: dict, want: np.ndarray, tol: float, diffs: dict) -> None:
    """`path` (model.onnx / model.tflite) reloaded in its runtime and checked against `want` on all rows at once and
    on the first rows one by one; a Mismatch names the first that differs."""
    from . import runtimes

    runtime = runtimes.load(path)
    check(fmt, runtime(x), want, tol, diffs)
    n = min(ONE_BY_ONE, len(want))
    if n:
        one = np.concatenate([runtime({k: v[i:i + 1] for k, v in x.items()}) for i in range(n)])
        check(f"{fmt} (batch 1)", one, want[:n], tol, diffs)


def _to_onnx(saved: Path, path: Path) -> dict[str, Any]:
    import logging

    import tf2onnx
    from tf2onnx import convert, tf_loader

    from .keras_env import tensorflow

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    # tf2onnx's own saved-model path (what `python -m tf2onnx.convert --saved-model` runs): it is the one that
    # carries lookup tables into ONNX (CategoryMapper); from_function / from_keras lose them (tf2onnx#1867)
    try:
        graph, inputs, outputs, tables, renames = tf_loader.from_saved_model(
            str(saved), None, None, None, None, None, False, return_initialized_tables=True,
            return_tensors_to_rename=True)
        with tensorflow().device("/cpu:0"):
            convert._convert_common(graph, name="bigmodel", opset=ONNX_OPSET, input_names=inputs,
                                    output_names=outputs, tensors_to_rename=renames, initialized_tables=tables,
                                    output_path=str(path))
    except (ValueError, TypeError, KeyError, RuntimeError) as e:  # an op tf2onnx cannot write: say which
        raise ConfigError(f"export --format onnx: the model does not convert to ONNX (tf2onnx "
                          f"{tf2onnx.__version__}): {str(e).strip().splitlines()[0][:200]}") from None
    return {"onnx": {"opset": ONNX_OPSET, "tf2onnx": tf2onnx.__version__}}


def _to_tflite(saved: Path, path: Path) -> dict[str, Any]:
    from .keras_env import tensorflow

    tf = tensorflow()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no select TF ops: LiteRT runs it
    try:
        data = converter.convert()
    except Exception as e:  # noqa: BLE001  (TF's ConverterError, by name: TF is imported through keras_env only)
        if type(e).__name__ != "ConverterError":
            raise
        raise ConfigError(f"export --format tflite: the model does not convert to TFLite builtins: "
                          f"{str(e).strip().splitlines()[0][:200]}") from None
    path.write_bytes(data)
    return {"tflite": {"ops": "TFLITE_BUILTINS"}}


def free_text(schema: Any) -> str | None:
    """The first free-text column (TextVectorization), which neither ONNX nor TFLite can carry; None if none."""
    return next((f.name for f in schema.features if f.kind == "text"), None)


def why_not(cfg: Any, schema: Any) -> str | None:
    """Why `train` would write no portable graph for this config and prep folder (None: it will try). With
    `train.portable: true` any reason is a ConfigError: `train` and `federated` call this before they train."""
    import importlib.util

    mode = cfg.train.portable
    text = free_text(schema)
    missing = [m for m in ("tf2onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    why = ("train.portable is false" if mode is False else
           "tf2onnx and onnxruntime are not installed (pip install 'bigmodel[onnx]')" if missing else
           f"column '{text}' is free text, which ONNX cannot carry" if text else None)
    if why is not None and mode is True:
        raise ConfigError(f"train.portable: {why}")
    return why


def for_run(folder: Path, prep: Any, cfg: Any, network: Any) -> dict[str, Any]:
    """model.onnx in a run folder being written (train.portable), after its model.keras: the serving graph of
    `network` converted, reloaded in onnxruntime and checked as an export is, on the prep folder's test split (else
    val) plus the hostile rows. Returns the manifest's "portable" entry: the file, its hash, model.keras's hash (the
    graph is of that model: a changed one voids it) and parity, or why there is none (a graph that does not convert
    or check never fails training; a model.onnx left from an earlier run is removed)."""
    schema = prep.schema
    path = Path(folder) / artifacts.ONNX
    path.unlink(missing_ok=True)  # the folder is marked incomplete while it is written: no run refers to it now
    why = why_not(cfg, schema)
    if why is not None:
        return {"onnx": None, "why": why}
    from . import features
    from .schema import to_inputs

    tol = cfg.export.parity_tolerance
    rows = prep.split("test" if prep.split_rows("test") else "val")
    x = hostile(to_inputs(rows, schema, "the checked split"), schema)
    want = features.apply(features.serving_model(schema, network), x)
    diffs: dict[str, float] = {}
    try:
        extra = write("onnx", features.serving_model(schema, network, portable=True), Path(folder), x, want, tol,
                      diffs)
    except Exception as e:  # noqa: BLE001  (a model that does not convert or check: the TensorFlow path serves it)
        path.unlink(missing_ok=True)
        return {"onnx": None, "why": one_line(e)}
    parity = {"rows": len(want), "hostile_rows": len(want) - len(rows), "max_abs_diff": diffs, "tolerance": tol}
    return {"onnx": artifacts.ONNX, "sha256": artifacts.sha256(path),
            "model_sha256": artifacts.sha256(Path(folder) / artifacts.MODEL), "converter": extra["onnx"],
            "parity": parity}
