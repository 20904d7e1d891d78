"""Bootstrap confidence intervals for the evaluation metrics, vectorised over resamples.

Each resample is a row of multiplicities W (B x n, from one seeded draw). Metrics that are sums or counts
are then matrix products: confusion matrices (W @ one-hot(true, predicted)), mean log loss, absolute and
squared errors. ROC-AUC is the weighted Mann-Whitney statistic over the scores sorted once, with ties
counted half. Calling scikit-learn once per resample costs ~8x more (benchmarks/bench_bootstrap.py).
Point estimates stay scikit-learn's (evaluate.py); tests check that these formulas reproduce scikit-learn's
values, with unit and with random weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CONFIDENCE = 0.95


def multiplicities(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) counts: how often each row is drawn in each resample (rows drawn with replacement)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n)) + (np.arange(resamples) * n)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.float64)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), 0.0)


def classification(w: np.ndarray, y: np.ndarray, pred: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Metric values per resample, named as in metrics.json."""
    n, k = len(y), probs.shape[1]
    cells = np.zeros((n, k * k))
    cells[np.arange(n), y * k + pred] = 1.0
    conf = (w @ cells).reshape(-1, k, k)  # (B, true, predicted)
    tp = np.diagonal(conf, axis1=1, axis2=2)
    precision = _safe_div(tp, conf.sum(axis=1))
    recall = _safe_div(tp, conf.sum(axis=2))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    row_loss = -np.log(np.clip(probs[np.arange(n), y], 1e-7, 1 - 1e-7))
    out = {"accuracy": tp.sum(axis=1) / w.sum(axis=1), "log_loss": (w @ row_loss) / w.sum(axis=1)}
    if k == 2:
        out.update(precision=precision[:, 1], recall=recall[:, 1], f1=f1[:, 1])
    else:
        out.update(macro_precision=precision.mean(axis=1), macro_recall=recall.mean(axis=1), macro_f1=f1.mean(axis=1))
    if k == 2:
        out["roc_auc"] = weighted_auc(w, y == 1, probs[:, 1])
    else:  # one-vs-rest, macro average (scikit-learn's multi_class="ovr")
        out["roc_auc_ovr"] = np.mean([weighted_auc(w, y == c, probs[:, c]) for c in range(k)], axis=0)
    return out


def weighted_auc(w: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC-AUC per resample: P(score of a positive > score of a negative) + P(tie) / 2, rows weighted by w.
    NaN where a resample holds no positive or no negative."""
    order = np.argsort(score, kind="stable")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])  # groups of equal scores
    pos = positive[order]
    wp = np.add.reduceat(w[:, order] * pos, starts, axis=1)  # (B, groups)
    wn = np.add.reduceat(w[:, order] * ~pos, starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each group
    pairs = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(pairs > 0, (wp * (below + 0.5 * wn)).sum(axis=1) / np.where(pairs > 0, pairs, 1), np.nan)


def regression(w: np.ndarray, y: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    y = y.astype(np.float64)
    e = pred.astype(np.float64) - y
    total = w.sum(axis=1)
    sse = w @ (e * e)
    sst = w @ (y * y) - (w @ y) ** 2 / total
    return {"mae": (w @ np.abs(e)) / total, "rmse": np.sqrt(sse / total), "r2": 1 - _safe_div(sse, sst)}


def intervals(per_resample: dict[str, np.ndarray], confidence: float = CONFIDENCE) -> dict[str, list[float] | None]:
    """Percentile intervals; None where the metric was undefined in every resample."""
    tail = 100 * (1 - confidence) / 2
    out: dict[str, list[float] | None] = {}
    for name, values in per_resample.items():
        finite = values[np.isfinite(values)]
        out[name] = [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))] if finite.size \
            else None
    return out


def run(y: np.ndarray, pred: np.ndarray, probs: np.ndarray | None, resamples: int, seed: int) -> dict[str, Any]:
    w = multiplicities(len(y), resamples, seed)
    values = classification(w, y, pred, probs) if probs is not None else regression(w, y, pred)
    return {"resamples": resamples, "seed": seed, "confidence": CONFIDENCE, "intervals": intervals(values)}
