"""`bigmodel export`: the model with its fitted preprocessing inside, as a SavedModel and/or .keras file.

What is written is reloaded and must reproduce `bigmodel predict` on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts, predict
from .errors import GateFailed

CHUNK = 4096


@dataclass(frozen=True)
class ExportResult:
    out: Path
    format: str
    files: list[str]
    max_abs_diff: dict[str, float]
    rows_checked: int

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "format": self.format, "files": self.files,
                "max_abs_diff": self.max_abs_diff, "rows_checked": self.rows_checked}


def _check(name: str, got: np.ndarray, want: np.ndarray, tolerance: float) -> float:
    diff = float(np.max(np.abs(got.reshape(want.shape) - want))) if want.size else 0.0
    if not diff <= tolerance:
        raise GateFailed(f"export parity: the reloaded {name} differs from `bigmodel predict` by {diff:.3g} "
                         f"(> {tolerance:g})")
    return diff


def run(run_dir: Path, out: Path, fmt: str | None = None, unsafe: bool = False) -> ExportResult:
    from . import features
    from .keras_env import import_keras

    loaded = predict.load(run_dir, unsafe)
    fmt = fmt or loaded.config.export.format
    tol = loaded.config.export.parity_tolerance
    folder = artifacts.Folder(Path(out), "export")
    folder.prepare()
    keras = import_keras()
    import tensorflow as tf

    test = loaded.split("test")
    x = features.to_inputs(test, loaded.schema, "test split")
    want = features.predict(loaded.serving, x)
    diffs: dict[str, float] = {}

    with artifacts.atomic_path(folder / artifacts.MODEL) as tmp:
        loaded.serving.save(tmp)
        reloaded = keras.saving.load_model(tmp, safe_mode=not unsafe)
        diffs["keras"] = _check(artifacts.MODEL, features.predict(reloaded, x), want, tol)
    files = [artifacts.MODEL]
    if fmt == "savedmodel":
        with artifacts.atomic_dir(folder / artifacts.SAVEDMODEL) as tmp:
            loaded.serving.export(str(tmp), format="tf_saved_model", verbose=False)
            serve = tf.saved_model.load(str(tmp)).signatures["serving_default"]
            n = len(test)
            parts = [serve(**{k: tf.constant(v[i:i + CHUNK]) for k, v in x.items()})["output_0"].numpy()
                     for i in range(0, n, CHUNK)]
            got = np.concatenate(parts) if parts else want
            diffs["savedmodel"] = _check("SavedModel", got, want, tol)
        files.append(artifacts.SAVEDMODEL + "/")
    loaded.schema.save(folder.path)
    files.append(artifacts.SCHEMA)
    folder.finish({"run_dir": str(loaded.path.resolve()), "format": fmt, "created": artifacts.now(),
                   "task": loaded.schema.task, "classes": loaded.schema.classes,
                   "threshold": loaded.threshold if loaded.schema.task == "binary" else None,
                   "parity": {"rows": len(test), "max_abs_diff": diffs, "tolerance": tol},
                   "inputs": {f.key: {"column": f.name, "dtype": "float32" if f.is_numeric else "string"}
                              for f in loaded.schema.features},
                   "versions": artifacts.versions()})
    return ExportResult(folder.path, fmt, files, diffs, len(test))
