"""Bootstrap intervals on 10k rows x 1000 resamples: bigmodel's vectorised bootstrap against the plain
loop a script would write (scikit-learn metric calls on each resample), on the same data.

    python benchmarks/bench_bootstrap.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, show  # noqa: E402
from bigmodel_cli import bootstrap  # noqa: E402

ROWS, RESAMPLES, LOOP_RESAMPLES = 10_000, 1000, 100


def data(k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, k, ROWS)
    logits = rng.normal(size=(ROWS, k)) + 2 * np.eye(k)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs.argmax(axis=1), probs


def naive(y: np.ndarray, pred: np.ndarray, probs: np.ndarray, resamples: int) -> None:
    """What a script would do: index each resample, call scikit-learn for each metric."""
    rng = np.random.default_rng(42)
    for _ in range(resamples):
        i = rng.integers(0, ROWS, ROWS)
        skm.accuracy_score(y[i], pred[i])
        skm.precision_recall_fscore_support(y[i], pred[i], average="binary", zero_division=0)
        skm.roc_auc_score(y[i], probs[i, 1])
        skm.log_loss(y[i], probs[i])


def main() -> None:
    y, pred, probs = data(2)
    t0 = time.perf_counter()
    doc = bootstrap.run(y, pred, probs, RESAMPLES, seed=42)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive(y, pred, probs, LOOP_RESAMPLES)
    loop = (time.perf_counter() - t0) * RESAMPLES / LOOP_RESAMPLES  # extrapolated from 100 resamples
    ym, predm, probsm = data(3)
    t0 = time.perf_counter()
    bootstrap.run(ym, predm, probsm, RESAMPLES, seed=42)
    multiclass = time.perf_counter() - t0
    rows = [["binary, 6 metrics", ours, loop, loop / ours], ["multiclass (3), 6 metrics", multiclass, "", ""]]
    show(f"bootstrap: {ROWS} rows x {RESAMPLES} resamples (seconds)", ["case", "bigmodel", "per-resample loop",
                                                                        "speed-up"], rows)
    path = save("bootstrap", {"rows": ROWS, "resamples": RESAMPLES, "seconds_bigmodel_binary": round(ours, 3),
                              "seconds_loop_binary_extrapolated": round(loop, 3), "speedup": round(loop / ours, 2),
                              "seconds_bigmodel_multiclass": round(multiclass, 3),
                              "accuracy_interval": doc["intervals"]["accuracy"]})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
