"""`bigmodel drift`: is a data file still like the data the model was trained on?

`train` writes the train split's reference statistics into the run folder (`reference.json`, see reference.py).
`drift` reads a data file the way `predict` does and
compares it column by column: the population stability index (PSI, the share-weighted log ratio summed over the bins
or categories, as Evidently and credit scoring define it; 0.1 is a small shift, 0.25 a large one), the Jensen-Shannon
distance (base 2, in [0, 1], as TFDV defines it), the change in the missing rate and the share of numbers outside the
training range. A column drifts when one of them crosses the config's `drift` thresholds; exit 1 then (a CI gate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts
from .errors import DataError
from .reference import OTHER, values
from .schema import Schema, as_str

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


def compare(ref: dict[str, Any], df: pd.DataFrame, schema: Schema, source: str) -> dict[str, dict[str, Any]]:
    """Per reference column: psi, js, missing (reference and data), out_of_range (numbers), rows."""
    found: dict[str, dict[str, Any]] = {}
    kinds = {f.name: f for f in schema.features}
    missing_columns = [name for name in ref["columns"] if name not in df.columns]
    if missing_columns:
        raise DataError(f"{source}: missing column(s) the model was trained on: {', '.join(missing_columns)}")
    for name, r in ref["columns"].items():
        f = kinds.get(name)
        if f is None:
            continue
        if r["kind"] == "number":
            v = values(df, f, source)
            ok = v[np.isfinite(v)]
            edges = np.asarray(r["edges"])
            actual = (np.bincount(np.searchsorted(edges, ok, side="left"), minlength=len(edges) + 1) / len(ok)
                      if len(ok) else np.zeros(len(edges) + 1))
            expected = np.asarray(r["shares"])
            outside = float(((ok < r["min"]) | (ok > r["max"])).mean()) if len(ok) else 0.0
            missing = float(1 - len(ok) / max(len(v), 1))
            extra: dict[str, Any] = {"out_of_range": outside}
        else:
            text = as_str(df[name])
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
        found[name] = {"kind": r["kind"], "psi": _psi(expected, actual), "js": _js(expected, actual),
                       "missing": {"reference": r["missing"], "data": missing}, **extra}
    return found


@dataclass(frozen=True)
class DriftOptions:
    """What `drift` is asked to do."""

    run: Path  # a run folder (its reference.json, schema and config)
    data: Path  # the data file to compare
    psi: float | None = None  # thresholds; None: the run config's drift section
    missing: float | None = None
    out_of_range: float | None = None


@dataclass(frozen=True)
class DriftResult:
    doc: dict[str, Any]

    @property
    def drifted(self) -> list[str]:
        return self.doc["drifted"]

    def to_dict(self) -> dict[str, Any]:
        return self.doc


def run(options: DriftOptions, on_event: Any = None) -> DriftResult:
    """Compare the data file with the run's reference statistics; a verdict per column by the thresholds."""
    from . import remote
    from .config import load_config
    from .data import read_table
    from .folders import load_run_reference

    folder = artifacts.Folder(Path(options.run), "run")
    folder.manifest()
    schema = Schema.load(folder.path)
    cfg = load_config(folder / artifacts.CONFIG)
    ref = load_run_reference(folder.path, schema, cfg.drift.bins)
    t = cfg.drift
    limits = {"psi": t.psi if options.psi is None else options.psi,
              "missing": t.missing if options.missing is None else options.missing,
              "out_of_range": t.out_of_range if options.out_of_range is None else options.out_of_range}
    df = read_table(Path(options.data), cfg.data)
    columns = compare(ref, df, schema, str(options.data))
    for c in columns.values():
        why = []
        if c["psi"] > limits["psi"]:
            why.append(f"psi {c['psi']:.3f} > {limits['psi']:g}")
        change = c["missing"]["data"] - c["missing"]["reference"]
        if abs(change) > limits["missing"]:
            why.append(f"missing {c['missing']['reference']:.1%} -> {c['missing']['data']:.1%}")
        if c.get("out_of_range", 0.0) > limits["out_of_range"]:
            why.append(f"{c['out_of_range']:.1%} outside the training range")
        c["drift"], c["why"] = bool(why), why
    doc = {"run": str(folder.path), "data": remote.name_of(options.data), "rows": len(df),
           "reference_rows": ref["rows"], "thresholds": limits, "columns": columns,
           "drifted": [name for name, c in columns.items() if c["drift"]]}
    return DriftResult(doc)
