"""Generated benchmark data (no downloads): a binary task with numeric and categorical columns and missing values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def binary_table(rows: int, numeric: int = 24, categorical: int = 6, seed: int = 0) -> pd.DataFrame:
    """`rows` x (numeric + categorical + 1) with ~2% missing values in a few columns; the label depends on both."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, numeric)).astype("float32")
    cols = {f"x{i}": x[:, i] for i in range(numeric)}
    logit = x[:, :5].sum(axis=1)
    for j in range(categorical):
        codes = rng.integers(0, 8, rows)
        cols[f"c{j}"] = np.array([f"k{c}" for c in range(8)])[codes]
        logit += (codes == j) * 1.5
    df = pd.DataFrame(cols)
    for name in ("x0", "x7", "c0"):
        df.loc[rng.random(rows) < 0.02, name] = None
    df["label"] = np.where(logit + rng.normal(size=rows) > 0, "yes", "no")
    return df


DATA = Path(__file__).parent / ".data"  # generated once, reused by every benchmark (git-ignored)


def csv(rows: int, folder: Path = DATA, **kw) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"binary_{rows}.csv"
    if not path.exists():
        binary_table(rows, **kw).to_csv(path, index=False, float_format="%.5g")
    return path
