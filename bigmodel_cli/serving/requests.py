"""TensorFlow Serving's request formats — rows ("instances") and columns ("inputs") — read into the model's input
arrays, with a 4xx (BadRequest) naming the field for anything the model cannot take."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from ..schema import Schema, to_inputs
from .models import Model


class BadRequest(Exception):
    """A request the model cannot answer: 4xx with TF Serving's {"error": message}."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse(body: bytes, schema: Schema) -> tuple[dict[str, np.ndarray], str]:
    """The input arrays of a predict request, and which format it used ("instances" or "inputs")."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested beyond reason
        raise BadRequest(f"the body is not JSON: {str(e)[:200] or type(e).__name__}") from None
    if not isinstance(doc, dict):
        raise BadRequest('the body must be a JSON object with "instances" or "inputs"')
    if doc.get("signature_name", "serving_default") != "serving_default":
        raise BadRequest(f"unknown signature_name {doc['signature_name']!r}; the model has serving_default")
    given = [k for k in ("instances", "inputs") if k in doc]
    if len(given) != 1:
        raise BadRequest('give exactly one of "instances" (rows) or "inputs" (columns)'
                         + (", not both" if given else ""))
    fmt = given[0]
    if fmt == "instances":
        rows = doc["instances"]
        if not isinstance(rows, list) or not rows:
            raise BadRequest('"instances" must be a non-empty list of {column: value} objects')
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise BadRequest(f"instances[{i}] must be an object of column: value")
        columns = {f.name: [_scalar(row.get(f.name), f"instances[{i}].{f.name}") for i, row in enumerate(rows)]
                   for f in schema.features}
        missing = [f.name for f in schema.features if any(f.name not in row for row in rows)]
    else:
        cols = doc["inputs"]
        if not isinstance(cols, dict):
            raise BadRequest('"inputs" must be an object of column: [values]')
        missing = [f.name for f in schema.features if f.name not in cols]
        columns = {}
        for f in schema.features:
            if f.name in missing:
                continue
            values = cols[f.name] if isinstance(cols[f.name], list) else [cols[f.name]]
            columns[f.name] = [_scalar(v, f"inputs.{f.name}[{i}]") for i, v in enumerate(values)]
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise BadRequest(f'"inputs" columns differ in length ({", ".join(map(str, sorted(lengths)))})')
    if missing:
        raise BadRequest(f"missing column(s) the model needs: {', '.join(missing)}")
    df = pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})
    try:
        for f in schema.features:
            if f.is_numeric:
                bad = [v for v in df[f.name] if isinstance(v, bool) or
                       (isinstance(v, str) and v.strip() and pd.isna(pd.to_numeric(v, errors="coerce")))]
                if bad:
                    raise BadRequest(f"column '{f.name}' is numeric; got {bad[0]!r}")
        return to_inputs(df, schema, fmt), fmt
    except DataError as e:
        raise BadRequest(str(e).removeprefix(f"{fmt}: ")) from None
    except (OverflowError, ValueError, UnicodeError) as e:  # a 400-digit integer, a lone surrogate
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise BadRequest(f"a value cannot be read: {first}") from None


def _scalar(v: Any, where: str) -> Any:
    if isinstance(v, list):  # TF Serving's one-element list per column
        if len(v) != 1:
            raise BadRequest(f"{where}: one value per row (a scalar or a one-element list), got {len(v)}")
        v = v[0]
    if isinstance(v, dict | list):
        raise BadRequest(f"{where}: a value must be a number, a string or null")
    return v


def compute(model: Model, body: bytes) -> tuple[str, dict[str, np.ndarray], Any]:
    """The request body parsed (BadRequest: a 4xx) and predicted: its format, the input arrays and the model's
    outputs."""
    x, fmt = parse(body, model.schema)
    return fmt, x, model.predict(x)
