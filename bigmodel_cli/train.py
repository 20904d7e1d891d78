"""`bigmodel train`: fit the configured Sequential on a prep folder's train split and write a run folder.

The work is the training core's (`training/core.py`, shared with `tune`'s trials): this module is the verb's name
for it, so the CLI and a reader find `train` where its subcommand says.
"""

from __future__ import annotations

from .training.core import OnEpoch, TrainOptions, TrainResult, run

__all__ = ["OnEpoch", "TrainOptions", "TrainResult", "run"]
