"""PNG plots with matplotlib's non-interactive backend, drawn by scikit-learn's metric displays."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts


@contextmanager
def _figure(path: Path, ncols: int = 1, width: float = 5.0) -> Iterator[Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 4), squeeze=False)
    try:
        yield axes[0]
        fig.tight_layout()
        with artifacts.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=90)
    finally:
        plt.close(fig)


def training_curves(history: pd.DataFrame, path: Path) -> None:
    """Loss and the metrics per epoch, train vs validation."""
    metrics = list(dict.fromkeys(m.removeprefix("val_") for m in history.columns if m != "epoch"))
    with _figure(path, len(metrics)) as axes:
        for ax, m in zip(axes, metrics, strict=True):
            if m in history:
                ax.plot(history["epoch"], history[m], label="train")
            if f"val_{m}" in history:
                ax.plot(history["epoch"], history[f"val_{m}"], label="validation")
            ax.set_xlabel("epoch")
            ax.set_title(m)
            ax.legend()


def evaluation(out: Path, task: str, y: np.ndarray, pred: np.ndarray, probs: np.ndarray | None,
               classes: list[str]) -> list[str]:
    """The plots for one evaluation, as PNG files in `out`; returns their file names."""
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    out.mkdir(parents=True, exist_ok=True)
    written = []

    def plot(name: str, ncols: int = 1) -> Any:
        written.append(name)
        return _figure(out / name, ncols)

    if task == "regression":
        with plot(artifacts.PLOT_PRED_VS_ACTUAL) as (ax,):
            ax.scatter(y, pred, s=8, alpha=0.6)
            lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=1)
            ax.set(xlabel="actual", ylabel="predicted", title="predicted vs actual")
        with plot(artifacts.PLOT_RESIDUALS) as (ax,):
            ax.scatter(pred, y - pred, s=8, alpha=0.6)
            ax.axhline(0, color="k", lw=1, ls="--")
            ax.set(xlabel="predicted", ylabel="actual - predicted", title="residuals")
        return written
    labels = list(range(len(classes)))
    with plot(artifacts.PLOT_CONFUSION, 2) as axes:
        for ax, norm in zip(axes, (None, "true"), strict=True):
            ConfusionMatrixDisplay.from_predictions(y, pred, labels=labels, display_labels=classes, normalize=norm,
                                                    ax=ax, colorbar=False, values_format=".2f" if norm else "d")
            ax.set_title("normalised by true class" if norm else "counts")
    assert probs is not None  # a classifier's predictions carry them
    if task == "binary":
        positive = classes[1]
        with plot(artifacts.PLOT_ROC) as (ax,):
            RocCurveDisplay.from_predictions(y, probs[:, 1], ax=ax, name=positive, plot_chance_level=True)
        with plot(artifacts.PLOT_PR) as (ax,):
            PrecisionRecallDisplay.from_predictions(y, probs[:, 1], ax=ax, name=positive, plot_chance_level=True)
        with plot(artifacts.PLOT_CALIBRATION) as (ax,):
            CalibrationDisplay.from_predictions(y, probs[:, 1], n_bins=10, ax=ax, name=positive)
    else:
        with plot(artifacts.PLOT_ROC) as (ax,):
            for i, c in enumerate(classes):
                if 0 < (y == i).sum() < len(y):
                    RocCurveDisplay.from_predictions(y == i, probs[:, i], ax=ax, name=f"{c} vs rest")
            ax.set_title("one-vs-rest ROC")
        with plot(artifacts.PLOT_CALIBRATION) as (ax,):
            for i, c in enumerate(classes):
                if 0 < (y == i).sum() < len(y):
                    CalibrationDisplay.from_predictions(y == i, probs[:, i], n_bins=10, ax=ax, name=c)
    return written
