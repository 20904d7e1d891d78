"""Bounded-memory preprocessing for files larger than memory (`data.streaming`: true, or auto above 512 MiB).

The file is read in chunks of `data.chunk_rows` rows, twice over small state, never whole:

1. Each chunk is normalised to fixed column types (numeric columns float64, the others strings, as the
   in-memory path reads them), hashed for duplicate detection, and appended to a temporary row-grouped
   Parquet file; its labels are kept (one small column). Column kinds come from the first chunk (or from
   `data.columns`).
2. The split is drawn from the labels alone by the same `split_positions` as the in-memory path, so the
   splits hold the same rows in the same order. Each normalised chunk is then routed to the split files
   (row-grouped Parquet, written incrementally); the train rows' numeric columns go to an on-disk matrix
   (exact medians, one column in memory at a time) and their categories to running counts.

`train` then encodes the splits chunk by chunk into an on-disk feature matrix and feeds batches from it
(bigmodel_cli/train.py), with the same batch order as in memory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts
from .config import Config
from .data import read_chunks
from .errors import DataError
from .preprocess import (
    Inference,
    PreprocessResult,
    categorical_feature,
    category_counts,
    check_classes,
    finish,
    infer_kinds,
    infer_task,
    make_schema,
    numeric_feature,
    split_positions,
    text_feature,
)
from .schema import Schema, as_str, model_key, numeric_column

AUTO_BYTES = 512 << 20  # data.streaming: auto streams files larger than this


def wanted(data: Path, cfg: Config) -> bool:
    s = cfg.data.streaming
    if s == "auto":
        try:
            size = Path(data).stat().st_size
        except OSError:
            return False
        return size > AUTO_BYTES
    return bool(s)


def preprocess(data: Path, out: Path, cfg: Config) -> PreprocessResult:
    folder = artifacts.Folder(Path(out), "prep")
    target = cfg.data.target
    source = str(data)
    if not target:
        raise DataError(f"{data}: no target column given; pass --target COLUMN or set data.target")
    chunks = read_chunks(Path(data), cfg.data, cfg.data.chunk_rows)
    first = next(chunks)
    if target not in first.columns:
        raise DataError(f"{data}: target column '{target}' not found; columns are: {', '.join(first.columns)}")
    unknown = [c for c in [*cfg.data.columns, *cfg.data.id_columns] if c not in first.columns]
    if unknown:
        raise DataError(f"{data}: data.columns / data.id_columns name column(s) not in the file: {', '.join(unknown)}")
    inf: Inference = infer_kinds(first[first[target].notna()], target, cfg, source)
    inf.notes.append(f"streaming: column kinds inferred from the first {len(first)} rows")
    task = infer_task(first[target], cfg)
    numeric = {c for c, k in inf.kinds.items() if k == "numeric"} | ({target} if task == "regression" else set())
    columns = list(first.columns)
    folder.prepare()
    work = Path(tempfile.mkdtemp(prefix=".streaming.", dir=folder.path))
    try:
        return _run(data, folder, cfg, work, first, chunks, columns, numeric, inf, task, source)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(data: Path, folder: artifacts.Folder, cfg: Config, work: Path, first: pd.DataFrame, chunks: Any,
         columns: list[str], numeric: set[str], inf: Inference, task: str, source: str) -> PreprocessResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = cfg.data.target
    arrow = pa.schema([(c, pa.float64() if c in numeric else pa.string()) for c in columns])
    staged = work / "rows.parquet"
    hashes, labels = [], []
    start = 0
    # pass 1: normalise, hash, stage
    with pq.ParquetWriter(staged, arrow) as writer:
        for chunk in _chain(first, chunks):
            if list(chunk.columns) != columns:
                raise DataError(f"{data}: the columns change at data row {start + 1}")
            norm = pd.DataFrame({c: numeric_column(chunk[c], c, source, start) if c in numeric
                                 else _strings(chunk[c]) for c in columns})
            hashes.append(pd.util.hash_pandas_object(norm, index=False).to_numpy())
            # compact: a copy of the column (a view would keep the whole chunk's string block alive), categorical
            labels.append(norm[target].to_numpy(copy=True) if target in numeric else pd.Categorical(norm[target]))
            writer.write_table(pa.Table.from_pandas(norm, schema=arrow, preserve_index=False))
            start += len(chunk)
    rows_in = start
    hashed = np.concatenate(hashes)
    dup = pd.Series(hashed).duplicated().to_numpy() if cfg.preprocess.drop_duplicates else np.zeros(rows_in, bool)
    y_all = pd.Series(np.concatenate(labels) if target in numeric else
                      pd.api.types.union_categoricals(labels, sort_categories=True))
    missing = y_all.isna().to_numpy() & ~dup
    keep = ~dup & ~y_all.isna().to_numpy()
    y = y_all[keep].reset_index(drop=True)
    if len(y) == 0:
        raise DataError(f"{data}: target column '{target}' has no values")
    classes = [] if task == "regression" else check_classes(y, task, target, data)
    positions = split_positions(len(y), y if task != "regression" else None, cfg, inf.notes)
    which = np.full(len(y), -1, dtype=np.int8)
    names = list(positions)
    for i, name in enumerate(names):
        which[positions[name]] = i
    n_train = len(positions["train"])
    if n_train < 2:
        raise DataError(f"{data}: too few rows ({len(y)}) to split into train / validation / test")

    # pass 2: route rows to the splits; train statistics
    num_cols = [c for c, k in inf.kinds.items() if k == "numeric"]
    cat_cols = [c for c, k in inf.kinds.items() if k in ("categorical", "boolean")]
    # each train numeric column appended to its own file (written, not memory-mapped: pages stay out of RSS)
    column_file = {c: work / f"numeric{j}.f64" for j, c in enumerate(num_cols)}
    counts: dict[str, pd.Series] = {c: pd.Series(dtype="int64") for c in cat_cols}
    missing_counts = dict.fromkeys(inf.kinds, 0)
    unique: dict[str, set[str]] = {c: set() for c in cat_cols}
    balance = {n: dict.fromkeys(classes, 0) for n in names} if classes else {}
    with contextlib.ExitStack() as stack:  # on an error: writers closed, then the temp files removed
        paths = {n: stack.enter_context(artifacts.atomic_path(folder / artifacts.SPLIT_FILES[n])) for n in names}
        writers = {n: stack.enter_context(pq.ParquetWriter(paths[n], arrow)) for n in names}
        columns_out = {c: stack.enter_context(open(column_file[c], "wb")) for c in num_cols}
        row, kept_at = 0, 0
        staged_file = pq.ParquetFile(staged)
        for g in range(staged_file.num_row_groups):
            part = staged_file.read_row_group(g).to_pandas()
            k = keep[row:row + len(part)]
            row += len(part)
            part = part[k]
            w = which[kept_at:kept_at + len(part)]
            kept_at += len(part)
            for c in inf.kinds:
                missing_counts[c] += int(part[c].isna().sum())
            for c in cat_cols:
                unique[c].update(part[c].dropna().unique().tolist())
            for i, name in enumerate(names):
                rows = part[w == i]
                if len(rows) == 0:
                    continue
                writers[name].write_table(pa.Table.from_pandas(rows, schema=arrow, preserve_index=False))
                if classes:
                    for c, v in rows[target].value_counts().items():
                        balance[name][c] += int(v)
                if name == "train":
                    for c in num_cols:
                        columns_out[c].write(rows[c].to_numpy(dtype="float64", na_value=np.nan).tobytes())
                    for c in cat_cols:
                        counts[c] = counts[c].add(category_counts(rows[c]), fill_value=0).astype("int64")

    features, taken = [], set()
    for col, kind in inf.kinds.items():
        if kind in ("id", "ignore"):
            continue
        key = model_key(col, taken)
        if kind == "numeric":
            features.append(numeric_feature(col, key, np.fromfile(column_file[col], dtype="float64")))
        elif kind in ("categorical", "boolean"):
            features.append(categorical_feature(col, key, kind, counts[col], cfg))
        else:
            features.append(text_feature(col, key, _text_batches(folder / artifacts.TRAIN, col), cfg))
    if not features:
        raise DataError("no usable feature columns: every column is the target, an id, empty or ignored")
    schema = make_schema(target, task, features, classes, inf, cfg)
    report = {
        "rows_in": rows_in, "duplicates_dropped": int(dup.sum()), "missing_target_dropped": int(missing.sum()),
        "rows_out": int(keep.sum()), "splits": {n: len(p) for n, p in positions.items()},
        "columns": {c: {"kind": k, "missing": missing_counts[c],
                        "unique": len(unique[c]) if c in unique else None,
                        "imputed_with": next((f.fill for f in features if f.name == c and missing_counts[c]
                                              and k != "text"), None)} for c, k in inf.kinds.items()},
        "class_balance": balance, "notes": inf.notes, "streaming": True,
    }
    return finish(folder, data, cfg, schema, report, rows_in, {"streaming": {"chunk_rows": cfg.data.chunk_rows}})


def _strings(s: pd.Series) -> pd.Series:
    text = as_str(s)
    return text.mask(text == "")  # missing stays missing


def _chain(first: pd.DataFrame, rest: Any) -> Any:
    yield first
    yield from rest


def _text_batches(path: Path, col: str) -> Any:
    """A text column of a row-grouped Parquet file as a tf.data dataset of string batches (for adapt)."""
    import pyarrow.parquet as pq
    import tensorflow as tf

    def gen() -> Any:
        f = pq.ParquetFile(path)
        for g in range(f.num_row_groups):
            yield as_str(f.read_row_group(g, columns=[col]).to_pandas()[col]).to_numpy(dtype=str)

    return tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec(shape=(None,), dtype=tf.string))


class DiskMatrix:
    """A float32 row-major matrix in a file, read by row with pread: the rows a batch needs pass through the
    kernel's page cache, never through this process's resident memory (a memory map would count there)."""

    def __init__(self, path: Path, rows: int, width: int) -> None:
        self.path, self.shape = Path(path), (rows, width)
        self._row = width * 4
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, idx: np.ndarray) -> np.ndarray:
        read, row = os.pread, self._row
        data = b"".join(read(self._fd, row, int(i) * row) for i in idx)
        return np.frombuffer(data, dtype="float32").reshape(len(idx), self.shape[1])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.fromfile(self.path, dtype="float32").reshape(self.shape)

    def close(self) -> None:
        os.close(self._fd)


def encode_split(path: Path, schema: Schema, encoder: Any, where: Path, source: str) -> tuple[Any, np.ndarray]:
    """A split's encoded features written to a file one row group at a time (a DiskMatrix), and its labels
    (in memory: one number per row)."""
    import pyarrow.parquet as pq

    from . import features

    f = pq.ParquetFile(path)
    labels, at, width = [], 0, 0
    with open(where, "wb") as out:
        for g in range(f.num_row_groups):
            df = f.read_row_group(g).to_pandas()
            if len(df) == 0:
                continue
            x = features.predict(encoder, features.to_inputs(df, schema, source)).astype("float32", copy=False)
            out.write(np.ascontiguousarray(x).tobytes())
            width = x.shape[1]
            labels.append(schema.labels(df, source))
            at += len(x)
    return DiskMatrix(where, at, width), (np.concatenate(labels) if labels else np.zeros(0, dtype="float32"))
