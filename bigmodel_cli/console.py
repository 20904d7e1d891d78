"""stdout for results, stderr for everything else."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

out = Console()
err = Console(stderr=True)


def emit_json(doc: Any) -> None:
    """Print one JSON document on stdout (sorted keys, nothing else)."""
    out.file.write(json.dumps(doc, sort_keys=True, indent=2, default=str) + "\n")
    out.file.flush()


def table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        numeric = bool(rows) and all(isinstance(r[i], int | float) for r in rows if r[i] != "")
        t.add_column(c, justify="right" if numeric else "left")
    for r in rows:
        t.add_row(*[fmt(v) for v in r])
    return t


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)
