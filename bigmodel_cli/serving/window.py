"""Drift while serving: the last rows the server predicted, per input column, compared with the train split's
reference statistics (the run's or export's reference.json) each time /metrics is scraped — the same comparison as
`bigmodel drift` (reference.py), over a sliding window instead of a file."""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from .. import artifacts, reference
from ..schema import Schema

WINDOW_ROWS = 1000  # the rows compared: the most recent predicted
MIN_ROWS = 100  # no alarm on fewer (a sample that small drifts by chance)


class Window:
    """The last WINDOW_ROWS predicted rows of every column that has reference statistics."""

    def __init__(self, ref: dict[str, Any], schema: Schema, limits: dict[str, float],
                 size: int = WINDOW_ROWS) -> None:
        self.columns = [(f.key, f.name, ref["columns"][f.name]) for f in schema.features if f.name in ref["columns"]]
        self.buffers: dict[str, deque[Any]] = {key: deque(maxlen=size) for key, _, _ in self.columns}
        self.limits = limits
        self.lock = threading.Lock()

    def add(self, x: dict[str, np.ndarray]) -> None:
        """A request's input arrays (n, 1), as the model took them."""
        with self.lock:
            for key, buffer in self.buffers.items():
                buffer.extend(x[key][:, 0].tolist())

    def compared(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """The rows in the window, and each column compared with its reference (with `alarm`: 1 when it drifted
        by the thresholds on at least MIN_ROWS rows)."""
        with self.lock:
            snapshot = {key: list(buffer) for key, buffer in self.buffers.items()}
        rows = len(next(iter(snapshot.values()))) if snapshot else 0
        if rows == 0:
            return 0, {}
        found = {}
        for key, name, r in self.columns:
            c = reference.compare_column(r, snapshot[key])
            c["alarm"] = int(rows >= MIN_ROWS and bool(reference.why(c, self.limits)))
            found[name] = c
        return rows, found


def open_window(folder: Path, schema: Schema, limits: dict[str, float]) -> Window | None:
    """The window for a served folder with a reference.json (runs and exports since `drift`), else None."""
    path = Path(folder) / artifacts.REFERENCE
    if not path.exists():
        return None
    with artifacts.damaged(path, f"train ... --out {Path(folder)}"):
        return Window(artifacts.read_json(path), schema, limits)


class Collector:
    """The drift windows of the versions serving as Prometheus gauges, computed when /metrics is scraped."""

    def __init__(self, served: Any, name: str) -> None:
        self.served, self.name = served, name  # served: () -> [http.Served]

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        size = GaugeMetricFamily("bigmodel_drift_window_rows", f"Rows in the drift window (the last {WINDOW_ROWS} "
                                 "predicted)", labels=["model", "version"])
        families = {
            "psi": GaugeMetricFamily("bigmodel_drift_psi", "Population stability index of the window against the "
                                     "train split, by column", labels=["model", "version", "column"]),
            "missing": GaugeMetricFamily("bigmodel_drift_missing_rate", "Missing rate in the window, by column",
                                         labels=["model", "version", "column"]),
            "alarm": GaugeMetricFamily("bigmodel_drift_alarm", f"1 when the column drifted by the drift thresholds "
                                       f"(on at least {MIN_ROWS} rows)", labels=["model", "version", "column"]),
        }
        windows = [s for s in self.served() if s.window is not None]
        if not windows:
            return
        for served in windows:
            rows, columns = served.window.compared()
            values = [self.name, served.version]
            size.add_metric(values, rows)
            for name, c in columns.items():
                families["psi"].add_metric([*values, name], c["psi"])
                families["missing"].add_metric([*values, name], c["missing"]["data"])
                families["alarm"].add_metric([*values, name], c["alarm"])
        yield size
        yield from families.values()
