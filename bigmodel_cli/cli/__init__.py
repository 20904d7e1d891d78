"""The `bigmodel` command line: parse, call one stage's run(), render the result.

app.py holds the app, the one guard that turns exceptions into exit codes, the shared options and choices; each
command family has a module (experiment: the lifecycle in one process; data: init, preprocess; training: train,
tune; evaluation: evaluate, explain, compare, report; deployment: export, predict, serve; federated). Heavy imports
happen inside the commands, so `bigmodel --help` stays fast.
"""

from __future__ import annotations

import importlib

from .app import app

# each family registers its commands when imported; in the lifecycle's order, which --help keeps
for _family in ("experiment", "data", "training", "evaluation", "deployment", "federated"):
    importlib.import_module(f"{__name__}.{_family}")


def main() -> None:
    app()


__all__ = ["app", "main"]
