"""What both preprocess paths (in memory and streaming) do to columns: infer each column's kind and the
task, draw the split, fit the statistics and vocabularies on the train split, and describe it all in the
data report. Pure functions of the data; nothing here reads or writes files, and neither path is imported.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import Config
from .errors import DataError
from .schema import FLOAT32_MAX, ISO_DATE, Feature, Schema, as_str, model_key, numeric_column

BOOLEAN_WORDS = {"true", "false", "yes", "no", "t", "f", "y", "n"}
MAX_CLASSES = 100
TEXT_MIN_WORDS = 3.0
NEAR_UNIQUE = 0.95  # a string column with at least this share of distinct values ...
TEXT_ID_WORDS = 6.0  # ... and fewer words than this on average (names: 3-5) is a name or code (an id), not text
INFER_SAMPLE = 10_000


@dataclass
class Inference:
    kinds: dict[str, str]  # column -> numeric | categorical | boolean | text | date | id | ignore
    notes: list[str] = field(default_factory=list)
    distinct: dict[str, int] = field(default_factory=dict)  # distinct values of the string columns looked at


def _looks_like_id(name: str) -> bool:
    n = name.lower()
    return n in ("id", "index", "uuid", "key") or n.endswith(("_id", " id", "-id")) or name.endswith("ID")


def infer_kinds(df: pd.DataFrame, target: str, cfg: Config, source: str = "data") -> Inference:
    """Each column's kind, from the config where it says so, else from the values."""
    inf = Inference(kinds={})
    for col in df.columns:
        if col == target:
            continue
        s = df[col]
        given = cfg.data.columns.get(col) or ("id" if col in cfg.data.id_columns else None) or \
            ("date" if col in cfg.data.date_formats else None)
        if given:
            inf.kinds[col] = given
            continue
        numbers = isinstance(s.dtype, np.dtype) and s.dtype.kind in "fiu"  # NumPy numbers: no copy without NaN
        values = s if numbers else s.dropna()  # (min, max and count skip NaN themselves)
        if (s.count() if numbers else len(values)) == 0:
            inf.kinds[col] = "ignore"
            inf.notes.append(f"'{col}' is empty: dropped")
        elif pd.api.types.is_bool_dtype(s):
            inf.kinds[col] = "boolean"
        elif pd.api.types.is_datetime64_any_dtype(s):
            inf.kinds[col] = "date"
        elif pd.api.types.is_numeric_dtype(s):
            whole = _looks_like_id(col) and (v := s.dropna()).is_unique and bool(v.mod(1).eq(0).all())
            if whole:
                inf.kinds[col] = "id"
                inf.notes.append(f"'{col}' looks like an id: kept for predictions, not used as a feature")
            else:
                inf.kinds[col] = "numeric"
        else:
            inf.kinds[col] = _kind_of_strings(col, s, values, inf, source)
        if inf.kinds.get(col) == "numeric" and values.min() == values.max():
            inf.notes.append(f"'{col}' is constant: it carries no information")
    return inf


def _kind_of_strings(col: str, s: pd.Series, values: pd.Series, inf: Inference, source: str) -> str:
    """The kind of a column of strings (`values`: its non-missing ones), from its distinct values (a sample of them
    when there are many); notes on `inf`. A column of numbers with a word in it is refused, naming the row."""
    distinct = pd.Series(values.unique()).astype(str).str.strip()
    inf.distinct[col] = len(distinct)
    sample = distinct if len(distinct) <= INFER_SAMPLE else distinct.sample(INFER_SAMPLE, random_state=0)
    if len(distinct) <= len(BOOLEAN_WORDS) and set(distinct.str.lower()) <= BOOLEAN_WORDS:
        return "boolean"
    every_row = f"'{col}' has a distinct value on every row: treated as an id, not a feature"
    if len(distinct) == len(values) > 1 and _looks_like_id(col):  # (before the numbers: an id named so, of
        inf.notes.append(every_row)  # numbers with a word past the first chunk, is an id read either way)
        return "id"
    if pd.to_numeric(sample, errors="coerce").notna().mean() >= 0.9:
        numeric_column(s, col, source)  # raises naming the first non-numeric row
    if sample.str.fullmatch(ISO_DATE).mean() >= 0.9:  # a value that is no date: the error names it
        inf.notes.append(f"'{col}' holds ISO 8601 dates: encoded as the time since 1970 and the day of the week "
                         f"and of the year")
        return "date"
    words = sample.str.split().str.len().mean()
    near_unique = len(values) > MAX_CLASSES and len(distinct) >= NEAR_UNIQUE * len(values)
    if near_unique and words < TEXT_ID_WORDS:  # names, tickets, codes: nothing a network can generalise
        inf.notes.append(f"'{col}' has a distinct short value on (almost) every row ({len(distinct)} distinct in "
                         f"{len(values)} rows): treated as an id, not a feature")
        return "id"
    if words >= TEXT_MIN_WORDS:
        return "text"
    if len(distinct) == len(values) > 1 and (_looks_like_id(col) or len(values) > MAX_CLASSES):
        inf.notes.append(every_row)
        return "id"
    return "categorical"


def infer_task(y: pd.Series, cfg: Config) -> str:
    if cfg.data.task != "auto":
        return cfg.data.task
    values = y.dropna()
    n = values.nunique()
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if numeric and (not values.mod(1).eq(0).all() or n > 20):
        return "regression"
    if n == 2:
        return "binary"
    return "multiclass"


def class_codes(y: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Each row's class as a code, and the classes the codes stand for (sorted)."""
    codes, classes = pd.factorize(y, sort=True)
    return codes, [str(c) for c in classes]


def split_positions(n: int, codes: np.ndarray | None, cfg: Config, notes: list[str]) -> dict[str, np.ndarray]:
    """Seeded train/val/test split of n rows, stratified on the label for classification (`codes`, from
    class_codes): each class's rows are shuffled and cut by the ratios (so every split keeps the class
    balance). Each split keeps the file's row order (training shuffles every epoch), which is what lets the
    streaming path write the same splits chunk by chunk. Plain NumPy on row positions: no frame copies, and
    no scikit-learn import (2 s)."""
    rng = np.random.default_rng(cfg.seed)
    ratios = cfg.data.split
    groups = [np.arange(n)] if codes is None else [np.flatnonzero(codes == c) for c in range(codes.max() + 1)]
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for rows in groups:
        rows = rng.permutation(rows)
        n_test = int(round(len(rows) * ratios.test))
        n_val = int(round(len(rows) * ratios.val))
        parts["test"].append(rows[:n_test])
        parts["val"].append(rows[n_test:n_test + n_val])
        parts["train"].append(rows[n_test + n_val:])
    if codes is not None and any(len(g) < 3 for g in groups):
        notes.append("a class has fewer than 3 rows: some splits do not contain it")
    return {name: np.sort(np.concatenate(p)) for name, p in parts.items()}


def _fit_text(values: Any, cfg: Config) -> tuple[list[str], list[float]]:
    """Vocabulary (and idf weights) of a text column (an array of strings, or a tf.data dataset of
    batches of them), from Keras' own TextVectorization.adapt."""
    from .keras_env import import_keras

    keras = import_keras()
    mode = cfg.preprocess.text_output
    layer = keras.layers.TextVectorization(max_tokens=cfg.preprocess.text_max_tokens, output_mode=mode)
    try:
        layer.adapt(values)
    except AttributeError:  # Keras' tf_idf adapt fails so on a column without one word: is that it?
        words = keras.layers.TextVectorization(max_tokens=cfg.preprocess.text_max_tokens, output_mode="int")
        words.adapt(values)
        if set(words.get_vocabulary()) - {"", "[UNK]"}:  # (the mask and OOV tokens)
            raise
        return [], []
    vocab = [str(v) for v in layer.get_vocabulary()[1:]]  # [0] is the OOV token
    idf: list[float] = []
    if mode == "tf_idf" and vocab:  # (no words: the layer has no weights at all)
        weights = keras.ops.convert_to_numpy(layer._lookup_layer.idf_weights_const)  # noqa: SLF001
        idf = [float(w) for w in weights[1:]]
    return vocab, idf


def numeric_feature(col: str, key: str, v: np.ndarray, bins: int = 0) -> Feature:
    """Median imputation and min/max/mean/std/quartiles from a train column (float64, NaN for missing); with
    `bins`, the distinct edges of that many quantile bins."""
    finite = v[~np.isnan(v)]
    if finite.size == 0:
        finite = np.zeros(1)
    low, high, mean, std = float(finite.min()), float(finite.max()), float(finite.mean()), float(finite.std())
    # one pass (it reorders `finite`, a copy, in place): the quartiles, then the bins' edges
    q = np.quantile(finite, [0.25, 0.5, 0.75, *(np.linspace(0, 1, bins + 1) if bins else [])], overwrite_input=True)
    q25, median, q75 = (float(v) for v in q[:3])
    edges = [float(e) for e in np.unique(q[3:])]
    return Feature(col, key, "numeric", fill=median, min=low, max=high, mean=mean, std=std, q25=q25, q75=q75,
                   edges=edges if len(edges) > 1 else [])


DATE_PERIODS = [7.0, 365.2425]  # the week and the (Gregorian) year, in days


def date_feature(col: str, key: str, days: np.ndarray, fmt: str | None, bins: int = 0) -> Feature:
    """A date column fitted as a number (its days since 1970: median imputation, scaling, quantile bins) with
    cyclic encodings of the week and the year, and of the day when the train split has times of day."""
    f = numeric_feature(col, key, days, bins)
    finite = days[np.isfinite(days)]
    timed = bool(finite.size and np.any(finite != np.floor(finite)))
    return dataclasses.replace(f, kind="date", format=fmt, periods=[*([1.0] if timed else []), *DATE_PERIODS])


def take(s: pd.Series, rows: np.ndarray) -> pd.Series:
    """The values of a column at positions `rows`, indexed from 0 (a NumPy gather for NumPy numbers: 5x
    pandas' take)."""
    if isinstance(s.dtype, np.dtype) and s.dtype.kind in "fiub":
        return pd.Series(s.to_numpy()[rows])
    return s.take(rows).reset_index(drop=True)


def missing_numbers(s: pd.Series, name: str) -> int:
    """How many values of a numeric column count as missing (NaN, ±inf, beyond float32), as numeric_column
    counts them; one pass for NumPy floats."""
    if isinstance(s.dtype, np.dtype) and s.dtype.kind == "f":
        return int(np.count_nonzero(~(np.abs(s.to_numpy()) < FLOAT32_MAX)))
    return int(np.isnan(numeric_column(s, name, "data")).sum())


def category_counts(s: pd.Series) -> pd.Series:
    """How often each value occurs, as `as_str` writes it ('' for missing, not counted). Counted on the raw
    values first, then their few distinct values converted and merged: the same counts as converting every
    row (as_str decides int-or-float for the distinct values as for all rows), 10x faster on 1M rows. Not for
    object columns, whose values may be equal but print apart (3 and 3.0, True and 1)."""
    if s.dtype == object:
        text = as_str(s)
        return text[text != ""].value_counts()
    raw = s.value_counts(dropna=True, sort=False)
    names = as_str(pd.Series(raw.index, dtype=s.dtype)).to_numpy()
    counts = pd.Series(raw.to_numpy(), index=names).groupby(level=0, sort=False).sum()
    return counts[counts.index != ""]


def categorical_feature(col: str, key: str, kind: str, counts: pd.Series, cfg: Config) -> Feature:
    """The vocabulary: the most frequent values (ties by value), the most frequent one imputed."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: cfg.preprocess.max_categories]
    vocab = [str(k) for k, _ in ordered]
    return Feature(col, key, kind, fill=vocab[0] if vocab else "", vocabulary=vocab)


def text_feature(col: str, key: str, values: Any, cfg: Config) -> Feature:
    vocab, idf = _fit_text(values, cfg)
    if not vocab:
        raise DataError(f"column '{col}': a text column without a single word in the train split (only "
                        f"punctuation, spaces or missing values); set data.columns.{col}: categorical or ignore")
    return Feature(col, key, "text", fill="", vocabulary=vocab, idf_weights=idf)


def fit_features(kinds: dict[str, str], cfg: Config, numeric: Callable[[str], np.ndarray],
                 counts: Callable[[str], pd.Series], text: Callable[[str], Any]) -> list[Feature]:
    """Fit imputation, scaling and vocabularies on the train split only. The split is read through the three
    getters (a numeric column as float64 (a date's days since 1970), a categorical column's value counts, a text
    column's strings), so that the in-memory and streaming paths fit the same way from what each holds."""
    features: list[Feature] = []
    taken: set[str] = set()
    for col, kind in kinds.items():
        if kind in ("id", "ignore"):
            continue
        key = model_key(col, taken)
        if kind == "numeric":
            features.append(numeric_feature(col, key, numeric(col), cfg.preprocess.numeric_bins))
        elif kind == "date":
            features.append(date_feature(col, key, numeric(col), cfg.data.date_formats.get(col),
                                         cfg.preprocess.numeric_bins))
        elif kind in ("categorical", "boolean"):
            features.append(categorical_feature(col, key, kind, counts(col), cfg))
        elif kind == "text":
            features.append(text_feature(col, key, text(col), cfg))
    if not features:
        raise DataError("no usable feature columns: every column is the target, an id, empty or ignored")
    return features


def check_target(target: str | None, columns_in: list[str], cfg: Config, data: Path) -> str:
    """The target column, and the columns the config names, exist in the file."""
    if not target:
        raise DataError(f"{data}: no target column given; pass --target COLUMN or set data.target")
    if target not in columns_in:
        raise DataError(f"{data}: target column '{target}' not found; columns are: {', '.join(columns_in)}")
    unknown = [c for c in [*cfg.data.columns, *cfg.data.id_columns, *cfg.data.date_formats] if c not in columns_in]
    if unknown:
        raise DataError(f"{data}: data.columns / data.id_columns / data.date_formats name column(s) not in the "
                        f"file: {', '.join(unknown)}")
    return target


def check_rows(rows: int, cfg: Config, data: Path) -> None:
    """Enough rows with a target for the split: one in each non-empty split, two in train."""
    ratios = [r for r in (cfg.data.split.train, cfg.data.split.val, cfg.data.split.test) if r > 0]
    need = max(2, math.ceil(1 / min(ratios) - 1e-9))
    if rows < need:
        raise DataError(f"{data}: {rows} data row(s) with a target; the train / val / test split "
                        f"({cfg.data.split.train:g} / {cfg.data.split.val:g} / {cfg.data.split.test:g}) needs at "
                        f"least {need}")


def dropped_notes(target: str, missing_target: int, duplicates: int) -> list[str]:
    """The rows preprocess dropped, as notes for stderr and the data report."""
    notes = [f"dropped {missing_target} row(s) whose target '{target}' is missing"] if missing_target else []
    return notes + ([f"dropped {duplicates} duplicate row(s) (preprocess.drop_duplicates)"] if duplicates else [])


def check_classes(y: pd.Series, task: str, target: str, data: Path) -> list[str]:
    """The sorted classes of a classification target, or an error saying why it cannot be learned."""
    classes = sorted(y.unique())
    if len(classes) < 2:
        raise DataError(f"{data}: target '{target}' has a single class ({classes[0]!r}): nothing to learn")
    if len(classes) > MAX_CLASSES:
        raise DataError(f"{data}: target '{target}' has {len(classes)} classes; "
                        f"for a numeric target set data.task: regression")
    if task == "binary" and len(classes) != 2:
        raise DataError(f"{data}: data.task is binary but target '{target}' has {len(classes)} classes")
    return classes


def target_scale(y_train: np.ndarray | None, cfg: Config) -> dict[str, float | None]:
    """The train split's target mean and std (regression, preprocess.target_scaling: standard)."""
    if y_train is None or cfg.preprocess.target_scaling == "none":
        return {"target_mean": None, "target_std": None}
    finite = y_train[np.isfinite(y_train)]
    std = float(finite.std()) if finite.size else 0.0
    return {"target_mean": float(finite.mean()) if finite.size else 0.0, "target_std": std if std > 0 else 1.0}


def make_schema(target: str, task: str, features: list[Feature], classes: list[str], inf: Inference,
                cfg: Config, y_train: np.ndarray | None = None) -> Schema:
    """The schema of a prep folder; `y_train` (regression) fits the target scaling."""
    return Schema(
        target=target, task=task, features=features, classes=classes,
        id_columns=[c for c, k in inf.kinds.items() if k == "id"],
        dropped={c: k for c, k in inf.kinds.items() if k in ("id", "ignore")},
        scaling=cfg.preprocess.scaling, text_output=cfg.preprocess.text_output,
        text_max_tokens=cfg.preprocess.text_max_tokens, categorical_encoding=cfg.preprocess.categorical_encoding,
        **target_scale(y_train if task == "regression" else None, cfg),
    )




@dataclass(frozen=True)
class Rows:
    """How many rows came in, were dropped, and went to each split."""

    rows_in: int
    duplicates: int
    missing_target: int
    splits: dict[str, int]


@dataclass(frozen=True)
class Fitted:
    """What a preprocess path hands to the prep folder: the schema and the data report."""

    schema: Schema
    report: dict[str, Any]
    rows_in: int
    extra: dict[str, Any] = field(default_factory=dict)  # more manifest keys (streaming: chunk_rows)
    hashes: dict[str, str] | None = None  # SHA-256 of the input ('data') and of each split, if already known


def report(rows: Rows, inf: Inference, schema: Schema, missing: dict[str, int], unique: dict[str, int | None],
           balance: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The data report (report.json): row counts, each column's kind / missing / distinct values / imputed
    value, the class balance per split, and the notes of the inference."""
    fitted = {f.name: f for f in schema.features}
    columns = {}
    for col, kind in inf.kinds.items():
        f = fitted.get(col)
        fill = f.fill if f is not None and missing[col] and kind != "text" else None
        if fill is not None and kind == "date":  # the median date, as a date
            fill = pd.Timestamp(float(fill), unit="D").isoformat().removesuffix("T00:00:00")
        columns[col] = {"kind": kind, "missing": missing[col], "unique": unique.get(col), "imputed_with": fill}
    return {
        "rows_in": rows.rows_in, "duplicates_dropped": rows.duplicates, "missing_target_dropped": rows.missing_target,
        "rows_out": sum(rows.splits.values()), "splits": rows.splits, "columns": columns,
        "class_balance": balance, "notes": inf.notes,
    }
