"""The train split's reference statistics that `bigmodel drift` compares data with, written by `train` (and
`federated`) into the run folder as reference.json: per input column its missing rate and, for a number (a date: its
days), its range and the shares of its quantile bins; for a category, the shares of its TOP most frequent values
(the rest as one)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .schema import Schema, as_str, date_column, numeric_column

TOP = 50  # categories kept by name; the others are one bucket
OTHER = "\0other"  # (a name no column value can take)
SAMPLE_ROWS = 200_000  # reference statistics from at most this many train rows


def values(df: pd.DataFrame, f: Any, source: str) -> np.ndarray:
    """A number or date column as float64 (a date: its days since 1970-01-01), missing as NaN."""
    if f.kind == "date":
        return date_column(df[f.name], f.name, source, f.format).astype("float64")
    return numeric_column(df[f.name], f.name, source).astype("float64")


def statistics(train: pd.DataFrame, schema: Schema, bins: int = 10) -> dict[str, Any]:
    """The reference statistics of the train split (see the module's doc), for every number, date, category and
    boolean input column."""
    if len(train) > SAMPLE_ROWS:
        train = train.sample(SAMPLE_ROWS, random_state=0)
    columns: dict[str, Any] = {}
    for f in schema.features:
        if f.takes_number:
            v = values(train, f, "the train split")
            ok = v[np.isfinite(v)]
            if len(ok) == 0:
                continue
            edges = np.unique(np.quantile(ok, np.linspace(0, 1, bins + 1)[1:-1]))
            shares = np.bincount(np.searchsorted(edges, ok, side="left"), minlength=len(edges) + 1) / len(ok)
            columns[f.name] = {"kind": "number", "missing": float(1 - len(ok) / len(v)), "min": float(ok.min()),
                               "max": float(ok.max()), "edges": edges.tolist(), "shares": shares.tolist()}
        elif f.kind in ("categorical", "boolean"):
            text = as_str(train[f.name])
            present = text[text != ""]
            counts = present.value_counts()
            top = counts.head(TOP)
            top_shares = {str(k): float(n / max(len(present), 1)) for k, n in top.items()}
            rest = float((counts.sum() - top.sum()) / max(len(present), 1))
            columns[f.name] = {"kind": "category", "missing": float(1 - len(present) / max(len(text), 1)),
                               "shares": {**top_shares, **({OTHER: rest} if rest > 0 else {})}}
    return {"rows": len(train), "bins": bins, "columns": columns}
