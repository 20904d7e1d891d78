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

from . import artifacts, reference
from .schema import Schema


def thresholds(t: Any, psi: float | None = None, missing: float | None = None,
               out_of_range: float | None = None) -> dict[str, float]:
    """The thresholds: the config's drift section `t`, with what the command line gave over it."""
    return {"psi": t.psi if psi is None else psi, "missing": t.missing if missing is None else missing,
            "out_of_range": t.out_of_range if out_of_range is None else out_of_range}


def tally(run: Path, schema: Schema, cfg: Any) -> reference.Tally:
    """An empty count of the run's reference columns, for `drift`, and `evaluate` / `predict --drift`, to add rows
    to as they read them (chunk by chunk where they stream)."""
    from .folders import load_run_reference

    return reference.Tally(load_run_reference(Path(run), schema, cfg.drift.bins), schema)


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

    folder = artifacts.Folder(Path(options.run), "run")
    folder.manifest()
    schema = Schema.load(folder.path)
    cfg = load_config(folder / artifacts.CONFIG)
    counts = tally(folder.path, schema, cfg)
    counts.add(read_table(Path(options.data), cfg.data), str(options.data))
    doc = {"run": str(folder.path), "data": remote.name_of(options.data),
           **counts.result(thresholds(cfg.drift, options.psi, options.missing, options.out_of_range))}
    if options.out is not None:
        artifacts.write_json(Path(options.out) / artifacts.DRIFT, doc)
    return DriftResult(doc)
