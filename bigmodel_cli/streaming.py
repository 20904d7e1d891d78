"""Bounded-memory preprocessing for files larger than memory (`data.streaming`: true, or auto above 512 MiB).

The file is read in chunks of `data.chunk_rows` rows, twice over small state, never whole:

1. Each chunk is normalised to fixed column types (numeric columns float64, the others strings, as the
   in-memory path reads them), hashed for duplicate detection (preprocess.drop_duplicates), and appended to
   a temporary row-grouped Parquet file; its labels are kept (one small column). Column kinds come from the
   first chunk (or from `data.columns`). Each chunk is written by a second thread while the next is parsed,
   and the input file is hashed by a third.
2. The split is drawn from the labels alone by the same `split_positions` as the in-memory path, so the
   splits hold the same rows in the same order. Each normalised chunk is then routed to the split files
   (row-grouped Parquet, written incrementally); the train rows' numeric columns go to an on-disk matrix
   (exact medians, one column in memory at a time) and their categories to running counts. The split files
   are renamed into place only once the features are fitted.

`train` then encodes the splits chunk by chunk into an on-disk feature matrix and feeds batches from it
(bigmodel_cli/training/core.py), with the same batch order as in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts, columns
from .config import Config
from .data import parquet_options, read_chunks
from .errors import DataError
from .schema import Schema, as_str, date_column, numeric_column


@dataclass(frozen=True)
class _Plan:
    """What the first chunk decided: the column kinds, the task, the fixed column types."""

    data: Path
    cfg: Config
    inf: columns.Inference
    task: str
    names: list[str]  # the file's columns, in order
    numeric: set[str]  # read as float64 (numeric features, and a regression target)

    @property
    def target(self) -> str:
        return str(self.cfg.data.target)

    def arrow_schema(self) -> Any:
        import pyarrow as pa

        return pa.schema([(c, pa.float64() if c in self.numeric else pa.string()) for c in self.names])


@dataclass(frozen=True)
class _Staged:
    """Pass 1's outcome: every row normalised in one temp file, which rows are kept, their labels."""

    path: Path
    rows_in: int
    duplicate: np.ndarray  # bool per row
    keep: np.ndarray  # bool per row: not a duplicate, target present
    y: pd.Series  # the kept rows' labels
    # what the first chunk could not see (columns.infer_kinds on the whole file would): the values of columns
    # empty in the first chunk (up to INFER_SAMPLE of them), and the distinct values of its boolean columns
    late: dict[str, list[str]] = field(default_factory=dict)
    booleans: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class _TrainStats:
    """Pass 2's running state: per-column counts over all kept rows, train columns for fitting."""

    missing: dict[str, int]
    unique: dict[str, set[str]]
    counts: dict[str, pd.Series]
    balance: dict[str, dict[str, int]]
    numeric_files: dict[str, Path] = field(default_factory=dict)


def preprocess(data: Path, folder: artifacts.Folder, cfg: Config) -> columns.Fitted:
    """The streaming preprocess: stage the file (pass 1), split by the labels, route the rows to the split files
    with the train statistics (pass 2), fit the features."""
    stop = threading.Event()
    with ThreadPoolExecutor(2, thread_name_prefix="sha256") as pool:
        # beside pass 1, on the other core (a pipe cannot be read twice at once: hashed after, by write_prep)
        data_sha = pool.submit(artifacts.sha256, Path(data), stop) if Path(data).is_file() else None
        try:
            fitted = _preprocess(data, folder, cfg, pool)
        except BaseException:
            stop.set()  # do not hash the rest of a large file for nothing
            raise
        hashes = {**(fitted.hashes or {}), **({"data": data_sha.result()} if data_sha is not None else {})}
        return dataclasses.replace(fitted, hashes=hashes)


def _preprocess(data: Path, folder: artifacts.Folder, cfg: Config, pool: ThreadPoolExecutor) -> columns.Fitted:
    chunks = read_chunks(Path(data), cfg.data, cfg.data.chunk_rows)
    first = next(chunks)
    target = columns.check_target(cfg.data.target, list(first.columns), cfg, data)
    inf = columns.infer_kinds(first[first[target].notna()], target, cfg, str(data))
    inf.notes.append(f"streaming: column kinds inferred from the first {len(first)} rows")
    task = columns.infer_task(first[target], cfg)
    numeric = {c for c, k in inf.kinds.items() if k == "numeric"} | ({target} if task == "regression" else set())
    plan = _Plan(Path(data), cfg, inf, task, list(first.columns), numeric)
    folder.prepare()
    work = Path(tempfile.mkdtemp(prefix=".streaming.", dir=folder.path))
    try:
        # (not parsed ahead by a second thread: the parse's warnings filter is process-wide, and pandas code on
        # this thread enters and leaves warnings.catch_warnings, which would drop it mid-parse)
        staged = _stage(plan, _chain(first, chunks), work / "rows.parquet")
        if len(staged.y) == 0:
            raise DataError(f"{data}: target column '{target}' has no values")
        task = _second_look(plan, staged, task)
        columns.check_rows(len(staged.y), cfg, data)
        inf.notes[:0] = columns.dropped_notes(target, int((~staged.duplicate & ~staged.keep).sum()),
                                              int(staged.duplicate.sum()))
        classes = [] if task == "regression" else columns.check_classes(staged.y, task, target, data)
        positions = columns.split_positions(len(staged.y), columns.class_codes(staged.y)[0] if classes else None,
                                            cfg, inf.notes)
        if len(positions["train"]) < 2:
            raise DataError(f"{data}: too few rows ({len(staged.y)}) to split into train / validation / test")
        with contextlib.ExitStack() as splits:  # the split files renamed into place only once fitted
            paths = {n: splits.enter_context(artifacts.atomic_path(folder / artifacts.SPLIT_FILES[n]))
                     for n in positions}
            stats = _route(plan, staged, positions, classes, folder, paths, work)
            split_sha = {n: pool.submit(artifacts.sha256, p) for n, p in paths.items()}  # beside the fitting
            features = columns.fit_features(
                inf.kinds, cfg, numeric=lambda c: np.fromfile(stats.numeric_files[c], dtype="float64"),
                counts=lambda c: stats.counts[c], text=lambda c: _text_batches(paths["train"], c))
            hashes = {n: h.result() for n, h in split_sha.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    y_train = staged.y.to_numpy(dtype="float64")[positions["train"]] if task == "regression" else None
    schema = columns.make_schema(target, task, features, classes, inf, cfg, y_train)
    rows = columns.Rows(staged.rows_in, int(staged.duplicate.sum()),
                        int((~staged.duplicate & ~staged.keep).sum()), {n: len(p) for n, p in positions.items()})
    report = columns.report(rows, inf, schema, stats.missing, {c: len(v) for c, v in stats.unique.items()},
                            stats.balance)
    return columns.Fitted(schema, {**report, "streaming": True}, staged.rows_in,
                          {"streaming": {"chunk_rows": cfg.data.chunk_rows}},
                          hashes=hashes)


def _stage(plan: _Plan, chunks: Any, staged: Path) -> _Staged:
    """Pass 1: normalise each chunk to the fixed column types, hash its rows (drop_duplicates), keep its
    labels, append it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow, target, source = plan.arrow_schema(), plan.target, str(plan.data)
    hashes, labels = [], []
    given = {*plan.cfg.data.columns, *plan.cfg.data.id_columns, *plan.cfg.data.date_formats}
    late: dict[str, list[str]] = {c: [] for c, k in plan.inf.kinds.items() if k == "ignore" and c not in given}
    booleans: dict[str, set[str]] = {c: set() for c, k in plan.inf.kinds.items() if k == "boolean" and c not in given}
    start = 0
    writing = None  # the previous chunk's write, by a second thread (one in flight)
    with (pq.ParquetWriter(staged, arrow, **parquet_options(arrow)) as writer,
          ThreadPoolExecutor(1, thread_name_prefix="write") as pool):
        for chunk in chunks:
            if list(chunk.columns) != plan.names:
                raise DataError(f"{plan.data}: the columns change at data row {start + 1}")
            for c, k in plan.inf.kinds.items():  # dates stay as written; one that is no date: the error names it
                if k == "date":
                    date_column(chunk[c], c, source, plan.cfg.data.date_formats.get(c), start)
            norm = pd.DataFrame({c: numeric_column(chunk[c], c, source, start, target=c == target) if c in plan.numeric
                                 else _strings(chunk[c]) for c in plan.names})
            for c, seen in late.items():
                if len(seen) < columns.INFER_SAMPLE:
                    seen.extend(norm[c].dropna().head(columns.INFER_SAMPLE - len(seen)).tolist())
            for c, words in booleans.items():
                if len(words) <= len(columns.BOOLEAN_WORDS):
                    words.update(norm[c].dropna().str.lower().unique().tolist())
            if plan.cfg.preprocess.drop_duplicates:
                hashes.append(pd.util.hash_pandas_object(norm, index=False).to_numpy())
            # compact: a copy of the column (a view would keep the whole chunk's string block alive), categorical
            labels.append(norm[target].to_numpy(copy=True) if target in plan.numeric else pd.Categorical(norm[target]))
            table = pa.Table.from_pandas(norm, schema=arrow, preserve_index=False)
            if writing is not None:
                writing.result()
            writing = pool.submit(writer.write_table, table)
            start += len(chunk)
        if writing is not None:
            writing.result()
    dup = pd.Series(np.concatenate(hashes)).duplicated().to_numpy() if hashes else np.zeros(start, bool)
    y_all = pd.Series(np.concatenate(labels) if target in plan.numeric else
                      pd.api.types.union_categoricals(labels, sort_categories=True))
    keep = ~dup & ~y_all.isna().to_numpy()
    return _Staged(staged, start, dup, keep, y_all[keep].reset_index(drop=True),
                   {c: v for c, v in late.items() if v}, booleans)


def _second_look(plan: _Plan, staged: _Staged, task: str) -> str:
    """Where the whole file says otherwise than its first chunk, decide as a whole-file read would (#29): a
    column empty in the first chunk gets its kind from its later values, a boolean column with another word later
    is categorical, a binary target with a third class is multiclass; where the staged values cannot follow (a
    target of numbers taken for classes), a one-line error says what to set. Returns the task."""
    inf, n, source = plan.inf, plan.cfg.data.chunk_rows, plan.data
    for c, values in staged.late.items():
        raw = pd.Series(values, dtype=object)  # (staged as text: numbers as a CSV parser would give them)
        numbers = pd.to_numeric(raw, errors="coerce")
        try:
            kind = columns.infer_kinds(pd.DataFrame({c: numbers if numbers.notna().all() else raw}), plan.target,
                                       plan.cfg, str(source)).kinds[c]
        except DataError:
            raise DataError(f"{source}: column '{c}' is empty in the first {n} rows and mixes numbers and words "
                            f"after them; set its kind in data.columns") from None
        inf.kinds[c] = kind
        inf.notes.remove(f"'{c}' is empty: dropped")
        inf.notes.append(f"streaming: '{c}' is empty in the first {n} rows; its kind ({kind}) is from the rows "
                         f"after them")
    for c, words in staged.booleans.items():
        if not words <= columns.BOOLEAN_WORDS:
            inf.kinds[c] = "categorical"
    if plan.cfg.data.task != "auto" or task == "regression":
        return task
    labels = pd.Series(staged.y.cat.categories if hasattr(staged.y, "cat") else staged.y.unique())
    numbers = pd.to_numeric(labels, errors="coerce")
    if len(labels) and numbers.notna().all() and columns.infer_task(numbers, plan.cfg) == "regression":
        raise DataError(f"{source}: target '{plan.target}' looks like classes in the first {n} rows but holds "
                        f"{len(labels)} distinct numbers in the whole file; set data.task: regression")
    return "multiclass" if task == "binary" and len(labels) > 2 else task


def _route(plan: _Plan, staged: _Staged, positions: dict[str, np.ndarray], classes: list[str],
           folder: artifacts.Folder, paths: dict[str, Path], work: Path) -> _TrainStats:
    """Pass 2: each kept row to its split file; the counts of the report; the train rows' numeric columns to
    files of their own (exact medians, one column in memory at a time; written, not memory-mapped, so pages
    stay out of RSS) and their categories to running counts. `paths`: the split files' temporary paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = list(positions)
    which = np.full(len(staged.y), -1, dtype=np.int8)
    for i, name in enumerate(names):
        which[positions[name]] = i
    kinds = plan.inf.kinds
    num_cols = [c for c, k in kinds.items() if k in ("numeric", "date")]  # (a date: its days since 1970)
    cat_cols = [c for c, k in kinds.items() if k in ("categorical", "boolean")]
    stats = _TrainStats(missing=dict.fromkeys(kinds, 0), unique={c: set() for c in cat_cols},
                        counts={c: pd.Series(dtype="int64") for c in cat_cols},
                        balance={n: dict.fromkeys(classes, 0) for n in names} if classes else {},
                        numeric_files={c: work / f"numeric{j}.f64" for j, c in enumerate(num_cols)})
    arrow = plan.arrow_schema()
    with contextlib.ExitStack() as stack:  # on an error: writers closed, then the temp files removed
        writers = {n: stack.enter_context(pq.ParquetWriter(paths[n], arrow, **parquet_options(arrow)))
                   for n in names}
        numeric_out = {c: stack.enter_context(open(stats.numeric_files[c], "wb")) for c in num_cols}
        # a row group's splits are written by a second thread while this one counts the next (one group in
        # flight); exits before the writers close
        pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="write"))
        writing: list[Any] = []
        row, kept_at = 0, 0
        staged_file = pq.ParquetFile(staged.path)
        groups = prefetched(staged_file.read_row_group(g) for g in range(staged_file.num_row_groups))
        for group in groups:  # Arrow tables, row-group by row-group, never pandas
            part = group.filter(pa.array(staged.keep[row:row + group.num_rows]))
            row += group.num_rows
            w = which[kept_at:kept_at + part.num_rows]
            kept_at += part.num_rows
            for c in kinds:  # (the staged values are normalised: missing is null, NaN and ±inf included)
                stats.missing[c] += part.column(c).null_count
            for c in cat_cols:
                stats.unique[c].update(v for v in part.column(c).unique().to_pylist() if v is not None)
            for done in writing:
                done.result()
            writing = []
            for i, name in enumerate(names):
                rows = part.take(np.flatnonzero(w == i))
                if rows.num_rows == 0:
                    continue
                writing.append(pool.submit(_write, writers[name], rows, folder / artifacts.SPLIT_FILES[name]))
                if classes:
                    for vc in rows.column(plan.target).value_counts().to_pylist():
                        stats.balance[name][vc["values"]] += int(vc["counts"])
                if name == "train":
                    _train_stats(plan, rows, stats, numeric_out)
        for done in writing:
            done.result()
    return stats


def _train_stats(plan: _Plan, rows: Any, stats: _TrainStats, numeric_out: dict[str, Any]) -> None:
    """A row group's train rows: their numeric columns appended to their files (as float64), their categories
    added to the running counts."""
    kinds = plan.inf.kinds
    for c, out in numeric_out.items():
        if kinds[c] == "date":
            values = date_column(rows.column(c).to_pandas(), c, "train split", plan.cfg.data.date_formats.get(c))
        elif c not in plan.numeric:  # numbers first seen after the first chunk: staged as text
            values = numeric_column(rows.column(c).to_pandas(), c, "train split")
        else:
            values = rows.column(c).to_numpy()  # nulls as NaN
        out.write(np.asarray(values, dtype="float64").tobytes())
    for c in stats.counts:
        stats.counts[c] = stats.counts[c].add(columns.category_counts(rows.column(c).to_pandas()),
                                              fill_value=0).astype("int64")


def _write(writer: Any, rows: Any, final: Path) -> None:
    with artifacts.writing(final):  # disk full: name the split being written
        writer.write_table(rows)


def _strings(s: pd.Series) -> pd.Series:
    """A column as the stripped strings `as_str` makes, missing (and blank) as missing; in pandas' Arrow-backed
    string dtype (a Python object per value cost a third of pass 1)."""
    text = as_str(s, objects=False)
    return text.mask(text == "")


_END = object()


def prefetched(items: Iterator[Any]) -> Iterator[Any]:
    """The items of an iterator, each next one made by a second thread while the caller works on this one
    (reading a Parquet row group releases the GIL): one more item in memory. Only for work that leaves
    Python's warnings filters alone (they are process-wide; a CSV parse relies on one)."""
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool:
        ahead = pool.submit(next, items, _END)
        while (item := ahead.result()) is not _END:
            ahead = pool.submit(next, items, _END)
            yield item


def _chain(first: pd.DataFrame, rest: Any) -> Any:
    yield first
    yield from rest


def _text_batches(path: Path, col: str) -> Any:
    """A text column of a row-grouped Parquet file as a tf.data dataset of string batches (for adapt)."""
    import pyarrow.parquet as pq

    from .keras_env import tensorflow

    tf = tensorflow()

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
            x = features.apply(encoder, features.to_inputs(df, schema, source)).astype("float32", copy=False)
            out.write(np.ascontiguousarray(x).tobytes())
            width = x.shape[1]
            labels.append(schema.labels(df, source))
            at += len(x)
    return DiskMatrix(where, at, width), (np.concatenate(labels) if labels else np.zeros(0, dtype="float32"))
