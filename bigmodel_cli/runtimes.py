"""Portable models in their own runtimes, without TensorFlow: ONNX in onnxruntime, TFLite in LiteRT.

`export` checks each file it writes through these, and `serve --runtime onnx` answers with them. Inputs are the
model's columns by key (`schema.json`), each an (n, 1) array: float32 numbers (NaN for missing), strings with
whitespace stripped ('' for missing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError


class Onnx:
    """A model.onnx in onnxruntime (one CPU session; sessions are safe to call from several threads)."""

    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise DataError("ONNX needs onnxruntime: pip install 'bigmodel[onnx]'") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i.type for i in self.session.get_inputs()}

    def __call__(self, x: dict[str, np.ndarray]) -> np.ndarray:
        feed = {k: (v.astype(object) if self.inputs[k] == "tensor(string)" else v.astype("float32"))
                for k, v in x.items() if k in self.inputs}
        return np.asarray(self.session.run(None, feed)[0])


class Tflite:
    """A model.tflite in LiteRT's interpreter (ai-edge-litert), through its serving signature. An interpreter
    is not thread-safe: callers serialise."""

    def __init__(self, path: Path) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter, OpResolverType
        except ImportError:
            raise DataError("TFLite needs LiteRT: pip install 'bigmodel[tflite]'") from None
        # the builtin kernels without the XNNPACK delegate: no log line on stderr, the reference numerics
        self.interpreter = Interpreter(model_path=str(path),
                                       experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self.runner = self.interpreter.get_signature_runner()
        self.inputs = {k: d["dtype"] for k, d in self.runner.get_input_details().items()}

    def __call__(self, x: dict[str, np.ndarray]) -> np.ndarray:
        feed: dict[str, Any] = {}
        for k, v in x.items():
            if k not in self.inputs:
                continue
            if v.dtype.kind in "OUS":  # LiteRT's strings are bytes
                feed[k] = np.array([str(s).encode("utf-8") for s in v.reshape(-1)], dtype=object).reshape(v.shape)
            else:
                feed[k] = v.astype("float32")
        out = self.runner(**feed)
        return np.asarray(next(iter(out.values())))


def load(path: Path) -> Onnx | Tflite:
    return Onnx(path) if Path(path).suffix == ".onnx" else Tflite(path)
