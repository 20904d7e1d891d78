"""`bigmodel init`: a commented starter config inferred from a data file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import artifacts
from .columns import infer_kinds, infer_task
from .config import Config
from .data import read_table
from .errors import DataError


@dataclass(frozen=True)
class InitResult:
    out: Path
    task: str
    kinds: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "task": self.task, "columns": self.kinds}


def _block(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False).rstrip()


def render(cfg: Config, data: Path, task: str, kinds: dict[str, str], notes: list[str]) -> str:
    d = cfg.model_dump(mode="json")
    d["data"]["task"] = task
    d["data"]["columns"] = kinds
    lines = [
        f"# bigmodel config for {data.name}, written by `bigmodel init`.",
        "# Every key is optional: delete what you do not change. Override any key on the command line",
        "# with --set, e.g. --set train.epochs=20.",
        "",
        "# Seed for the split, weight initialisation and shuffling: same seed, same metrics.",
        _block({"seed": d["seed"]}),
        "",
        "# data: the target column, the task (auto | binary | multiclass | regression), each column's kind",
        "# (numeric | categorical | boolean | text | date | id | ignore; ids are kept in predictions, not used as",
        "# features) and the train / val / test split ratios.",
        *(f"# note: {n}" for n in notes),
        _block({"data": d["data"]}),
        "",
        "# preprocess: fitted on the train split only. scaling: standard | minmax ([0, 1]) | robust (by median",
        "# and IQR, then smoothly clipped to +-3); regression targets",
        "# are learned standardized and predicted in their units (target_scaling: none turns that off).",
        "# Categories beyond max_categories (by frequency) and unseen ones go to an out-of-vocabulary bucket.",
        _block({"preprocess": d["preprocess"]}),
        "",
        "# model: the hidden layers of a keras.Sequential, any Keras layer by class name with its arguments;",
        "# the output layer is added from the task (sigmoid / softmax / linear unless output_activation says).",
        "# bigmodel's own: {type: PeriodicEmbeddings} (numerical embeddings of the numeric columns, first).",
        _block({"model": d["model"]}),
        "",
        "# train: epochs / early_stopping.patience auto = a budget in optimiser steps (2,000; patience 100).",
        "# loss auto = binary / sparse categorical cross-entropy or mean squared error by task;",
        "# optimizer: any Keras optimizer name, with beta_2 / weight_decay where it takes them and a schedule",
        "# (constant | cosine over the epochs); early stopping restores the best weights. label_smoothing:",
        "# classification targets smoothed toward uniform (the default loss).",
        "# class_weight: none | balanced | {class: weight}.",
        _block({"train": d["train"]}),
        "",
        "# evaluate: the split `bigmodel evaluate` uses by default.",
        _block({"evaluate": d["evaluate"]}),
        "",
        "# drift: `bigmodel drift` (and serve's /metrics): a column drifted from the train split when its PSI, its",
        "# missing rate's change or its share of numbers outside the training range is above these.",
        _block({"drift": d["drift"]}),
        "",
        "# export: savedmodel (a TensorFlow SavedModel plus model.keras) | keras | onnx | tflite.",
        _block({"export": d["export"]}),
        "",
        "# federated: `bigmodel federated` only: FedAvg over clients on Flower (simulation or deployment),",
        "# optionally with SecAgg+ (secure_aggregation) and client-level DP (privacy).",
        _block({"federated": d["federated"]}),
        "",
        "# tune: `bigmodel tune` only: an Optuna study (TPE, pruning) over config paths, on the val split;",
        "# space: {path: {float: [lo, hi], log: true} | {int: [lo, hi]} | {choice: [...]}}, empty: the default.",
        _block({"tune": d["tune"]}),
        "",
        "# serve: `bigmodel serve` only: where to listen and what one server holds (its options override these).",
        _block({"serve": d["serve"]}),
        "",
        "# tracking: MLflow (`train --track` sets mlflow: true; required: a server that is down is an error);",
        "# uri null: MLFLOW_TRACKING_URI, experiment null: MLFLOW_EXPERIMENT_NAME, else bigmodel.",
        _block({"tracking": d["tracking"]}),
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class InitOptions:
    """What `init` is asked to do."""

    data: Path  # a CSV or Parquet file
    target: str  # the column to predict
    out: Path  # the config file to write
    config: Config  # resolved (config.resolve): how to read the data
    force: bool = False  # overwrite `out`


def run(options: InitOptions, on_event: Any = None) -> InitResult:
    """A commented starter config for the data: column kinds and task inferred, every section at its default."""
    data, target, cfg, force = options.data, options.target, options.config, options.force
    out = Path(options.out)
    if out.exists() and not force:
        raise DataError(f"{out}: already exists; pass --force to overwrite it")
    df = read_table(data, cfg.data)
    if target not in df.columns:
        raise DataError(f"{data}: target column '{target}' not found; columns are: {', '.join(df.columns)}")
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"target": target})})
    inf = infer_kinds(df, target, cfg, str(data))
    task = infer_task(df[target], cfg)
    artifacts.write_text(out, render(cfg, Path(data), task, inf.kinds, inf.notes))
    return InitResult(out, task, inf.kinds)
