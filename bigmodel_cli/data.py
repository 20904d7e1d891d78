"""Reading tables (CSV, gzip'd CSV, Parquet) into pandas, with errors that name the file."""

from __future__ import annotations

import csv
import gzip
import warnings
from pathlib import Path

import pandas as pd

from .config import DataConfig
from .errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")


def is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(PARQUET_SUFFIXES)


def _sniff_delimiter(path: Path, encoding: str) -> str:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding=encoding, errors="replace", newline="") as f:
            sample = f.read(64 * 1024)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def read_table(path: Path, options: DataConfig | None = None) -> pd.DataFrame:
    """Read a CSV (optionally .gz; delimiter sniffed unless data.delimiter is set) or Parquet file."""
    options = options or DataConfig()
    encoding = "utf-8-sig" if options.encoding.lower().replace("_", "-") in ("utf-8", "utf8") else options.encoding
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a CSV or Parquet file")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        if is_parquet(path):
            df = pd.read_parquet(path)
        else:
            sep = options.delimiter or _sniff_delimiter(path, encoding)
            with warnings.catch_warnings():
                # index_col=False: never take surplus fields for an index; surplus fields then warn, which we refuse
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = pd.read_csv(path, sep=sep, encoding=encoding, compression="infer", skipinitialspace=True,
                                 index_col=False)
    except pd.errors.ParserWarning:
        raise DataError(f"{path}: some rows have more fields than the header; fix the rows or the delimiter "
                        f"(data.delimiter)") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not {options.encoding} text (byte {e.start}); re-save it as UTF-8 or set "
                        f"data.encoding (e.g. latin-1)") from None
    except LookupError:
        raise DataError(f"{path}: unknown data.encoding '{options.encoding}'") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: cannot parse as CSV: {str(e).strip()}") from None
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if df.shape[1] == 0:
        raise DataError(f"{path}: no columns found")
    df.columns = [str(c).strip() for c in df.columns]
    dupes = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    # pandas renames a repeated header 'a' to 'a.1'
    mangled = [c for c in df.columns if (p := c.rpartition("."))[1] and p[0] in df.columns and p[2].isdigit()]
    if dupes or mangled:
        raise DataError(f"{path}: duplicate column names: {', '.join(dupes or mangled)}")
    if len(df) == 0:
        raise DataError(f"{path}: no data rows (only a header)")
    return df


def write_table(df: pd.DataFrame, path: Path) -> None:
    """Write CSV or Parquet by suffix (caller makes it atomic)."""
    if is_parquet(path):
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
