"""`bigmodel preprocess`: infer the schema, clean, split, fit the feature preprocessing on train.

The in-memory path is here; files larger than memory take streaming.py's path. Both fit with columns.py
and write the prep folder with folders.write_prep.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts, columns
from .config import Config
from .data import read_table, streams, write_parquet
from .errors import DataError
from .folders import write_prep
from .schema import Schema, as_str, numeric_column


@dataclass(frozen=True)
class PreprocessResult:
    out: Path
    schema: Schema
    report: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "task": self.schema.task, "target": self.schema.target, **self.report}


def run(data: Path, out: Path, cfg: Config) -> PreprocessResult:
    """Read DATA, clean it, split it, fit the preprocessing on train and write PREP_DIR."""
    folder = artifacts.Folder(Path(out), "prep")
    if streams(data, cfg.data):
        from . import streaming

        fitted = streaming.preprocess(data, folder, cfg)
    else:
        fitted = _in_memory(data, folder, cfg)
    write_prep(folder, data, cfg, fitted.schema, fitted.report, fitted.rows_in, fitted.extra)
    return PreprocessResult(folder.path, fitted.schema, fitted.report)


def _in_memory(data: Path, folder: artifacts.Folder, cfg: Config) -> columns.Fitted:
    """Read the whole file, drop duplicates and rows without a target, split, fit, write the splits."""
    df = read_table(data, cfg.data)
    target = columns.check_target(cfg.data.target, list(df.columns), cfg, data)
    folder.prepare()
    rows_in = len(df)
    raw_target = df[target]  # before any row is dropped: errors name the row of the file
    duplicates = 0
    if cfg.preprocess.drop_duplicates:  # rows compared by a 64-bit hash of all their values: one vectorised pass
        dup = pd.util.hash_pandas_object(df, index=False).duplicated().to_numpy()
        duplicates = int(dup.sum())
        if duplicates:
            df = df[~dup]
    missing_target = int(df[target].isna().sum())
    df = df[df[target].notna()].reset_index(drop=True)
    if len(df) == 0:
        raise DataError(f"{data}: target column '{target}' has no values")
    columns.check_rows(len(df), cfg, data)

    inf = columns.infer_kinds(df, target, cfg, str(data))
    inf.notes[:0] = columns.dropped_notes(target, missing_target, duplicates)
    task = columns.infer_task(df[target], cfg)
    y = df[target]
    classes: list[str] = []
    if task == "regression":
        numeric_column(raw_target, target, str(data), target=True)
    else:
        y = as_str(y)
        classes = columns.check_classes(y, task, target, data)

    positions = columns.split_positions(len(df), y if task != "regression" else None, cfg, inf.notes)
    splits = {name: df.iloc[pos] for name, pos in positions.items()}
    if len(splits["train"]) < 2:
        raise DataError(f"{data}: too few rows ({len(df)}) to split into train / validation / test")
    train = splits["train"]
    features = columns.fit_features(
        inf.kinds, cfg, numeric=lambda c: numeric_column(train[c], c, "train split"),
        counts=lambda c: columns.category_counts(train[c]), text=lambda c: as_str(train[c]).to_numpy(dtype=str))
    y_train = numeric_column(train[target], target, "train split") if task == "regression" else None
    schema = columns.make_schema(target, task, features, classes, inf, cfg, y_train)

    # distinct values of the non-numeric columns (counting them for 1M floats costs more than it tells)
    missing = {c: int(np.isnan(numeric_column(df[c], c, "data")).sum()) if k == "numeric" else int(df[c].isna().sum())
               for c, k in inf.kinds.items()}
    unique = {c: int(df[c].nunique()) for c, k in inf.kinds.items() if k != "numeric"}
    balance = {}
    if schema.is_classification:
        for name, part in splits.items():
            counts = as_str(part[target]).value_counts()
            balance[name] = {c: int(counts.get(c, 0)) for c in classes}
    rows = columns.Rows(rows_in, duplicates, missing_target, {n: len(p) for n, p in splits.items()})
    report = columns.report(rows, inf, schema, missing, unique, balance)

    for name, part in splits.items():
        with artifacts.atomic_path(folder / artifacts.SPLIT_FILES[name]) as tmp:
            write_parquet(part, tmp)
    return columns.Fitted(schema, report, rows_in)
