"""`bigmodel predict`: batch predictions from a run's model, through the run's own preprocessing.

`LoadedRun` is also how `evaluate` and `export` read a run folder, so all three share one path
from raw columns to predictions.
"""

from __future__ import annotations

import contextlib
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts
from .config import Config, load_config
from .data import read_table, write_table
from .errors import DataError
from .schema import Schema

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Predictions:
    probabilities: np.ndarray | None  # (n, classes) for classification
    values: np.ndarray  # predicted class index, or predicted value (regression)
    unseen_categories: dict[str, int]
    ignored_columns: list[str]


@dataclass(frozen=True)
class LoadedRun:
    path: Path
    manifest: dict[str, Any]
    schema: Schema
    config: Config
    serving: Any  # keras.Model: raw columns -> network output

    @property
    def threshold(self) -> float:
        """Binary tasks: predict the positive class at or above this probability (evaluate.threshold)."""
        return float(self.manifest.get("threshold") or 0.5)

    @property
    def prep_dir(self) -> Path:
        return Path(self.manifest["prep_dir"])

    def predict(self, df: pd.DataFrame, source: str) -> Predictions:
        from . import features

        ignored = self.schema.check_columns(df, source, need_target=False)
        out = features.predict(self.serving, features.to_inputs(df, self.schema, source))
        unseen = features.unseen_categories(df, self.schema)
        if not self.schema.is_classification:
            return Predictions(None, out[:, 0], unseen, ignored)
        if self.schema.task == "binary":
            probs = np.hstack([1 - out, out])
            return Predictions(probs, (out[:, 0] >= self.threshold).astype(int), unseen, ignored)
        return Predictions(out, out.argmax(axis=1), unseen, ignored)

    def split_path(self, name: str) -> Path:
        path = self.prep_dir / artifacts.SPLIT_FILES[name]
        if not path.exists():
            raise DataError(f"{self.path}: its prep folder {self.prep_dir} has no {artifacts.SPLIT_FILES[name]}; "
                            f"pass --data")
        return path

    def split(self, name: str) -> pd.DataFrame:
        return pd.read_parquet(self.split_path(name))


def load_network(path: Path, unsafe: bool = False) -> Any:
    """Load a .keras model with Keras safe_mode (no code from the file runs) unless `unsafe` is asked for."""
    from . import privacy  # noqa: F401  (registers DPSequential for loading)
    from .keras_env import import_keras

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
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "safe_mode" in str(e) or "unsafe" in str(e).lower():
            raise DataError(f"{path}: refused to load: the model contains code (e.g. a Lambda layer) that would run "
                            f"on loading; pass --unsafe-load only if you trust this file") from None
        raise DataError(f"{path}: cannot load the model: {msg}") from None


def load(run_dir: Path, unsafe: bool = False) -> LoadedRun:
    """Read a complete run folder; the model is loaded with Keras safe_mode=True unless `unsafe`."""
    folder = artifacts.Folder(Path(run_dir), "run")
    manifest = folder.manifest()
    schema = Schema.load(folder.path)
    config = load_config(folder / artifacts.CONFIG)
    from . import features
    from .keras_env import import_keras

    import_keras(config.seed)
    network = load_network(folder / artifacts.MODEL, unsafe)
    try:
        serving = features.serving_model(schema, network)
    except ValueError as e:
        raise DataError(f"{folder / artifacts.MODEL}: the model does not fit the run's schema.json "
                        f"(was it copied from another run?): {str(e).splitlines()[0]}") from None
    return LoadedRun(folder.path, manifest, schema, config, serving)


def frame(run: LoadedRun, df: pd.DataFrame, preds: Predictions) -> pd.DataFrame:
    """The output table: the input's id columns, class probabilities and label (or the value)."""
    s = run.schema
    cols: dict[str, Any] = {c: df[c].to_numpy() for c in s.id_columns if c in df.columns}
    if preds.probabilities is not None:
        for i, c in enumerate(s.classes):
            cols[f"prob_{c}"] = preds.probabilities[:, i]
        cols[f"predicted_{s.target}"] = np.asarray(s.classes, dtype=object)[preds.values]
    else:
        cols[f"predicted_{s.target}"] = preds.values
    return pd.DataFrame(cols)


@dataclass(frozen=True)
class PredictResult:
    out: Path
    rows: int
    unseen_categories: dict[str, int]
    ignored_columns: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "rows": self.rows, "unseen_categories": self.unseen_categories,
                "ignored_columns": self.ignored_columns}


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


def run(run_dir: Path, data: Path, out: Path, unsafe: bool = False) -> PredictResult:
    from . import streaming

    loaded = load(run_dir, unsafe)
    if not streaming.wanted(data, loaded.config):
        df = read_table(data, loaded.config.data)
        preds = loaded.predict(df, str(data))
        table = frame(loaded, df, preds)
        try:
            with artifacts.atomic_path(Path(out)) as tmp:
                write_table(table, tmp)
        except OSError as e:
            raise DataError(f"{out}: cannot write: {e.strerror or e}") from None
        return PredictResult(Path(out), len(table), preds.unseen_categories, preds.ignored_columns)
    # data.streaming: chunk by chunk, appended to the output
    from .data import is_parquet, read_chunks

    parts, rows = [], 0
    try:
        with artifacts.atomic_path(Path(out)) as tmp, contextlib.ExitStack() as stack:
            writer = None
            for df in read_chunks(data, loaded.config.data, loaded.config.data.chunk_rows):
                preds = loaded.predict(df, str(data))
                table = frame(loaded, df, preds)
                if is_parquet(Path(out)):
                    import pyarrow as pa
                    import pyarrow.parquet as pq

                    arrow = pa.Table.from_pandas(table, preserve_index=False)
                    if writer is None:
                        writer = stack.enter_context(pq.ParquetWriter(tmp, arrow.schema))
                    writer.write_table(arrow)
                else:
                    table.to_csv(tmp, index=False, mode="a" if rows else "w", header=not rows)
                rows += len(table)
                parts.append(Predictions(None, np.zeros(0), preds.unseen_categories, preds.ignored_columns))
    except OSError as e:
        raise DataError(f"{out}: cannot write: {e.strerror or e}") from None
    summary = merge(parts)
    return PredictResult(Path(out), rows, summary.unseen_categories, summary.ignored_columns)
