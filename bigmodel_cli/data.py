"""Reading tables (CSV, gzip'd CSV, Parquet) into pandas, with errors that name the file."""

from __future__ import annotations

import contextlib
import csv
import gzip
import lzma
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from .config import DataConfig
from .errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")
STREAM_BYTES = 512 << 20  # data.streaming: auto streams files larger than this


def streams(path: Path, options: DataConfig) -> bool:
    """Whether a stage reads this file chunk by chunk (data.streaming; auto: files over 512 MiB)."""
    if options.streaming == "auto":
        try:
            return Path(path).stat().st_size > STREAM_BYTES
        except OSError:
            return False
    return bool(options.streaming)


def is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(PARQUET_SUFFIXES)


def _sample(path: Path, encoding: str) -> str:
    """The file's first 64 KiB of text."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding=encoding, errors="replace", newline="") as f:
            return f.read(64 * 1024)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def _sniff_delimiter(sample: str) -> str:
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


@contextlib.contextmanager
def _reading(path: Path, options: DataConfig) -> Iterator[None]:
    """Turn a reader's exceptions into one-line DataErrors naming the file."""
    try:
        with warnings.catch_warnings():
            # index_col=False: never take surplus fields for an index; surplus fields then warn, which we refuse
            warnings.simplefilter("error", pd.errors.ParserWarning)
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)  # mixed chunks: `_unmixed` reads them whole
            yield
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
    except (zipfile.BadZipFile, tarfile.TarError, lzma.LZMAError, zlib.error) as e:
        why = str(e).split(":")[0].strip()
        raise DataError(f"{path}: not a readable {path.suffix or 'compressed'} file ({why})") from None
    except ImportError as e:  # pandas reads .zst with zstandard only if it is installed
        if path.name.lower().endswith(".zst"):
            raise DataError(f"{path}: reading .zst files needs the zstandard package: pip install zstandard") from None
        raise DataError(f"{path}: cannot read: {str(e).splitlines()[0]}") from None


def _csv_options(path: Path, options: DataConfig) -> tuple[dict[str, Any], str]:
    """How every CSV is read, and the file's first 64 KiB of text (read once, for the delimiter and _read_csv).
    `skipinitialspace`: a space after a delimiter or at a line's start is skipped (so `1, NA` reads as missing
    and `a, "b,c"` as two fields)."""
    encoding = "utf-8-sig" if options.encoding.lower().replace("_", "-") in ("utf-8", "utf8") else options.encoding
    with _reading(path, options):
        sample = _sample(path, encoding)
    sep = options.delimiter or _sniff_delimiter(sample)
    return {"sep": sep, "encoding": encoding, "compression": "infer", "skipinitialspace": True,
            "index_col": False}, sample


def _read_csv(path: Path, kwargs: dict[str, Any], sample: str, options: DataConfig) -> pd.DataFrame:
    """`pandas.read_csv(path, **kwargs)`, first without `skipinitialspace` when the file's first 64 KiB hold no
    space it would skip: skipping costs 8-32% of the parse here, and only a field preceded by a space differs
    without it — which then either fails to parse (a quoted field) or is text starting with a space (a number
    parses the same with or without it). So that result is kept only if no column name or text value starts
    with a space; otherwise (and on any error) the file is parsed as it always was."""
    sep = kwargs["sep"]
    sample = sample.removeprefix("\ufeff")
    if sep != " " and not (sample.startswith(" ") or f"{sep} " in sample or "\n " in sample or "\r " in sample):
        try:
            with _reading(path, options):
                df = pd.read_csv(path, **{**kwargs, "skipinitialspace": False})
        except DataError:
            pass
        else:
            if not _leading_space(df):
                return _unmixed(df, path, {**kwargs, "skipinitialspace": False})
            del df  # (before the second parse)
    return _unmixed(pd.read_csv(path, **kwargs), path, kwargs)


def _unmixed(df: pd.DataFrame, path: Path, kwargs: dict[str, Any]) -> pd.DataFrame:
    """pandas parses a large CSV in chunks (low_memory) and infers each chunk's types apart: a column of numbers
    with a word only in a later chunk comes back as Python numbers from the early chunks and strings from the
    late ones (which Arrow cannot store: #29). Parsed whole, such a column is text, so those columns alone are
    read again as text: the frame is the one a whole-file parse gives, at the cost of a second parse only when
    a column is mixed."""
    mixed = [i for i, (_, s) in enumerate(df.items()) if _mixed(s)]
    if not mixed:
        return df
    text = pd.read_csv(path, **{**kwargs, "usecols": mixed, "dtype": str})
    for i, column in zip(mixed, text.columns, strict=True):
        df.isetitem(i, text[column].to_numpy(dtype=object))
    return df


def _mixed(s: pd.Series) -> bool:
    """A column pandas gives as Python objects of several types, or as Python ints (integers beyond int64 and
    uint64, which Arrow cannot store: most likely ids or codes), which is then read as its text."""
    return s.dtype == object and pd.api.types.infer_dtype(s, skipna=True) in ("mixed", "mixed-integer", "integer")


def _flat(path: Path, schema: Any) -> list[str]:
    """Refuse Parquet columns of lists, structs or maps (a row is one value per column); the binary columns."""
    import pyarrow as pa

    binary = []
    for f in schema:
        if pa.types.is_nested(f.type):
            raise DataError(f"{path}: column '{f.name}' holds nested values ({f.type}); bigmodel reads one value "
                            f"per column and row: flatten it into columns, or drop it")
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type) or pa.types.is_fixed_size_binary(f.type):
            binary.append(f.name)
    return binary


def _decoded(df: pd.DataFrame, binary: list[str], path: Path, first_row: int = 0) -> pd.DataFrame:
    """Parquet binary columns as the UTF-8 text they hold (as a CSV would give them); bytes that are not UTF-8
    text are an error naming the column and row."""
    for name in binary:
        values = df[name].to_numpy(dtype=object, copy=True)
        for row, v in enumerate(values):
            if isinstance(v, bytes):
                try:
                    values[row] = v.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(f"{path}: column '{name}' holds bytes that are not UTF-8 text at data row "
                                    f"{first_row + row + 1}; store text, or drop the column") from None
        df[name] = values
    return df


def _leading_space(df: pd.DataFrame) -> bool:
    """Whether a column name or a text value starts with a space."""
    if any(str(c).startswith(" ") for c in df.columns):
        return True
    for _, s in df.items():
        if pd.api.types.is_string_dtype(s.dtype) and s.dtype != object:  # pandas' str dtype
            if s.str.startswith(" ", na=False).any():
                return True
        elif s.dtype == object and pd.api.types.infer_dtype(s, skipna=True) in ("string", "mixed", "mixed-integer"):
            text = s[[isinstance(v, str) for v in s]]  # mixed values (strings, booleans, numbers): the strings
            if len(text) and text.str.startswith(" ").any():
                return True
    return False


def check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a CSV or Parquet file")
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():  # a pipe or a device: read more than once (sniffed, parsed, hashed), it would hang
        raise DataError(f"{path}: not a regular file (a pipe or device?); save the data to a file and pass that")


def _header(path: Path, options: dict[str, Any]) -> list[str]:
    """A CSV file's header as written (pandas renames a repeated 'a' to 'a.1', which a real header may also hold,
    as R writes 'wt' and 'wt.1')."""
    first = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, **options)
    return [str(c).strip() for c in first.iloc[0]] if len(first) else []


def _check_columns(df: pd.DataFrame, path: Path, header: list[str] | None = None) -> pd.DataFrame:
    """Stripped column names; refuse a header naming a column twice (`header`: the CSV's own first line)."""
    if df.shape[1] == 0:
        raise DataError(f"{path}: no columns found")
    df.columns = [str(c).strip() for c in df.columns]
    names = header if header is not None and len(header) == df.shape[1] else list(df.columns)
    dupes = sorted({c for c in names if names.count(c) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column names: {', '.join(dupes)}")
    return df


def _as_text(path: Path, kwargs: dict[str, Any], text: tuple[str, ...]) -> dict[str, Any]:
    """read_csv options that read the columns named `text` (as stripped names) as the file's text."""
    if not text:
        return kwargs
    raw = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False, **kwargs)
    names = [str(c) for c in raw.iloc[0]] if len(raw) else []
    return {**kwargs, "dtype": {n: str for n in names if n.strip() in text}}


def read_table(path: Path, options: DataConfig | None = None, text: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV (optionally .gz; delimiter sniffed unless data.delimiter is set) or Parquet file. `text`: CSV
    columns read as written (ids: '007' stays '007', and no chunk boundary can change their type)."""
    options = options or DataConfig()
    path = Path(path)
    check_file(path)
    kwargs, sample = ({}, "") if is_parquet(path) else _csv_options(path, options)
    with _reading(path, options):
        binary: list[str] = []
        if is_parquet(path):
            import pyarrow.parquet as pq

            binary = _flat(path, pq.read_schema(path))
        df = pd.read_parquet(path) if is_parquet(path) else _read_csv(path, _as_text(path, kwargs, text), sample,
                                                                      options)
        header = None if is_parquet(path) else _header(path, kwargs)
    df = _check_columns(_decoded(df, binary, path), path, header)
    if len(df) == 0:
        raise DataError(f"{path}: no data rows (only a header)")
    return df


def read_chunks(path: Path, options: DataConfig, rows: int, text: tuple[str, ...] = ()) -> Iterator[pd.DataFrame]:
    """The same file as `read_table` reads, as DataFrames of at most `rows` rows (bounded memory)."""
    path = Path(path)
    check_file(path)
    header: list[str] | None = None
    binary: list[str] = []
    if is_parquet(path):
        import pyarrow.parquet as pq

        with _reading(path, options):
            file = pq.ParquetFile(path)
            binary = _flat(path, file.schema_arrow)
            batches = file.iter_batches(batch_size=rows)
        chunks: Iterator[pd.DataFrame] = (b.to_pandas() for b in batches)
    else:
        kwargs = _csv_options(path, options)[0]
        with _reading(path, options):
            chunks = iter(pd.read_csv(path, chunksize=rows, **_as_text(path, kwargs, text)))
            header = _header(path, kwargs)
    seen = 0
    while True:
        with _reading(path, options):
            chunk = next(chunks, None)
        if chunk is None:
            break
        chunk = _decoded(chunk, binary, path, seen)
        seen += len(chunk)
        for i, (_, column) in enumerate(chunk.items()):
            if _mixed(column):  # as _unmixed does for a whole file: the chunk's column as text
                chunk.isetitem(i, column.map(lambda v: v if v is None or isinstance(v, str) else str(v)))
        yield _check_columns(chunk, path, header)
    if seen == 0:
        raise DataError(f"{path}: no data rows (only a header)")


def parquet_options(schema: Any) -> dict[str, Any]:
    """How a split is written, by column: floating-point columns plain (their values seldom repeat, so trying a
    dictionary first cost half of a split's write, 0.24 -> 0.11 s for 200k rows x 31 columns) and uncompressed
    (Snappy saved 10% of their bytes and cost 0.18 of a 1M-row table's 0.41 s write); the other columns
    dictionary-encoded and Snappy-compressed. The values written are the same either way."""
    import pyarrow as pa

    floats = {f.name for f in schema if pa.types.is_floating(f.type)}
    return {"use_dictionary": [f.name for f in schema if f.name not in floats],
            "compression": {f.name: "none" if f.name in floats else "snappy" for f in schema}}


ROWS_PER_GROUP = 1 << 18  # rows a split is gathered and written at a time


def write_rows(table: Any, rows: Any, path: Path, stop: Any = None) -> None:
    """The rows of an Arrow table at sorted positions `rows` as a Parquet file (as parquet_options says),
    gathered and written ROWS_PER_GROUP rows at a time: the gathered copy stays one row group big (a whole
    800k-row split gathered at once cost twice the time, mostly in first-touching its fresh memory) and
    each row group is written as soon as it is gathered. `stop` (a threading.Event): give up between groups."""
    import pyarrow.parquet as pq

    if stop is not None and stop.is_set():  # before creating the file: its temp path may be gone already
        return
    with pq.ParquetWriter(path, table.schema, **parquet_options(table.schema)) as writer:
        for at in range(0, max(len(rows), 1), ROWS_PER_GROUP):
            if stop is not None and stop.is_set():
                return
            writer.write_table(table.take(rows[at:at + ROWS_PER_GROUP]))


def write_table(df: pd.DataFrame, path: Path) -> None:
    """Write CSV or Parquet by suffix (caller makes it atomic)."""
    if is_parquet(path):
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
