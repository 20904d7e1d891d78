"""`bigmodel predict`: batch predictions from a run's model, through the run's own preprocessing
(folders.LoadedRun, the same path `evaluate` and `export` take)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts, drift
from .data import is_parquet, read_table, streams, write_table
from .errors import DataError
from .folders import LoadedRun, Predictions, RowCount, load_run, merge, parquet_rows


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
    engine: str = "tensorflow"  # or "onnxruntime" (the run's portable graph)
    why_tensorflow: str | None = None  # why the run's portable graph could not be used
    drift: dict[str, Any] | None = None  # with --drift: the rows compared with the train split (as `bigmodel drift`)

    @property
    def drifted(self) -> list[str]:
        return self.drift["drifted"] if self.drift else []

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "rows": self.rows, "unseen_categories": self.unseen_categories,
                "ignored_columns": self.ignored_columns, "engine": self.engine, "why_tensorflow": self.why_tensorflow,
                **({"drift": self.drift} if self.drift is not None else {})}


@dataclass(frozen=True)
class PredictOptions:
    """What `predict` is asked to do."""

    run: Path  # the run folder
    data: Path  # the rows to predict (CSV or Parquet)
    out: Path  # the predictions file (CSV or Parquet, by its suffix)
    unsafe: bool = False  # load a model with code in it
    drift: bool = False  # also compare the rows with the train split


def run(options: PredictOptions, on_event: Any = None) -> PredictResult:
    """The run's predictions for every row of the data file, with its id columns, written whole or not at all.
    `on_event("rows", done, total)` hears the progress (total None: a streamed CSV)."""
    run_dir, data, out, unsafe = options.run, options.data, options.out, options.unsafe
    loaded = load_run(run_dir, unsafe, portable=True)
    engine, why = loaded.engine, loaded.why_tensorflow
    # the id columns of a CSV as written: the same in every chunk as read whole ('x9' late in a column of
    # numbers cannot change a streamed Parquet output's column type), and '007' stays '007'
    ids = tuple(loaded.schema.id_columns)
    counts = drift.tally(loaded.path, loaded.schema, loaded.config) if options.drift else None

    def compared() -> dict[str, Any] | None:
        return None if counts is None else counts.result(drift.thresholds(loaded.config.drift))

    if not streams(data, loaded.config.data):
        df = read_table(data, loaded.config.data, text=ids)
        preds = loaded.predict_rows(df, str(data), on_rows=RowCount(on_event, len(df)) if on_event else None)
        if counts is not None:
            counts.add(df, str(data))
        table = frame(loaded, df, preds)
        try:
            with artifacts.atomic_path(Path(out)) as tmp:
                write_table(table, tmp)
        except OSError as e:
            raise DataError(f"{out}: cannot write: {e.strerror or e}") from None
        return PredictResult(Path(out), len(table), preds.unseen_categories, preds.ignored_columns, engine, why,
                             compared())
    # data.streaming: chunk by chunk, appended to the output
    from .data import read_chunks

    parts, rows = [], 0
    count = RowCount(on_event, parquet_rows(data) if is_parquet(data) else None) if on_event else None
    try:
        with artifacts.atomic_path(Path(out)) as tmp, contextlib.ExitStack() as stack:
            writer = None
            for df in read_chunks(data, loaded.config.data, loaded.config.data.chunk_rows, text=ids):
                preds = loaded.predict_rows(df, str(data), rows, count)  # (errors name the file's row)
                if counts is not None:
                    counts.add(df, str(data))
                table = frame(loaded, df, preds)
                if is_parquet(Path(out)):
                    import pyarrow as pa
                    import pyarrow.parquet as pq

                    arrow = pa.Table.from_pandas(table, preserve_index=False)
                    if writer is None:
                        writer = stack.enter_context(pq.ParquetWriter(tmp, arrow.schema))
                    elif arrow.schema != writer.schema:  # a chunk's id column typed apart (Parquet ints with a
                        arrow = _as_first(table, writer.schema, data, rows)  # null in this batch: floats)
                    writer.write_table(arrow)
                else:
                    table.to_csv(tmp, index=False, mode="a" if rows else "w", header=not rows)
                rows += len(table)
                parts.append(Predictions(None, np.zeros(0), preds.unseen_categories, preds.ignored_columns))
    except OSError as e:
        raise DataError(f"{out}: cannot write: {e.strerror or e}") from None
    summary = merge(parts)
    return PredictResult(Path(out), rows, summary.unseen_categories, summary.ignored_columns, engine, why,
                         compared())


def _as_first(table: pd.DataFrame, schema: Any, data: Path, first_row: int) -> Any:
    """A streamed chunk's predictions in the first chunk's Arrow types (one Parquet file has one schema), or a
    one-line error naming the column whose values cannot take them."""
    import pyarrow as pa

    try:
        return pa.Table.from_pandas(table, schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError, TypeError):
        bad = next((f.name for f in schema if f.name in table.columns and
                    pa.Table.from_pandas(table[[f.name]], preserve_index=False).schema.field(f.name).type != f.type),
                   "?")
        raise DataError(f"{data}: column '{bad}' holds values of another type from data row {first_row + 1} on "
                        f"than before it; streamed Parquet predictions keep one type per column: write CSV "
                        f"(--out ....csv) or give the column one type") from None
