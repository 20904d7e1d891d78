"""What a prep folder learned about the data: columns, their kinds, the task and the fitted statistics.

It is plain JSON (schema.json) so that it can be read, diffed and checked without TensorFlow;
`features.py` turns it into Keras preprocessing layers.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts
from .errors import DataError

FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Feature:
    """One input column and the statistics fitted on the train split."""

    name: str
    key: str  # the column's name inside the model / SavedModel signature
    kind: str  # numeric | categorical | boolean | text | date
    fill: Any = None  # imputed for missing values
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    q25: float | None = None  # the quartiles, for preprocess.scaling robust
    q75: float | None = None
    edges: list[float] = field(default_factory=list)  # quantile bin edges, for preprocess.numeric_bins
    vocabulary: list[str] = field(default_factory=list)
    idf_weights: list[float] = field(default_factory=list)
    # a date: its strftime format (None: ISO 8601), and the periods in days of its cyclic encodings (the week,
    # the year; the day when the train split has times of day). The statistics above are of its days since
    # 1970-01-01 (UTC), the number the model takes.
    format: str | None = None
    periods: list[float] = field(default_factory=list)

    @property
    def is_numeric(self) -> bool:
        return self.kind == "numeric"

    @property
    def takes_number(self) -> bool:
        """The model's input for this column is a float32 number (a date's: days since 1970-01-01)."""
        return self.kind in ("numeric", "date")


@dataclass(frozen=True)
class Schema:
    target: str
    task: str  # binary | multiclass | regression
    features: list[Feature]
    classes: list[str] = field(default_factory=list)
    id_columns: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    scaling: str = "minmax"
    target_mean: float | None = None  # regression with preprocess.target_scaling standard: the train split's
    target_std: float | None = None  # target mean and std, undone by the network's last layer
    text_output: str = "tf_idf"
    text_max_tokens: int = 1000
    categorical_encoding: str = "one_hot"  # one_hot | embedding

    @property
    def is_classification(self) -> bool:
        return self.task != "regression"

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": artifacts.SCHEMA_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any], source: str = "schema") -> Schema:
        """The schema in `doc`, its fields' types checked (pydantic validates the dataclasses): a file damaged
        by hand is one line naming the field, not a crash where the field is first used."""
        from pydantic import TypeAdapter, ValidationError

        if not isinstance(doc, dict):
            raise DataError(f"{source}: not a schema (a JSON object expected, got {type(doc).__name__})")
        doc = {k: v for k, v in doc.items() if k != "schema_version"}
        try:
            schema = TypeAdapter(cls).validate_python(doc)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top)"
            raise DataError(f"{source}: damaged ({where}: {first['msg']}); run `bigmodel preprocess` again") from None
        if not schema.features or schema.task not in ("binary", "multiclass", "regression"):
            raise DataError(f"{source}: damaged (no features, or an unknown task '{schema.task}'); run "
                            f"`bigmodel preprocess` again")
        return schema

    @classmethod
    def load(cls, folder: Path) -> Schema:
        path = Path(folder) / artifacts.SCHEMA
        return cls.from_dict(artifacts.read_json(path), str(path))

    def save(self, folder: Path) -> None:
        artifacts.write_json(Path(folder) / artifacts.SCHEMA, self.to_dict())

    def check_columns(self, df: pd.DataFrame, source: str, need_target: bool) -> list[str]:
        """Raise if required columns are missing; return the extra columns that will be ignored."""
        need = [f.name for f in self.features] + ([self.target] if need_target else [])
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise DataError(f"{source}: missing column(s) the model needs: {', '.join(missing)}")
        known = set(need) | set(self.id_columns) | set(self.dropped) | {self.target}
        return [c for c in df.columns if c not in known]

    def labels(self, df: pd.DataFrame, source: str, first_row: int = 0) -> np.ndarray:
        """The target column as class indices (classification) or float32 values (regression); errors name the
        row counted from `first_row` (a chunk's first row in its file)."""
        y = df[self.target]
        if y.isna().any():
            row = int(np.flatnonzero(y.isna().to_numpy())[0])
            raise DataError(f"{source}: column '{self.target}' (target) is missing a value at data row "
                            f"{first_row + row + 1}")
        if not self.is_classification:
            return numeric_column(y, self.target, source, first_row, target=True).astype("float32")
        index = {c: i for i, c in enumerate(self.classes)}
        text = as_str(y)
        unseen = sorted(set(text) - set(index))
        if unseen:
            raise DataError(f"{source}: column '{self.target}' has label(s) not seen in training: "
                            f"{', '.join(unseen[:5])}")
        return text.map(index).to_numpy(dtype="int32")


def model_key(name: str, taken: set[str]) -> str:
    """A name usable as a Keras input and a SavedModel signature argument."""
    key = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "col"
    if not key[0].isalpha():
        key = f"c_{key}"
    base, i = key, 1
    while key in taken:
        i += 1
        key = f"{base}_{i}"
    taken.add(key)
    return key


def as_str(s: pd.Series, objects: bool = True) -> pd.Series:
    """Values as strings, missing as ''; whole floats print as ints (3.0 -> '3') so CSV and Parquet agree
    (only where every one is an exact integer: 1e308 is whole but no int64). `objects=False`: the same strings
    kept in pandas' Arrow-backed string dtype, without a Python object per row."""
    if pd.api.types.is_float_dtype(s):
        v = s.dropna()
        if (v.mod(1).eq(0) & v.abs().lt(2.0**53)).all():
            s = s.astype("Int64")
    text = s.astype("string").fillna("").str.strip()
    return text.astype(object) if objects else text


_PLAIN_NUMBER = (int, float, type(None))


def numeric_column(s: pd.Series, name: str, source: str, first_row: int = 0, target: bool = False) -> np.ndarray:
    """A column as float64, ±inf and huge values as missing; a non-numeric string is an error naming its row
    (counted from `first_row`, for a chunk of a larger file). For a regression `target`, ±inf or a value beyond
    float32 is an error too: it cannot be imputed, and the network would learn NaN from it."""
    if pd.api.types.is_bool_dtype(s):
        return s.astype("float64").to_numpy()
    if s.dtype == object and all(type(v) in _PLAIN_NUMBER for v in s):
        s = pd.Series(np.array(s.to_numpy(), dtype="float64"))  # numbers and None (JSON rows): no parsing needed
    elif not pd.api.types.is_numeric_dtype(s):
        parsed = pd.to_numeric(s, errors="coerce")
        bad = parsed.isna() & s.notna() & (s.astype("string").str.strip() != "")
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{source}: column '{name}' is numeric but data row {first_row + row + 1} holds "
                            f"{s.iloc[row]!r}")
        s = parsed
    values = np.array(s.to_numpy(dtype="float64", na_value=np.nan), copy=True)
    # ±inf, and values too large for the model's float32, count as missing (imputed, and reported)
    out_of_range = np.isinf(values) | (np.abs(values) >= FLOAT32_MAX)  # as the models' Impute: ±max is ±inf
    if target and out_of_range.any():
        row = int(np.flatnonzero(out_of_range)[0])
        raise DataError(f"{source}: column '{name}' (target) holds '{s.iloc[row]}' at data row {first_row + row + 1}; "
                        f"a regression target must be finite and within float32's range (±{FLOAT32_MAX:.3g})")
    values[out_of_range] = np.nan
    return values


ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?(?:Z|[+-]\d{2}:?\d{2})?")
_EPOCH = np.datetime64("1970-01-01T00:00:00", "s")


def date_column(s: pd.Series, name: str, source: str, fmt: str | None = None, first_row: int = 0) -> np.ndarray:
    """A date (and time) column as float64 days since 1970-01-01 UTC (a time of day as the fraction; values
    with a UTC offset converted to UTC, those without taken as UTC), missing as NaN. A value that is not a date
    in `fmt` (None: ISO 8601, e.g. 2024-03-01 or 2024-03-01T12:30:00+02:00) is an error naming its row."""
    if pd.api.types.is_datetime64_any_dtype(s):
        t = pd.Series(s)
        if getattr(t.dt, "tz", None) is not None:
            t = t.dt.tz_convert("UTC").dt.tz_localize(None)
    else:
        text = s.astype("string").str.strip()
        text = text.mask(text == "")
        try:
            t = pd.to_datetime(text, format=fmt or "ISO8601", errors="coerce", utc=True)
        except (ValueError, re.error) as e:  # a format pandas cannot use ('%Q', '%Y %Y'): the config's error
            raise DataError(f"{source}: data.date_formats: '{fmt}' for column '{name}' is not a strftime format "
                            f"pandas can read ({str(e).splitlines()[0]}); e.g. %d/%m/%Y") from None
        bad = t.isna().to_numpy() & text.notna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{source}: column '{name}' holds dates ({fmt or 'ISO 8601, e.g. 2024-03-01'}) but "
                            f"data row {first_row + row + 1} holds {s.iloc[row]!r}; set its format in "
                            f"data.date_formats")
        t = t.dt.tz_localize(None)
    # in seconds: nanoseconds overflow before 1677 and after 2262 (pandas keeps such dates in seconds or
    # microseconds), and a float32 day holds no finer than minutes anyway
    seconds = t.to_numpy(dtype="datetime64[s]", na_value=np.datetime64("NaT"))
    days = (seconds - _EPOCH).astype("float64") / 86_400.0
    days[np.isnat(seconds)] = np.nan
    return days


def to_inputs(df: pd.DataFrame, schema: Schema, source: str, first_row: int = 0) -> dict[str, np.ndarray]:
    """A DataFrame's feature columns as the arrays the models take (shape (n, 1)): numbers (a date as its days
    since 1970-01-01) as float32, the rest as stripped strings. Errors name the row counted from `first_row`."""
    out = {}
    for f in schema.features:
        if f.kind == "date":
            v = date_column(df[f.name], f.name, source, f.format, first_row).astype("float32")
        elif f.is_numeric:
            v = numeric_column(df[f.name], f.name, source, first_row).astype("float32")
        else:
            v = as_str(df[f.name]).to_numpy(dtype=str)
        out[f.key] = v.reshape(-1, 1)
    return out


def unseen_categories(df: pd.DataFrame, schema: Schema) -> dict[str, int]:
    """How many values of each categorical column fall outside the fitted vocabulary (the OOV bucket)."""
    counts = {}
    for f in schema.features:
        if f.kind in ("categorical", "boolean"):
            text = as_str(df[f.name])
            n = int((~text.isin(f.vocabulary) & (text != "")).sum())
            if n:
                counts[f.name] = n
    return counts
