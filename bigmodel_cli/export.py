"""`bigmodel export`: the model with its fitted preprocessing inside, as a SavedModel, a .keras file, ONNX or
TFLite.

What is written is reloaded — ONNX in onnxruntime, TFLite in LiteRT — and must reproduce `bigmodel predict` on
the test split plus rows with NaN, ±inf, '' and unseen categories, all at once and one by one; an export that
does not is not kept (the result says so, and the CLI exits 1).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import artifacts, portable
from .errors import ConfigError, DataError
from .folders import checked_graph, load_run
from .portable import Mismatch as _Mismatch
from .portable import check as _check
from .portable import hostile

FORMATS = ("savedmodel", "keras", "onnx", "tflite")
PORTABLE_FILES = portable.FILES
ONE_BY_ONE = portable.ONE_BY_ONE
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
    registered: dict[str, Any] | None = None  # --register: MLflow's model URI, the name and version

    @property
    def passed(self) -> bool:
        return self.mismatch is None

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "format": self.format, "files": self.files, "passed": self.passed,
                "mismatch": self.mismatch, "max_abs_diff": self.max_abs_diff, "rows_checked": self.rows_checked,
                "tolerance": self.tolerance, "registered": self.registered}


@dataclass(frozen=True)
class ExportOptions:
    """What `export` is asked to do."""

    run: Path  # the run folder
    out: Path  # the export folder (replaced whole)
    format: str | None = None  # one of FORMATS; None: export.format of the run's config
    unsafe: bool = False  # load a model with code in it
    register: str | None = None  # after the export, log the run to its MLflow run as a model registered by this name
    version: str | None = None  # "next" or N: write out/N (TF Serving's layout: out is a base of versions)


def _versioned(out: Path, version: str | None) -> Path:
    """The folder to write: `out` itself, or with --version its version folder out/N (N: the next integer after
    the newest there). A version is never overwritten (a server may be serving it)."""
    if version is None:
        return out
    if (out / artifacts.MANIFEST).exists():
        raise ConfigError(f"--version: {out} is an export or run folder itself; --out names the base that holds "
                          f"the versions (e.g. models/penguins, written as models/penguins/1, /2, ...)")
    have = artifacts.version_folders(out)
    if version == "next":
        n = have[-1] + 1 if have else 1
    elif version.isdigit() and int(version) > 0:
        n = int(version)
    else:
        raise ConfigError(f"--version {version}: expected a positive integer or 'next'")
    if (out / str(n)).exists():
        raise ConfigError(f"--version {n}: {out / str(n)} exists; versions are never overwritten (use --version "
                          f"next)")
    return out / str(n)


def run(options: ExportOptions, on_event: Any = None) -> ExportResult:
    """Write the export folder whole (a temp folder swapped in at the end: a failed check keeps the old one).
    `on_event("step", what, rows)` hears each step (rows: those checked)."""
    from . import features

    out = _replaceable(_versioned(Path(options.out), options.version).resolve())  # (`--out .`: no name to go beside)
    loaded = load_run(options.run, options.unsafe)
    fmt = options.format or loaded.config.export.format
    tol = loaded.config.export.parity_tolerance
    _can_write(fmt, loaded.schema)
    folder = artifacts.Folder(out, "export")
    folder.prepare()

    checked = "test" if loaded.split_rows("test") else "val"  # data.split.test 0: check on the val split
    test = loaded.split(checked)
    x = hostile(features.to_inputs(test, loaded.schema, f"{checked} split"), loaded.schema)
    want = features.apply(loaded.serving, x)
    diffs: dict[str, float] = {}
    files = [artifacts.MODEL]
    extra: dict[str, Any] = {}
    rows = len(want)
    step = on_event or (lambda *_: None)
    try:
        with artifacts.atomic_dir(folder.path) as work:
            step("step", "model.keras: saving and checking it", rows)
            _keras(loaded, work / artifacts.MODEL, x, want, tol, diffs, options.unsafe)
            if fmt == "savedmodel":
                step("step", "SavedModel: writing and checking it", rows)
                _savedmodel(loaded.serving, work / artifacts.SAVEDMODEL, x, want, tol, diffs)
                files.append(artifacts.SAVEDMODEL + "/")
            elif fmt in PORTABLE_FILES:
                step("step", f"{PORTABLE_FILES[fmt]}: converting and checking it", rows)
                extra = _portable(fmt, loaded, work, x, want, tol, diffs)
                files.append(PORTABLE_FILES[fmt])
            loaded.schema.save(work)
            files.append(artifacts.SCHEMA)
            if (loaded.path / artifacts.REFERENCE).exists():  # serve's drift statistics in /metrics
                shutil.copyfile(loaded.path / artifacts.REFERENCE, work / artifacts.REFERENCE)
                files.append(artifacts.REFERENCE)
            parity = {"rows": rows, "split": checked, "hostile_rows": rows - len(test),
                      "one_by_one": min(ONE_BY_ONE, rows), "max_abs_diff": diffs, "tolerance": tol}
            artifacts.Folder(work, "export").finish({**_manifest(loaded, fmt, parity), **extra,
                                                     "versions": artifacts.versions()})
    except _Mismatch as e:
        return ExportResult(folder.path, fmt, [], diffs, rows, tol, str(e))
    registered = None
    if options.register:
        from . import tracking

        step("step", f"MLflow: logging the model and registering it as {options.register}", rows)
        registered = tracking.register(loaded.path, loaded.manifest, options.register)
    return ExportResult(folder.path, fmt, files, diffs, rows, tol, registered=registered)


def _replaceable(out: Path) -> Path:
    """`out` if an export may be written there: new, empty, or an export folder (replaced whole)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / artifacts.MANIFEST).is_file():
        raise DataError(f"{out}: exists and is not an export folder; export into a new or empty folder (an "
                        f"export folder is replaced whole)")
    if (out / artifacts.MANIFEST).is_file():
        artifacts.Folder(out, "export").manifest()  # a run or prep folder is never replaced by an export
    return out


def _can_write(fmt: str, schema: Any) -> None:
    """The format's extra is installed, and the format can carry every column."""
    if fmt == "onnx":
        _needs("tf2onnx", "onnxruntime", extra="onnx")
    elif fmt == "tflite":
        _needs("ai_edge_litert", extra="tflite")
    if fmt in PORTABLE_FILES and (text := portable.free_text(schema)):
        raise ConfigError(f"export --format {fmt}: column '{text}' is free text (TextVectorization), which "
                          f"{fmt} cannot carry; export as savedmodel, or set data.columns: {{{text}: ignore}}")


def _manifest(loaded: Any, fmt: str, parity: dict[str, Any]) -> dict[str, Any]:
    """The export's manifest: where it came from, the parity check, and the contract of its inputs and output."""
    s = loaded.schema
    return {
        "run_dir": str(loaded.path.resolve()), "format": fmt, "created": artifacts.now(),
        "task": s.task, "classes": s.classes, "threshold": loaded.threshold if s.task == "binary" else None,
        "parity": parity,
        "inputs": {f.key: {"column": f.name, "dtype": "float32" if f.takes_number else "string",
                           **({"unit": "days since 1970-01-01 UTC"} if f.kind == "date" else {})}
                   for f in s.features},
        "input_contract": "one (n, 1) tensor per input: float32 numbers with NaN for missing (a date: its days "
                          "since 1970-01-01 UTC, a time of day as the fraction); strings with leading/trailing "
                          "whitespace stripped, '' for missing",
        "output": _output_doc(s)}


def _portable(fmt: str, loaded: Any, work: Path, x: dict, want: np.ndarray, tol: float, diffs: dict) -> dict:
    """model.onnx / model.tflite in `work`, checked. ONNX: the run's own portable graph where training wrote one
    for the model.keras that is there now (no second conversion; checked again here on these rows, at this
    tolerance), else converted."""
    from . import features

    if fmt == "onnx":
        graph, _ = checked_graph(loaded.path, loaded.manifest)
        if graph is not None:
            shutil.copyfile(graph, work / PORTABLE_FILES[fmt])
            portable.verify(fmt, work / PORTABLE_FILES[fmt], x, want, tol, diffs)
            return {"onnx": {**loaded.manifest["portable"]["converter"], "from": "the run's model.onnx"}}
    network = features.serving_model(loaded.schema, loaded.network, portable=True)
    return portable.write(fmt, network, work, x, want, tol, diffs)


def _needs(*modules: str, extra: str) -> None:
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"export --format {extra} needs {', '.join(missing)}: pip install 'bigmodel[{extra}]'")


def _output_doc(schema: Any) -> str:
    if schema.task == "binary":
        return f"(n, 1) probability of class {schema.classes[1]!r}"
    if schema.task == "multiclass":
        return f"(n, {len(schema.classes)}) class probabilities in the order of 'classes'"
    return f"(n, 1) {schema.target} in its own units"


def _keras(loaded: Any, path: Path, x: dict, want: np.ndarray, tol: float, diffs: dict, unsafe: bool) -> None:
    from . import features
    from .keras_env import import_keras

    loaded.serving.save(path)
    reloaded = import_keras().saving.load_model(path, safe_mode=not unsafe)
    _check("keras", features.apply(reloaded, x), want, tol, diffs)


def _savedmodel(serving: Any, path: Path, x: dict, want: np.ndarray, tol: float, diffs: dict) -> None:
    from .keras_env import tensorflow

    tf = tensorflow()
    serving.export(str(path), format="tf_saved_model", verbose=False)
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    n = len(want)
    parts = [serve(**{k: tf.constant(v[i:i + CHUNK]) for k, v in x.items()})["output_0"].numpy()
             for i in range(0, n, CHUNK)]
    _check("savedmodel", np.concatenate(parts) if parts else want, want, tol, diffs)
