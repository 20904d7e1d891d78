"""PNG plots with matplotlib's non-interactive backend."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import artifacts


def training_curves(history: pd.DataFrame, path: Path) -> None:
    """Loss and the first metric per epoch, train vs validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in history.columns if m != "epoch" and not m.startswith("val_")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    for ax, m in zip(axes[0], metrics, strict=True):
        ax.plot(history["epoch"], history[m], label="train")
        if f"val_{m}" in history:
            ax.plot(history["epoch"], history[f"val_{m}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(m)
        ax.legend()
    fig.tight_layout()
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
