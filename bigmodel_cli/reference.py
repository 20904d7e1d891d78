"""The train split's reference statistics that `bigmodel drift` (and `serve`'s /metrics) compare data with, and
how one column of a sample compares (PSI, Jensen-Shannon distance, missing rate, out-of-range share). `train` (and
`federated`) write them into the run folder as reference.json: per input column its missing rate and, for a number
(a date: its days), its range and the shares of its quantile bins; for a category, the shares of its TOP most
frequent values (the rest as one)."""

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


FLOOR = 1e-4  # a share floor in the PSI and its log: an empty bin is "rare", not "impossible"


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e, a = np.maximum(expected, FLOOR), np.maximum(actual, FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def _js(expected: np.ndarray, actual: np.ndarray) -> float:
    m = (expected + actual) / 2

    def kl(p: np.ndarray) -> float:
        nz = p > 0
        return float(np.sum(p[nz] * np.log2(p[nz] / m[nz])))

    return float(np.sqrt(max(0.0, (kl(expected) + kl(actual)) / 2)))


def compare_column(r: dict[str, Any], data: Any) -> dict[str, Any]:
    """One column of a sample against its reference statistics `r`: psi, js, missing (reference and sample) and,
    for a number, out_of_range; for a category, up to five values the train split did not have. `data`: a number's
    float values (NaN missing), or a category's stripped strings ('' missing)."""
    if r["kind"] == "number":
        v = np.asarray(data, dtype="float64")
        ok = v[np.isfinite(v)]
        edges = np.asarray(r["edges"])
        actual = (np.bincount(np.searchsorted(edges, ok, side="left"), minlength=len(edges) + 1) / len(ok)
                  if len(ok) else np.zeros(len(edges) + 1))
        expected = np.asarray(r["shares"])
        outside = float(((ok < r["min"]) | (ok > r["max"])).mean()) if len(ok) else 0.0
        missing = float(1 - len(ok) / max(len(v), 1))
        extra: dict[str, Any] = {"out_of_range": outside}
    else:
        text = pd.Series(data, dtype=object)
        present = text[text != ""]
        names = [k for k in r["shares"] if k != OTHER]
        counts = present.value_counts()
        known = np.array([counts.get(k, 0) for k in names], dtype="float64")
        rest = float(len(present) - known.sum())
        expected = np.array([r["shares"][k] for k in names] + [r["shares"].get(OTHER, 0.0)])
        actual = np.append(known, rest) / max(len(present), 1)
        missing = float(1 - len(present) / max(len(text), 1))
        new = [str(k) for k in counts.index if str(k) not in r["shares"]][:5]
        extra = {"new_values": new} if new and OTHER not in r["shares"] else {}
    return {"kind": r["kind"], "psi": _psi(expected, actual), "js": _js(expected, actual),
            "missing": {"reference": r["missing"], "data": missing}, **extra}


def why(c: dict[str, Any], limits: dict[str, float]) -> list[str]:
    """Why a compared column drifted by the thresholds `limits` (psi, missing, out_of_range); [] when it did not."""
    found = []
    if c["psi"] > limits["psi"]:
        found.append(f"psi {c['psi']:.3f} > {limits['psi']:g}")
    if abs(c["missing"]["data"] - c["missing"]["reference"]) > limits["missing"]:
        found.append(f"missing {c['missing']['reference']:.1%} -> {c['missing']['data']:.1%}")
    if c.get("out_of_range", 0.0) > limits["out_of_range"]:
        found.append(f"{c['out_of_range']:.1%} outside the training range")
    return found
