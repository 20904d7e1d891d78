"""`bigmodel export`: the model with its fitted preprocessing inside, as a SavedModel and/or .keras file.

What is written is reloaded and must reproduce `bigmodel predict` on the test split; an export that does
not is not kept (the result says so, and the CLI exits 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts
from .folders import load_run

CHUNK = 4096


@dataclass(frozen=True)
class ExportResult:
    out: Path
    format: str
    files: list[str]
    max_abs_diff: dict[str, float]
    rows_checked: int
    tolerance: float
    mismatch: str | None = None  # the parity check that failed: nothing was written

    @property
    def passed(self) -> bool:
        return self.mismatch is None

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "format": self.format, "files": self.files, "passed": self.passed,
                "mismatch": self.mismatch, "max_abs_diff": self.max_abs_diff, "rows_checked": self.rows_checked,
                "tolerance": self.tolerance}


class _Mismatch(Exception):
    """A reloaded file does not reproduce `bigmodel predict`: leave the atomic write without keeping it."""


def _check(name: str, got: np.ndarray, want: np.ndarray, tolerance: float, diffs: dict[str, float]) -> None:
    got = got.reshape(want.shape)
    # NaN where predict gives NaN is agreement; NaN anywhere else is the largest difference there is
    gap = np.abs(got - want)
    gap = np.where(np.isnan(got) & np.isnan(want), 0.0, np.where(np.isnan(gap), np.inf, gap))
    diff = float(gap.max()) if want.size else 0.0
    diffs[name] = diff
    if not diff <= tolerance:
        raise _Mismatch(f"export parity: the reloaded {name} differs from `bigmodel predict` by {diff:.3g} "
                        f"(> {tolerance:g}); nothing was written")


def run(run_dir: Path, out: Path, fmt: str | None = None, unsafe: bool = False) -> ExportResult:
    from . import features
    from .keras_env import import_keras, tensorflow

    loaded = load_run(run_dir, unsafe)
    fmt = fmt or loaded.config.export.format
    tol = loaded.config.export.parity_tolerance
    folder = artifacts.Folder(Path(out), "export")
    folder.prepare()
    keras, tf = import_keras(), tensorflow()

    checked = "test" if loaded.split_rows("test") else "val"  # data.split.test 0: check on the val split
    test = loaded.split(checked)
    x = features.to_inputs(test, loaded.schema, f"{checked} split")
    want = features.apply(loaded.serving, x)
    diffs: dict[str, float] = {}
    files: list[str] = []
    try:
        with artifacts.atomic_path(folder / artifacts.MODEL) as tmp:
            loaded.serving.save(tmp)
            reloaded = keras.saving.load_model(tmp, safe_mode=not unsafe)
            _check("keras", features.apply(reloaded, x), want, tol, diffs)
        files.append(artifacts.MODEL)
        if fmt == "savedmodel":
            with artifacts.atomic_dir(folder / artifacts.SAVEDMODEL) as tmp:
                loaded.serving.export(str(tmp), format="tf_saved_model", verbose=False)
                serve = tf.saved_model.load(str(tmp)).signatures["serving_default"]
                parts = [serve(**{k: tf.constant(v[i:i + CHUNK]) for k, v in x.items()})["output_0"].numpy()
                         for i in range(0, len(test), CHUNK)]
                _check("savedmodel", np.concatenate(parts) if parts else want, want, tol, diffs)
            files.append(artifacts.SAVEDMODEL + "/")
    except _Mismatch as e:
        return ExportResult(folder.path, fmt, [], diffs, len(test), tol, str(e))
    loaded.schema.save(folder.path)
    files.append(artifacts.SCHEMA)
    folder.finish({"run_dir": str(loaded.path.resolve()), "format": fmt, "created": artifacts.now(),
                   "task": loaded.schema.task, "classes": loaded.schema.classes,
                   "threshold": loaded.threshold if loaded.schema.task == "binary" else None,
                   "parity": {"rows": len(test), "split": checked, "max_abs_diff": diffs, "tolerance": tol},
                   "inputs": {f.key: {"column": f.name, "dtype": "float32" if f.is_numeric else "string"}
                              for f in loaded.schema.features},
                   "versions": artifacts.versions()})
    return ExportResult(folder.path, fmt, files, diffs, len(test), tol)
