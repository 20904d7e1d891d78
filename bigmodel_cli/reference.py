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


def count(r: dict[str, Any], data: Any) -> dict[str, Any]:
    """What comparing one column needs, as counts that add up over the chunks of a file: rows, values present,
    per bin or category (the last: the others), numbers outside the training range, up to five new categories.
    `data`: a number's float values (NaN missing), or a category's stripped strings ('' missing)."""
    if r["kind"] == "number":
        v = np.asarray(data, dtype="float64")
        ok = v[np.isfinite(v)]
        edges = np.asarray(r["edges"])
        return {"rows": len(v), "present": len(ok),
                "bins": np.bincount(np.searchsorted(edges, ok, side="left"), minlength=len(edges) + 1),
                "outside": int(((ok < r["min"]) | (ok > r["max"])).sum()), "new": {}}
    text = pd.Series(data, dtype=object)
    present = text[text != ""]
    names = [k for k in r["shares"] if k != OTHER]
    counts = present.value_counts()
    known = np.array([counts.get(k, 0) for k in names], dtype="int64")
    new = ({str(k): int(n) for k, n in counts.items() if str(k) not in r["shares"]} if OTHER not in r["shares"]
           else {})
    return {"rows": len(text), "present": len(present), "bins": np.append(known, len(present) - known.sum()),
            "outside": 0, "new": _top(new)}


NEW_KEPT = 1000  # new categories counted by name (a chunked file's top five are those of the whole, unless more)


def _top(counts: dict[str, int], n: int = NEW_KEPT) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


def add(a: dict[str, Any] | None, b: dict[str, Any]) -> dict[str, Any]:
    """Two columns' counts (of two chunks) as one."""
    if a is None:
        return b
    return {"rows": a["rows"] + b["rows"], "present": a["present"] + b["present"], "bins": a["bins"] + b["bins"],
            "outside": a["outside"] + b["outside"],
            "new": _top({k: a["new"].get(k, 0) + b["new"].get(k, 0) for k in a["new"].keys() | b["new"].keys()})}


def compared(r: dict[str, Any], c: dict[str, Any]) -> dict[str, Any]:
    """A column's counts against its reference statistics `r`: psi, js, missing (reference and data) and, for a
    number, out_of_range; for a category, up to five values the train split did not have."""
    present = max(c["present"], 1)
    actual = np.asarray(c["bins"], dtype="float64") / present
    if r["kind"] == "number":
        expected = np.asarray(r["shares"])
        extra: dict[str, Any] = {"out_of_range": c["outside"] / present if c["present"] else 0.0}
    else:
        expected = np.array([r["shares"][k] for k in r["shares"] if k != OTHER] + [r["shares"].get(OTHER, 0.0)])
        extra = {"new_values": list(_top(c["new"], 5))} if c["new"] else {}
    return {"kind": r["kind"], "psi": _psi(expected, actual), "js": _js(expected, actual),
            "missing": {"reference": r["missing"], "data": float(1 - c["present"] / max(c["rows"], 1))}, **extra}


def compare_column(r: dict[str, Any], data: Any) -> dict[str, Any]:
    """One column of a sample against its reference statistics `r` (see `compared`)."""
    return compared(r, count(r, data))


class Tally:
    """A data set's columns counted against reference statistics chunk by chunk (`add`), then compared (`result`),
    so a streamed file is compared as if read whole."""

    def __init__(self, ref: dict[str, Any], schema: Schema) -> None:
        self.ref, self.rows = ref, 0
        self.features = [f for f in schema.features if f.name in ref["columns"]]
        self.counts: dict[str, dict[str, Any] | None] = {f.name: None for f in self.features}

    def add(self, df: pd.DataFrame, source: str) -> None:
        from .errors import DataError

        missing = [f.name for f in self.features if f.name not in df.columns]
        if missing:
            raise DataError(f"{source}: missing column(s) the model was trained on: {', '.join(missing)}")
        for f in self.features:
            r = self.ref["columns"][f.name]
            data = values(df, f, source) if r["kind"] == "number" else as_str(df[f.name])
            self.counts[f.name] = add(self.counts[f.name], count(r, data))
        self.rows += len(df)

    def result(self, limits: dict[str, float]) -> dict[str, Any]:
        """Each column compared, with its verdict by the thresholds `limits` (psi, missing, out_of_range)."""
        columns = {}
        for name, c in self.counts.items():
            if c is None:
                continue
            columns[name] = compared(self.ref["columns"][name], c)
            columns[name]["why"] = why(columns[name], limits)
            columns[name]["drift"] = bool(columns[name]["why"])
        return {"rows": self.rows, "reference_rows": self.ref["rows"], "thresholds": limits, "columns": columns,
                "drifted": [name for name, c in columns.items() if c["drift"]]}


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
