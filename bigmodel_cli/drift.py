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

import pandas as pd

from . import artifacts, reference
from .errors import DataError
from .reference import values
from .schema import Schema, as_str


def compare(ref: dict[str, Any], df: pd.DataFrame, schema: Schema, source: str) -> dict[str, dict[str, Any]]:
    """Per reference column of a data file: psi, js, missing (reference and data), out_of_range (numbers)."""
    kinds = {f.name: f for f in schema.features}
    missing_columns = [name for name in ref["columns"] if name not in df.columns]
    if missing_columns:
        raise DataError(f"{source}: missing column(s) the model was trained on: {', '.join(missing_columns)}")
    return {name: reference.compare_column(r, values(df, kinds[name], source) if r["kind"] == "number"
                                           else as_str(df[name]))
            for name, r in ref["columns"].items() if name in kinds}


@dataclass(frozen=True)
class DriftOptions:
    """What `drift` is asked to do."""

    run: Path  # a run folder (its reference.json, schema and config)
    data: Path  # the data file to compare
    psi: float | None = None  # thresholds; None: the run config's drift section
    missing: float | None = None
    out_of_range: float | None = None
    out: Path | None = None  # also write the result as OUT/drift.json (for report --drift, or a pipeline)


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
        c["why"] = reference.why(c, limits)
        c["drift"] = bool(c["why"])
    doc = {"run": str(folder.path), "data": remote.name_of(options.data), "rows": len(df),
           "reference_rows": ref["rows"], "thresholds": limits, "columns": columns,
           "drifted": [name for name, c in columns.items() if c["drift"]]}
    if options.out is not None:
        artifacts.write_json(Path(options.out) / artifacts.DRIFT, doc)
    return DriftResult(doc)
