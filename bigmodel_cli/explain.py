"""`bigmodel explain`: which raw columns the model relies on, globally and row by row.

- Global: **permutation importance** per raw column, through the run's own preprocessing and network — each
  column's values shuffled across the sampled rows (a one-hot / embedded / tf-idf column moves as one raw column),
  the drop in the task's score (accuracy; RMSE for regression) and in log loss, mean ± std over seeded repeats. All
  shuffled copies go through the model in one batch; scores are evaluate's own scikit-learn metrics.
- Per row: **integrated gradients** on the encoded input (the network's input, or for embedded categoricals the
  embeddings' output, as Ludwig does), from the train split's mean encoding as baseline, `steps` points of the
  trapezoidal rule; each raw column's attribution is the sum over its slice. The completeness error — how far the
  attributions' sum is from f(x) − f(baseline) — is reported, so the numbers can be trusted or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts
from .errors import DataError
from .folders import LoadedRun, load_run, open_prep
from .schema import Schema

EXPLAIN, IMPORTANCE, IMPORTANCE_PLOT = artifacts.EXPLAIN, artifacts.IMPORTANCE, artifacts.IMPORTANCE_PLOT
ATTRIBUTIONS = artifacts.ATTRIBUTIONS


@dataclass(frozen=True)
class ExplainResult:
    out: Path
    doc: dict[str, Any]  # importance.json

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), **self.doc}


@dataclass(frozen=True)
class ExplainOptions:
    """What `explain` is asked to do."""

    run: Path  # the run folder
    data: Path | None = None  # rows to explain: a raw file or a prep folder; None: the run's prep folder
    split: str = "val"  # of a prep folder
    rows: int = 300  # a seeded sample of this many rows
    row_ids: tuple[str, ...] = ()  # or these rows (id values or row numbers)
    repeats: int = 5  # shuffles per column (permutation importance)
    steps: int = 64  # integrated-gradients steps
    unsafe: bool = False  # load a model with code in it
    out: Path | None = None  # the folder to write; None: RUN_DIR/explain (a pipeline gives its own)


def run(options: ExplainOptions, on_event: Any = None) -> ExplainResult:
    """Permutation importance and integrated gradients of the run's model; writes RUN_DIR/explain/ (or `out`)."""
    import time

    run_dir, data, split, rows, row_ids = options.run, options.data, options.split, options.rows, options.row_ids
    repeats, steps, unsafe = options.repeats, options.steps, options.unsafe

    t0 = time.perf_counter()
    loaded = load_run(run_dir, unsafe)
    schema, seed = loaded.schema, loaded.config.seed
    df = _rows(loaded, data, split, rows, row_ids, seed)
    if len(df) < 2:
        raise DataError(f"{run_dir}: explain needs at least 2 rows with a target; got {len(df)}")
    y = schema.labels(df, "explain rows")
    importance = permutation_importance(loaded, df, y, repeats, seed)
    attributions, completeness = integrated_gradients(loaded, df, steps)
    folder = Path(run_dir) / EXPLAIN if options.out is None else Path(options.out)
    doc: dict[str, Any] = {
           "rows": len(df), "source": str(data) if data else f"{split} split", "repeats": repeats, "seed": seed,
           "task": schema.task, "score": _score_name(schema),
           "importance": importance,
           "integrated_gradients": {"steps": steps, "baseline": "train split mean encoding",
                                    "completeness_abs_max": completeness["abs_max"],
                                    "completeness_rel_max": completeness["rel_max"],
                                    "completeness_rel_median": completeness["rel_median"]},
           "seconds": round(time.perf_counter() - t0, 3)}
    folder.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(folder / IMPORTANCE, doc)
    with artifacts.atomic_path(folder / ATTRIBUTIONS) as tmp:
        attributions.to_csv(tmp, index=False)
    _plot(importance, doc["score"], folder / IMPORTANCE_PLOT)
    return ExplainResult(folder, doc)


def _rows(loaded: LoadedRun, data: Path | None, split: str, rows: int, row_ids: Sequence[str],
          seed: int) -> pd.DataFrame:
    """The rows to explain: `row_ids` (values of the first id column, or row numbers), else a seeded sample of
    `rows` rows of the split (read by row group: a streamed split is never loaded whole)."""
    import pyarrow.parquet as pq

    from .data import read_table

    if data is not None and not Path(data).is_dir():
        df = read_table(Path(data), loaded.config.data)
        loaded.schema.check_columns(df, str(data), need_target=True)
        return _pick(df, rows, row_ids, loaded.schema, seed, str(data))
    path = open_prep(Path(data)).split_path(split) if data is not None else loaded.split_path(split)
    if pq.ParquetFile(path).metadata.num_rows == 0:
        raise DataError(f"{path}: the {split} split is empty; pass --split or --data")
    df = _pick(pd.read_parquet(path), rows, row_ids, loaded.schema, seed, str(path)) if row_ids \
        else sample(path, rows, seed)
    loaded.schema.check_columns(df, str(path), need_target=True)  # another table's prep folder: say so
    return df


def sample(path: Path, rows: int, seed: int) -> pd.DataFrame:
    """A seeded sample of `rows` rows of a split file (all of them if fewer), in file order, read row group by
    row group: a streamed split is never loaded whole."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    n = file.metadata.num_rows
    if n <= rows:
        return file.read().to_pandas()
    wanted = np.sort(np.random.default_rng(seed).choice(n, rows, replace=False))
    parts, start = [], 0
    for g in range(file.num_row_groups):
        size = file.metadata.row_group(g).num_rows
        inside = wanted[(wanted >= start) & (wanted < start + size)] - start
        if inside.size:
            parts.append(file.read_row_group(g).to_pandas().iloc[inside])
        start += size
    return pd.concat(parts, ignore_index=True)


def _pick(df: pd.DataFrame, rows: int, row_ids: Sequence[str], schema: Schema, seed: int,
          source: str) -> pd.DataFrame:
    if row_ids:
        if schema.id_columns:
            col = schema.id_columns[0]
            keep = df[col].astype(str).isin(row_ids)
            found = set(df.loc[keep, col].astype(str))
        else:
            try:
                index = [int(r) for r in row_ids]
            except ValueError:
                raise DataError(f"{source}: --row-ids are row numbers (the data has no id column)") from None
            keep = pd.Series(np.isin(np.arange(len(df)), index), index=df.index)
            found = {str(i) for i in index if 0 <= i < len(df)}
        missing = [r for r in row_ids if r not in found]
        if missing:
            raise DataError(f"{source}: --row-ids not found: {', '.join(missing[:5])}")
        return df[keep].reset_index(drop=True)
    if len(df) > rows:
        df = df.iloc[np.sort(np.random.default_rng(seed).choice(len(df), rows, replace=False))]
    return df.reset_index(drop=True)


def _score_name(schema: Schema) -> str:
    return "accuracy" if schema.is_classification else "rmse"


def _scores(schema: Schema, y: np.ndarray, out: np.ndarray, threshold: float) -> tuple[float, float]:
    """(the task's score, higher better, and log loss or RMSE, lower better), by scikit-learn's metrics."""
    from sklearn import metrics as m

    if not schema.is_classification:
        rmse = float(m.root_mean_squared_error(y, out[:, 0]))
        return -rmse, rmse
    probs = np.hstack([1 - out, out]) if schema.task == "binary" else out
    pred = (out[:, 0] >= threshold).astype(int) if schema.task == "binary" else out.argmax(axis=1)
    labels = list(range(len(schema.classes)))
    return (float(m.accuracy_score(y, pred)),
            float(m.log_loss(y, np.clip(probs, 1e-7, 1 - 1e-7), labels=labels)))


def permutation_importance(loaded: LoadedRun, df: pd.DataFrame, y: np.ndarray, repeats: int,
                           seed: int) -> list[dict[str, Any]]:
    """Per raw column: the score's drop when that column is shuffled (mean, std over `repeats`), sorted."""
    from . import features

    schema = loaded.schema
    x = features.to_inputs(df, schema, "explain rows")
    n = len(df)
    rng = np.random.default_rng(seed)
    copies = [x]
    for f in schema.features:
        for _ in range(repeats):
            perm = rng.permutation(n)
            copies.append({k: (v[perm] if k == f.key else v) for k, v in x.items()})
    out = features.apply(loaded.serving, {k: np.concatenate([c[k] for c in copies]) for k in x})
    base_score, base_loss = _scores(schema, y, out[:n], loaded.threshold)
    result = []
    for i, f in enumerate(schema.features):
        drops, losses = [], []
        for r in range(repeats):
            at = n * (1 + i * repeats + r)
            score, loss = _scores(schema, y, out[at:at + n], loaded.threshold)
            drops.append(base_score - score)
            losses.append(loss - base_loss)
        result.append({"column": f.name, "kind": f.kind, "importance": float(np.mean(drops)),
                       "std": float(np.std(drops)), "loss_increase": float(np.mean(losses)),
                       "loss_increase_std": float(np.std(losses))})
    # by the score's drop; ties (a column that never flips a prediction) by the loss's rise
    return sorted(result, key=lambda r: (-r["importance"], -r["loss_increase"]))


def _slices(schema: Schema, widths: dict[str, int], embedding_dims: list[int] | None) -> list[tuple[str, list[int]]]:
    """Each raw column's positions in the vector the attributions are computed on: the encoded vector, or (with
    embedded categoricals) the embeddings layer's output — the other encoded columns first, in order, then one
    block per embedded column, in order."""
    embedded = [f for f in schema.features if embedding_dims is not None and f.kind in ("categorical", "boolean")]
    positions, at = {}, 0
    for f in schema.features:
        if f not in embedded:
            positions[f.name] = list(range(at, at + widths[f.key]))
            at += widths[f.key]
    for f, dim in zip(embedded, embedding_dims or [], strict=True):
        positions[f.name] = list(range(at, at + dim))
        at += dim
    return [(f.name, positions[f.name]) for f in schema.features]


def integrated_gradients(loaded: LoadedRun, df: pd.DataFrame, steps: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """Attributions per row (and per class) and raw column, with the completeness check."""
    from . import features
    from .keras_env import tensorflow

    tf = tensorflow()
    schema, net = loaded.schema, loaded.network
    encoder = features.preprocessing_model(schema)
    widths = {f.key: w for f, w in zip(schema.features, features.widths(schema), strict=True)}
    x = features.apply(encoder, features.to_inputs(df, schema, "explain rows"))
    train = sample(loaded.split_path("train"), 2000, loaded.config.seed)
    base = features.apply(encoder, features.to_inputs(train, schema, "train split"))
    first = net.layers[0]
    embedded = isinstance(first, features.Embeddings)
    dims = [e.output_dim for e in first.embeddings] if embedded else None
    if embedded:  # attribute at the embeddings' output: an index has no meaningful gradient
        x = np.asarray(first(x))
        base = np.asarray(first(base))
        layers = net.layers[1:]
    else:
        layers = net.layers
    baseline = base.mean(axis=0, keepdims=True).astype("float32")

    def f(z: Any) -> Any:
        for layer in layers:
            z = layer(z)
        return z

    alphas = np.linspace(0.0, 1.0, steps + 1, dtype="float32")
    weights = np.full(steps + 1, 1.0 / steps, dtype="float32")
    weights[[0, -1]] /= 2  # the trapezoidal rule
    fx, fb = np.asarray(f(tf.constant(x))), np.asarray(f(tf.constant(baseline)))
    outputs, d = fx.shape[1], x.shape[1]
    attrs = np.zeros((len(x), outputs, d), dtype="float64")
    chunk = max(1, 32768 // (steps + 1))  # rows per gradient call: every row's path in one batch
    for i in range(0, len(x), chunk):
        delta = x[i:i + chunk] - baseline  # (c, d)
        path = tf.constant((baseline[None] + alphas[None, :, None] * delta[:, None, :]).reshape(-1, d))
        for k in range(outputs):  # rows are independent: the gradient of the sum is each row's gradient
            with tf.GradientTape() as tape:
                tape.watch(path)
                out = tf.reduce_sum(f(path)[:, k])
            grads = tape.gradient(out, path).numpy().reshape(len(delta), steps + 1, d)
            attrs[i:i + chunk, k] = delta * np.einsum("s,csd->cd", weights, grads)
    gap = fx - fb  # (n, outputs)
    err = np.abs(attrs.sum(axis=2) - gap)
    rel = err / np.maximum(np.abs(gap), 1e-6)
    completeness = {"abs_max": float(err.max()), "rel_max": float(rel.max()), "rel_median": float(np.median(rel))}
    names = _slices(schema, widths, dims)
    labels = schema.classes if schema.task == "multiclass" else \
        ([schema.classes[1]] if schema.task == "binary" else [schema.target])
    records = []
    ids = df[schema.id_columns[0]].astype(str).tolist() if schema.id_columns else [str(i) for i in range(len(df))]
    for i in range(len(x)):
        for k, label in enumerate(labels):
            rec: dict[str, Any] = {"row": ids[i], "output": label, "prediction": float(fx[i, k]),
                                   "baseline_prediction": float(fb[0, k]), "completeness_error": float(err[i, k])}
            for name, pos in names:  # a column named like one of the fixed keys keeps them intact
                rec[name if name not in rec else f"{name} (attribution)"] = float(attrs[i, k, pos].sum())
            records.append(rec)
    return pd.DataFrame.from_records(records), completeness


def _plot(importance: list[dict[str, Any]], score: str, path: Path) -> None:
    from .plots import _figure

    top = importance[:20][::-1]
    with _figure(path, width=7.0) as (ax,):
        ax.barh([r["column"] for r in top], [r["importance"] for r in top], xerr=[r["std"] for r in top],
                color="#4c72b0", capsize=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel(f"drop in {score} when the column is shuffled" if score != "rmse"
                      else "rise in RMSE when the column is shuffled")
        ax.set_title("permutation importance (mean ± std)")
