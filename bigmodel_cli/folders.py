"""Prep and run folders: what is in them, read and written in one place.

A prep folder (`preprocess`) holds the split Parquet files, schema.json, report.json and config.yaml; a
run folder (`train`, `federated`) the network, its history and the resolved config. Every stage reads
them through `open_prep` / `load_run` and writes them through `write_prep` / `write_run`, so the file
names (artifacts.py), the manifest and its schema_version check live in one place.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts, remote
from .config import Config, load_config
from .errors import DataError, one_line
from .schema import Schema, to_inputs, unseen_categories

SLICE_ROWS = 50_000  # rows per model call when progress is reported (predict, evaluate)


class RowCount:
    """Rows done so far, told to `on_event("rows", done, total)` (total None: unknown), for progress."""

    def __init__(self, on_event: Callable[..., None] | None, total: int | None = None) -> None:
        self.on_event, self.total, self.done = on_event, total, 0

    def __call__(self, n: int) -> None:
        self.done += n
        if self.on_event is not None:
            self.on_event("rows", self.done, self.total)


@dataclass(frozen=True)
class Prep:
    """A complete prep folder: its manifest and schema."""

    folder: artifacts.Folder
    manifest: dict[str, Any]
    schema: Schema

    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def streamed(self) -> bool:
        """Written by the streaming path: row-grouped splits, read chunk by chunk."""
        return "streaming" in self.manifest

    def split_path(self, name: str) -> Path:
        return self.path / artifacts.SPLIT_FILES[name]

    def split_rows(self, name: str) -> int:
        return parquet_rows(self.split_path(name))

    def split(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.split_path(name))


def parquet_rows(path: Path) -> int:
    """A Parquet file's row count, from its footer."""
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


def open_prep(path: Path) -> Prep:
    folder = artifacts.Folder(Path(path), "prep")
    manifest = folder.manifest()
    return Prep(folder, manifest, Schema.load(folder.path))


def write_prep(folder: artifacts.Folder, data: Path, cfg: Config, schema: Schema, report: dict[str, Any],
               rows_in: int, extra: dict[str, Any], hashes: dict[str, str] | None = None) -> None:
    """The schema, report and config of a prep folder whose splits are written, then its manifest (last).
    `hashes`: the SHA-256 of the input ('data') and of each split where the caller has them already."""
    hashes = hashes or {}
    schema.save(folder.path)
    artifacts.write_json(folder / artifacts.REPORT, report)
    artifacts.write_text(folder / artifacts.CONFIG, cfg.to_yaml())
    folder.finish({
        "data": {"path": remote.name_of(data), "sha256": hashes.get("data") or artifacts.sha256(Path(data)),
                 "rows": rows_in},
        "seed": cfg.seed, "created": artifacts.now(),
        "splits": {n: hashes.get(n) or artifacts.sha256(folder / f) for n, f in artifacts.SPLIT_FILES.items()}, **extra,
    })


def where(folder: Path) -> str:
    """How a manifest names another folder: its absolute path, or the URL it was read from (or will be written to)."""
    url = remote.name_of(folder)
    return url if remote.is_url(url) else str(folder.resolve())


def _reference(prep: Prep, bins: int) -> dict[str, Any]:
    """`drift`'s reference statistics of the prep's train split (of an evenly spread sample of at most
    reference.SAMPLE_ROWS rows, read a row group at a time)."""
    import pyarrow.parquet as pq

    from . import reference

    path = prep.split_path("train")
    file = pq.ParquetFile(path)
    step = max(1, -(-file.metadata.num_rows // reference.SAMPLE_ROWS))
    parts, seen = [], 0
    for batch in file.iter_batches(batch_size=1 << 16):
        parts.append(batch.to_pandas().iloc[(-seen) % step::step])
        seen += batch.num_rows
    train = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return reference.statistics(train, prep.schema, bins)


def load_run_reference(run: Path, schema: Schema, bins: int) -> dict[str, Any]:
    """A run folder's reference.json; a run trained before drift existed: made now from its prep's train split."""
    path = Path(run) / artifacts.REFERENCE
    if path.exists():
        with artifacts.damaged(path, f"train ... --out {run}"):
            doc = artifacts.read_json(path)
            if not isinstance(doc.get("columns"), dict):
                raise ValueError("no 'columns'")
            return doc
    manifest = artifacts.Folder(Path(run), "run").manifest()
    prep_dir = str(manifest.get("prep_dir", ""))
    if remote.is_url(prep_dir) or not (Path(prep_dir) / artifacts.MANIFEST).exists():
        raise DataError(f"{run}: no {artifacts.REFERENCE}, and its prep folder {prep_dir} is not here to make it "
                        f"from; train the run again")
    return _reference(open_prep(Path(prep_dir)), bins)


def write_run(folder: artifacts.Folder, prep: Prep, cfg: Config, net: Any, history: pd.DataFrame, best: int,
              extra: dict[str, Any], graph: bool = True) -> dict[str, float]:
    """Write a complete run folder (model.keras, then its portable graph where `graph` and train.portable ask,
    then the manifest); return the best row's metrics. Shared by `train` and `federated`, so that evaluate /
    export / predict / compare read either."""
    from . import plots, portable

    with artifacts.atomic_path(folder / artifacts.HISTORY) as tmp:
        history.to_csv(tmp, index=False)
    plots.training_curves(history, folder / artifacts.CURVE)
    prep.schema.save(folder.path)
    artifacts.write_json(folder / artifacts.REPORT, artifacts.read_json(prep.folder / artifacts.REPORT))
    artifacts.write_text(folder / artifacts.CONFIG, cfg.to_yaml())
    artifacts.write_json(folder / artifacts.REFERENCE, _reference(prep, cfg.drift.bins))
    with artifacts.atomic_path(folder / artifacts.MODEL) as tmp:
        net.save(tmp)
    extra = {**extra, "portable": portable.for_run(folder.path, prep, cfg, net) if graph else
             {"onnx": None, "why": "a tune trial"}}
    folder.finish({
        "prep_dir": where(prep.path), "data": prep.manifest["data"], "splits": prep.manifest["splits"],
        "config_sha256": artifacts.sha256(folder / artifacts.CONFIG), "seed": cfg.seed,
        "versions": artifacts.versions(), "finished": artifacts.now(), "task": prep.schema.task,
        "target": prep.schema.target, **extra,
    })
    return {k: float(v) for k, v in history.iloc[best - 1].items() if k not in ("epoch", "round")}


@dataclass(frozen=True)
class Predictions:
    probabilities: np.ndarray | None  # (n, classes) for classification
    values: np.ndarray  # predicted class index, or predicted value (regression)
    unseen_categories: dict[str, int]
    ignored_columns: list[str]


def merge(parts: list[Predictions]) -> Predictions:
    """Predictions of consecutive chunks as one."""
    if len(parts) == 1:
        return parts[0]
    unseen: dict[str, int] = {}
    for p in parts:
        for k, v in p.unseen_categories.items():
            unseen[k] = unseen.get(k, 0) + v
    probs = None if parts[0].probabilities is None else np.concatenate([p.probabilities for p in parts])
    return Predictions(probs, np.concatenate([p.values for p in parts]), unseen, parts[0].ignored_columns)


@dataclass(frozen=True)
class LoadedRun:
    """A complete run folder with its model loaded: raw columns in, predictions out. `evaluate`, `export`
    and `predict` all read runs this way, so they share one path from raw columns to predictions."""

    path: Path
    manifest: dict[str, Any]
    schema: Schema
    config: Config
    serving: Any  # raw columns -> network output: a keras.Model, or (engine onnxruntime) the run's model.onnx
    network: Any = None  # the trained network alone (encoded features in); None on onnxruntime
    engine: str = "tensorflow"  # or "onnxruntime": the run's portable graph, without TensorFlow
    why_tensorflow: str | None = None  # asked for the portable graph, but it could not be used: why

    @property
    def threshold(self) -> float:
        """Binary tasks: predict the positive class at or above this probability (evaluate.threshold)."""
        return float(self.manifest.get("threshold") or 0.5)

    @property
    def prep_dir(self) -> str:
        """Where the run's prep folder is: a local path, or the URL it was read from."""
        return str(self.manifest["prep_dir"])

    def _prep_file(self, name: str) -> Path | None:
        if remote.is_url(self.prep_dir):
            return remote.cached(f"{self.prep_dir.rstrip('/')}/{name}")
        path = Path(self.prep_dir) / name
        return path if path.exists() else None

    def predict(self, df: pd.DataFrame, source: str, first_row: int = 0) -> Predictions:
        """Predictions for a frame (`first_row`: its first row's position in `source`, a chunk's, for errors)."""
        ignored = self.schema.check_columns(df, source, need_target=False)
        inputs = to_inputs(df, self.schema, source, first_row)
        if self.engine == "onnxruntime":
            out = self.serving(inputs)
        else:
            from . import features

            out = features.apply(self.serving, inputs)
        unseen = unseen_categories(df, self.schema)
        if not self.schema.is_classification:
            return Predictions(None, out[:, 0], unseen, ignored)
        if self.schema.task == "binary":
            probs = np.hstack([1 - out, out])
            return Predictions(probs, (out[:, 0] >= self.threshold).astype(int), unseen, ignored)
        return Predictions(out, out.argmax(axis=1), unseen, ignored)

    def predict_rows(self, df: pd.DataFrame, source: str, first_row: int = 0,
                     on_rows: Callable[[int], None] | None = None) -> Predictions:
        """`predict` in slices of SLICE_ROWS rows, calling `on_rows(n)` after each (progress on a large frame)."""
        if on_rows is None or len(df) <= SLICE_ROWS:
            p = self.predict(df, source, first_row)
            if on_rows is not None:
                on_rows(len(df))
            return p
        parts = []
        for i in range(0, len(df), SLICE_ROWS):
            parts.append(self.predict(df.iloc[i:i + SLICE_ROWS], source, first_row + i))
            on_rows(len(parts[-1].values))
        return merge(parts)

    def split_path(self, name: str) -> Path:
        path = self._prep_file(artifacts.SPLIT_FILES[name])
        if path is None:
            raise DataError(f"{self.path}: its prep folder {self.prep_dir} has no {artifacts.SPLIT_FILES[name]}; "
                            f"pass --data")
        return path

    def split_rows(self, name: str) -> int:
        return parquet_rows(self.split_path(name))

    def split(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.split_path(name))

    @property
    def prep_streamed(self) -> bool:
        manifest = self._prep_file(artifacts.MANIFEST)
        return manifest is not None and "streaming" in artifacts.read_json(manifest)


def load_network(path: Path, unsafe: bool = False) -> Any:
    """Load a .keras model with Keras safe_mode (no code from the file runs) unless `unsafe` is asked for."""
    from . import layers  # noqa: F401
    from .keras_env import import_keras
    from .training import privacy  # noqa: F401  (register bigmodel's layers, DPSequential for loading)

    keras = import_keras()
    if not path.exists():
        raise DataError(f"{path}: no model file")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a Keras model file (truncated or corrupt?)")
    try:
        return keras.saving.load_model(path, safe_mode=not unsafe)
    except zipfile.BadZipFile:
        raise DataError(f"{path}: not a Keras model file (truncated or corrupt?)") from None
    except (ValueError, OSError, KeyError, TypeError, AttributeError) as e:
        msg = one_line(e)
        if "safe_mode" in str(e) or "unsafe" in str(e).lower():
            raise DataError(f"{path}: refused to load: the model contains code (e.g. a Lambda layer) that would run "
                            f"on loading; pass --unsafe-load only if you trust this file") from None
        raise DataError(f"{path}: cannot load the model: {msg}") from None


def load_run(run_dir: Path, unsafe: bool = False, portable: bool = False) -> LoadedRun:
    """Read a complete run folder; the model is loaded with Keras safe_mode=True unless `unsafe`. With `portable`
    (predict, evaluate), the run's model.onnx in onnxruntime where it has one, checked when it was trained: no
    TensorFlow in the process; else the Keras model, and `why_tensorflow` says why."""
    folder = artifacts.Folder(Path(run_dir), "run")
    manifest = folder.manifest()
    schema = Schema.load(folder.path)
    config = load_config(folder / artifacts.CONFIG)
    why = None
    if portable:
        graph, why = _portable_graph(folder, manifest)
        if graph is not None:
            return LoadedRun(folder.path, manifest, schema, config, graph, engine="onnxruntime")
    from . import features
    from .keras_env import import_keras

    import_keras(config.seed)
    network = load_network(folder / artifacts.MODEL, unsafe)
    try:
        serving = features.serving_model(schema, network)
    except ValueError as e:
        raise DataError(f"{folder / artifacts.MODEL}: the model does not fit the run's schema.json "
                        f"(was it copied from another run?): {str(e).splitlines()[0]}") from None
    return LoadedRun(folder.path, manifest, schema, config, serving, network, why_tensorflow=why)


def checked_graph(run: Path, manifest: dict[str, Any]) -> tuple[Path | None, str | None]:
    """The run's model.onnx if it is the one its training wrote and checked, of the model.keras that is there now;
    else None and why not."""
    entry = manifest.get("portable")
    if entry is None:
        return None, "the run was trained before portable graphs (train it again for one)"
    if not entry.get("onnx"):
        return None, f"the run has no portable graph: {entry.get('why')}"
    path = Path(run) / entry["onnx"]
    if not path.exists() or artifacts.sha256(path) != entry.get("sha256"):
        return None, f"{path} is missing or is not the one trained with the run"
    if artifacts.sha256(Path(run) / artifacts.MODEL) != entry.get("model_sha256"):
        return None, f"{Path(run) / artifacts.MODEL} is not the model its portable graph was made from"
    return path, None


def _portable_graph(folder: artifacts.Folder, manifest: dict[str, Any]) -> tuple[Any, str | None]:
    """The run's model.onnx in onnxruntime, or None and why not."""
    import importlib.util

    path, why = checked_graph(folder.path, manifest)
    if path is None:
        return None, why
    if importlib.util.find_spec("onnxruntime") is None:
        return None, "onnxruntime is not installed (pip install 'bigmodel[onnx]')"
    from . import runtimes

    return runtimes.load(path), None
