"""Helpers shared by the benchmark scripts: timing, result files."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def best_of(fn: Callable[[], Any], repeat: int = 3) -> float:
    """The fastest of `repeat` wall-clock timings (the least disturbed by other load on a shared machine)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def save(name: str, doc: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"benchmark": name, "machine": {"python": platform.python_version(), "cpus": _cpus()}, **doc}
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def show(title: str, head: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for h in head:
        t.add_column(h)
    for r in rows:
        t.add_row(*[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r])
    Console().print(t)
