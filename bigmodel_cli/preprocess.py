"""`bigmodel preprocess`: infer the schema, clean, split, fit the feature preprocessing on train.

The in-memory path is here; files larger than memory take streaming.py's path. Both fit with columns.py
and write the prep folder with folders.write_prep.
"""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts, columns
from .config import Config
from .data import read_table, streams, write_rows
from .errors import DataError
from .folders import write_prep
from .schema import Schema, as_str, date_column, numeric_column


@dataclass(frozen=True)
class PreprocessResult:
    out: Path
    schema: Schema
    report: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "task": self.schema.task, "target": self.schema.target, **self.report}


@dataclass(frozen=True)
class PreprocessOptions:
    """What `preprocess` is asked to do."""

    data: Path  # a CSV or Parquet file
    out: Path  # the prep folder to write
    config: Config  # resolved (config.resolve)


def run(options: PreprocessOptions, on_event: Any = None) -> PreprocessResult:
    """Read the data, clean it, split it, fit the preprocessing on train and write the prep folder."""
    data, cfg = options.data, options.config
    folder = artifacts.Folder(Path(options.out), "prep")
    if streams(data, cfg.data):
        from . import streaming

        fitted = streaming.preprocess(data, folder, cfg)
    else:
        fitted = _in_memory(data, folder, cfg)
    write_prep(folder, data, cfg, fitted.schema, fitted.report, fitted.rows_in, fitted.extra, fitted.hashes)
    return PreprocessResult(folder.path, fitted.schema, fitted.report)


def _in_memory(data: Path, folder: artifacts.Folder, cfg: Config) -> columns.Fitted:
    """Read the whole file, drop duplicates and rows without a target, split, fit, write the splits.

    Three threads: the input file is hashed while it is parsed; once the split is drawn, two threads
    gather the splits from one Arrow table of the cleaned rows and write (and hash) them (train in one,
    val then test in the other) while this one infers the column kinds and fits the statistics. The split
    files are renamed into place only if everything succeeds."""
    import pyarrow as pa

    stop = threading.Event()  # set on an error or Ctrl-C: the writer gives up at its next row group
    with ThreadPoolExecutor(2, thread_name_prefix="preprocess") as pool:
        # (only a regular file: read_table refuses a pipe, and hashing one here would block this pool's exit)
        data_sha = pool.submit(artifacts.sha256, Path(data), stop) if Path(data).is_file() else None
        try:
            rows = _clean(data, folder, cfg)
            with contextlib.ExitStack() as stack:
                tmps = {n: stack.enter_context(artifacts.atomic_path(folder / artifacts.SPLIT_FILES[n]))
                        for n in rows.positions}
                table = pa.Table.from_pandas(rows.df, preserve_index=False)  # one schema for the three splits
                written = {n: pool.submit(_write_split, table, pos, tmps[n], folder / artifacts.SPLIT_FILES[n], stop)
                           for n, pos in rows.positions.items()}
                del table
                try:
                    schema, report = _fit(rows, cfg, data)
                    hashes = {n: w.result() for n, w in written.items()}
                except BaseException:
                    stop.set()
                    for w in written.values():
                        w.cancel()  # those not started yet
                    wait(written.values())  # before the temp files go
                    raise
        except BaseException:
            stop.set()
            raise
    if data_sha is not None:
        hashes["data"] = data_sha.result()
    return columns.Fitted(schema, report, report["rows_in"], hashes=hashes)


def _write_split(table: Any, rows: np.ndarray, path: Path, final: Path, stop: threading.Event) -> str:
    """A split's rows to its temporary file `path`; the file's SHA-256. Errors name the split's file."""
    with artifacts.writing(final):  # disk full: the split being written, not the last one opened
        write_rows(table, rows, path, stop)
        return artifacts.sha256(path)


@dataclass
class _Rows:
    """The cleaned rows, the label and the split: what the writer needs before any column is looked at."""

    df: pd.DataFrame
    target: str
    task: str
    classes: list[str]
    codes: np.ndarray | None  # classification: each row's class, as a code of `coded`
    coded: list[str]
    positions: dict[str, np.ndarray]
    counts: columns.Rows
    notes: list[str]  # of the cleaning: the report's first notes
    split_notes: list[str]  # of the split: its last (after those of the kind inference, as they always were)


def _clean(data: Path, folder: artifacts.Folder, cfg: Config) -> _Rows:
    """Read the file, drop duplicates and rows without a target, check the target, draw the split."""
    df = read_table(data, cfg.data)
    target = columns.check_target(cfg.data.target, list(df.columns), cfg, data)
    folder.prepare()
    rows_in = len(df)
    raw_target = df[target]  # before any row is dropped: errors name the row of the file
    keep = df[target].notna().to_numpy()
    duplicates = 0
    if cfg.preprocess.drop_duplicates:  # rows compared by a 64-bit hash of all their values: one vectorised pass
        dup = pd.util.hash_pandas_object(df, index=False).duplicated().to_numpy()
        duplicates = int(dup.sum())
        keep = keep & ~dup
    missing_target = len(df) - duplicates - int(keep.sum())
    if not keep.all():  # (a copy of every column: only when a row goes)
        df = df[keep].reset_index(drop=True)
    if len(df) == 0:
        raise DataError(f"{data}: target column '{target}' has no values")
    columns.check_rows(len(df), cfg, data)

    task = columns.infer_task(df[target], cfg)
    y = df[target]
    classes: list[str] = []
    if task == "regression":
        numeric_column(raw_target, target, str(data), target=True)
    else:
        y = as_str(y, objects=False)
        classes = columns.check_classes(y, task, target, data)
    split_notes: list[str] = []
    codes, coded = columns.class_codes(y) if classes else (None, [])
    positions = columns.split_positions(len(df), codes, cfg, split_notes)
    if len(positions["train"]) < 2:
        raise DataError(f"{data}: too few rows ({len(df)}) to split into train / validation / test")
    counts = columns.Rows(rows_in, duplicates, missing_target, {n: len(p) for n, p in positions.items()})
    return _Rows(df, target, task, classes, codes, coded, positions, counts,
                 columns.dropped_notes(target, missing_target, duplicates), split_notes)


def _fit(rows: _Rows, cfg: Config, data: Path) -> tuple[Schema, dict[str, Any]]:
    """Infer the column kinds, fit the features on the train split, make the data report."""
    df, target, train = rows.df, rows.target, rows.positions["train"]
    inf = columns.infer_kinds(df, target, cfg, str(data))
    inf.notes[:0] = rows.notes
    inf.notes.extend(rows.split_notes)

    def column(c: str) -> pd.Series:  # a train column, taken one at a time
        return columns.take(df[c], train)

    # dates parsed whole (an error names the row in the file), as days since 1970
    days = {c: date_column(df[c], c, str(data), cfg.data.date_formats.get(c))
            for c, k in inf.kinds.items() if k == "date"}

    def number(c: str) -> np.ndarray:
        return days[c][train] if c in days else numeric_column(column(c), c, "train split")

    features = columns.fit_features(
        inf.kinds, cfg, numeric=number,
        counts=lambda c: columns.category_counts(column(c)), text=lambda c: as_str(column(c)).to_numpy(dtype=str))
    y_train = numeric_column(column(target), target, "train split") if rows.task == "regression" else None
    schema = columns.make_schema(target, rows.task, features, rows.classes, inf, cfg, y_train)

    # distinct values of the non-numeric columns (counting them for 1M floats costs more than it tells)
    missing = {c: columns.missing_numbers(df[c], c) if k == "numeric" else
               int(np.isnan(days[c]).sum()) if k == "date" else int(df[c].isna().sum()) for c, k in inf.kinds.items()}
    unique: dict[str, int | None] = {c: inf.distinct[c] if c in inf.distinct else int(df[c].nunique())
              for c, k in inf.kinds.items() if k not in ("numeric", "date")}
    balance = {}
    if schema.is_classification:
        assert rows.codes is not None  # a classification target's codes
        for name, pos in rows.positions.items():
            counts = dict(zip(rows.coded, np.bincount(rows.codes[pos], minlength=len(rows.coded)).tolist(),
                              strict=True))
            balance[name] = {c: counts[c] for c in rows.classes}
    return schema, columns.report(rows.counts, inf, schema, missing, unique, balance)
