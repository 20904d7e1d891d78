"""`bigmodel evaluate`: metrics of a run on a split of its prep folder or on a raw data file."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts, drift, remote
from .data import is_parquet, read_table, streams
from .errors import DataError
from .folders import LoadedRun, Predictions, RowCount, load_run, merge, open_prep, parquet_rows, where
from .schema import Schema


@dataclass(frozen=True)
class EvaluateResult:
    doc: dict[str, Any]  # the metrics.json document
    warnings: tuple[str, ...] = ()  # e.g. a tracking server that did not take the metrics

    @property
    def metrics(self) -> dict[str, float | None]:
        return self.doc["metrics"]

    @property
    def failed_gates(self) -> list[dict[str, Any]]:
        return [g for g in self.doc["gates"] if not g["passed"]]

    @property
    def drifted(self) -> list[str]:
        return self.doc["drift"]["drifted"] if "drift" in self.doc else []

    def to_dict(self) -> dict[str, Any]:
        return self.doc


def _source(run: LoadedRun, data: Path | None, split: str) -> tuple[Iterable[pd.DataFrame], dict[str, Any]]:
    """The rows to evaluate, as one DataFrame or (data.streaming) chunk by chunk, and where they come from
    ('local': the file read, where 'source' is the URL it was copied from)."""
    from .data import check_file, read_chunks

    chunk = run.config.data.chunk_rows
    if data is not None and not Path(data).is_dir():
        check_file(Path(data))  # (before hashing it: a missing file or a pipe is a one-line error, not exit 3)
        source = {"source": remote.name_of(data), "split": None, "sha256": artifacts.sha256(Path(data)),
                  "local": str(data)}
        if streams(data, run.config.data):
            return read_chunks(data, run.config.data, chunk), source
        return [read_table(data, run.config.data)], source
    if data is not None:
        prep = open_prep(Path(data))
        _same_features(run, prep.schema, prep.path)
        path, streamed = prep.split_path(split), prep.streamed
    else:
        path, streamed = run.split_path(split), run.prep_streamed
        if run.split_rows(split) == 0:
            raise DataError(f"{run.path}: the {split} split of its prep folder is empty (data.split.{split}: 0); "
                            f"evaluate on your own rows with --data FILE")
    source = {"source": remote.name_of(path), "split": split, "sha256": artifacts.sha256(path), "local": str(path)}
    if streamed:
        import pyarrow.parquet as pq

        return (b.to_pandas() for b in pq.ParquetFile(path).iter_batches(batch_size=chunk)), source
    return [pd.read_parquet(path)], source


def _total(frames: Iterable[pd.DataFrame], source: str) -> int | None:
    """The rows `frames` will give, where that is known before reading them all."""
    if isinstance(frames, list):
        return sum(len(f) for f in frames)
    return parquet_rows(Path(source)) if is_parquet(Path(source)) else None


def _same_features(run: LoadedRun, other: Schema, where: Path) -> None:
    """Refuse a prep folder made for another feature set, naming the columns that differ."""
    mine = {f.name: f.kind for f in run.schema.features}
    theirs = {f.name: f.kind for f in other.features}
    differ = sorted(c for c in mine.keys() | theirs.keys() if mine.get(c) != theirs.get(c))
    if differ or other.target != run.schema.target:
        what = f"columns differ: {', '.join(differ)}" if differ else f"target is '{other.target}'"
        raise DataError(f"{where}: this prep folder does not match the run's features ({what})")


def classification_metrics(y: np.ndarray, p: Predictions, classes: list[str]) -> dict[str, Any]:
    from sklearn import metrics as m

    probs, pred, k = p.probabilities, p.values, len(classes)
    assert probs is not None  # a classifier's predictions carry them
    labels = list(range(k))
    doc: dict[str, Any] = {"metrics": {"accuracy": float(m.accuracy_score(y, pred))}}
    present = len(np.unique(y)) == k
    if k == 2:
        prec, rec, f1, _ = m.precision_recall_fscore_support(y, pred, average="binary", pos_label=1, zero_division=0)
        doc["metrics"].update(precision=float(prec), recall=float(rec), f1=float(f1),
                              roc_auc=float(m.roc_auc_score(y, probs[:, 1])) if present else None)
        doc["positive_class"] = classes[1]
    else:
        prec, rec, f1, _ = m.precision_recall_fscore_support(y, pred, labels=labels, average="macro", zero_division=0)
        doc["metrics"].update(macro_precision=float(prec), macro_recall=float(rec), macro_f1=float(f1),
                              roc_auc_ovr=float(m.roc_auc_score(y, probs, multi_class="ovr", labels=labels))
                              if present else None)
    doc["metrics"]["log_loss"] = float(m.log_loss(y, np.clip(probs, 1e-7, 1 - 1e-7), labels=labels))
    cp, cr, cf, cs = m.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    doc["per_class"] = {c: {"precision": float(cp[i]), "recall": float(cr[i]), "f1": float(cf[i]),
                            "support": int(cs[i])} for i, c in enumerate(classes)}
    doc["confusion_matrix"] = {"labels": classes, "matrix": m.confusion_matrix(y, pred, labels=labels).tolist()}
    return doc


def regression_metrics(y: np.ndarray, p: Predictions) -> dict[str, Any]:
    from sklearn import metrics as m

    return {"metrics": {"mae": float(m.mean_absolute_error(y, p.values)),
                        "rmse": float(m.root_mean_squared_error(y, p.values)),
                        "r2": float(m.r2_score(y, p.values))}}


@dataclass(frozen=True)
class EvaluateOptions:
    """What `evaluate` is asked to do; None: the run's config decides (its evaluate section)."""

    run: Path  # the run folder
    data: Path | None = None  # a prep folder or a raw file; None: the run's own prep folder
    split: str | None = None  # of a prep folder
    gates: tuple[str, ...] = ()  # added to evaluate.gates
    bootstrap: int | None = None
    plots: bool | None = None
    unsafe: bool = False  # load a model with code in it
    out: Path | None = None  # where metrics.json and eval/ go; None: the run folder (a pipeline gives its own)
    drift: bool = False  # also compare the rows with the train split (a "drift" section, as `bigmodel drift`)


def run(options: EvaluateOptions, on_event: Any = None) -> EvaluateResult:
    """Evaluate the run's model; write RUN_DIR/metrics.json (and plots under RUN_DIR/eval/), or OUT/... with `out`.

    Gates and bootstrap resamples add to those in the run's config (evaluate.gates, evaluate.bootstrap).
    """
    run_dir, data, split, unsafe = options.run, options.data, options.split, options.unsafe
    gates, bootstrap, plots = options.gates, options.bootstrap, options.plots
    from . import bootstrap as boot
    from . import gates as gate_checks
    from . import plots as draw

    loaded = load_run(run_dir, unsafe, portable=True)
    cfg = loaded.config.evaluate
    split = split or cfg.split
    frames, source = _source(loaded, data, split)
    local = source.pop("local")  # (the file read; source names where it came from)
    s = loaded.schema
    labels, parts, rows = [], [], 0
    count = RowCount(on_event, _total(frames, local)) if on_event else None
    counts = drift.tally(loaded.path, s, loaded.config) if options.drift else None
    for df in frames:
        s.check_columns(df, source["source"], need_target=True)
        labels.append(s.labels(df, source["source"], rows))  # (errors name the row in the file, not the chunk)
        parts.append(loaded.predict_rows(df, source["source"], rows, count))
        if counts is not None:
            counts.add(df, source["source"])
        rows += len(df)
    y, preds = np.concatenate(labels), merge(parts)
    body = classification_metrics(y, preds, s.classes) if s.is_classification else regression_metrics(y, preds)
    verdicts = gate_checks.check([*cfg.gates, *(gates or [])], body["metrics"])
    doc: dict[str, Any] = {
        "schema_version": artifacts.SCHEMA_VERSION, "task": s.task, "target": s.target,
        "data": {**source, "rows": rows}, **body,
        "unseen_categories": preds.unseen_categories, "ignored_columns": preds.ignored_columns,
        "gates": [v.to_dict() for v in verdicts], "engine": loaded.engine,
    }
    if counts is not None:
        doc["drift"] = counts.result(drift.thresholds(loaded.config.drift))
    if loaded.why_tensorflow:
        doc["why_tensorflow"] = loaded.why_tensorflow
    if s.task == "binary":
        doc["threshold"] = loaded.threshold
    if loaded.manifest.get("privacy"):
        doc["privacy"] = loaded.manifest["privacy"]
    resamples = cfg.bootstrap if bootstrap is None else bootstrap
    if resamples:
        doc["bootstrap"] = boot.run(y, preds.values, preds.probabilities, resamples, loaded.config.seed)
    dest = loaded.path if options.out is None else Path(options.out)
    if options.out is not None:
        doc["run_dir"] = where(loaded.path)
        dest.mkdir(parents=True, exist_ok=True)
    if cfg.plots if plots is None else plots:
        doc["plots"] = [f"{artifacts.EVAL}/{name}" for name in draw.evaluation(
            dest / artifacts.EVAL, s.task, y, preds.values, preds.probabilities, s.classes)]
    artifacts.write_json(dest / artifacts.METRICS, doc)
    if loaded.manifest.get("tracking"):  # the run was logged to MLflow (train --track): its metrics go there too
        from . import tracking

        return EvaluateResult(doc, tuple(tracking.log_evaluation(loaded.manifest, doc, dest,
                                                                 source["split"] or "data")))
    return EvaluateResult(doc)
