"""data.streaming: the bounded-memory path gives the same splits, preprocessing and trained model as the
in-memory one (small chunks force many of them on a small file)."""

from __future__ import annotations

import hashlib
import json

import pandas as pd

from .conftest import PENGUINS, bm, read_json

STREAM = ["--set", "data.streaming=true", "--set", "data.chunk_rows=50"]  # 344 rows: 7 chunks
TRAIN = ["--set", "train.epochs=4", "--set", "train.tensorboard=false", "--set", "train.early_stopping.enabled=false"]


def test_streaming_equals_in_memory(penguins_prep, tmp_path):
    prep = tmp_path / "prep"
    bm("preprocess", PENGUINS, "--target", "species", "--out", prep, *STREAM)
    assert read_json(prep / "manifest.json")["streaming"] == {"chunk_rows": 50}
    assert "streaming" not in read_json(penguins_prep / "manifest.json")  # a small file is read whole by default
    for split in ("train", "val", "test"):
        pd.testing.assert_frame_equal(pd.read_parquet(prep / f"{split}.parquet"),
                                      pd.read_parquet(penguins_prep / f"{split}.parquet"), check_dtype=False)
    assert read_json(prep / "schema.json") == read_json(penguins_prep / "schema.json")
    stream_report, memory_report = read_json(prep / "report.json"), read_json(penguins_prep / "report.json")
    for key in ("rows_in", "rows_out", "splits", "class_balance", "duplicates_dropped", "missing_target_dropped"):
        assert stream_report[key] == memory_report[key], key

    bm("train", prep, "--out", tmp_path / "stream", *TRAIN)
    bm("train", penguins_prep, "--out", tmp_path / "memory", *TRAIN)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "stream" / "history.csv"),
                                  pd.read_csv(tmp_path / "memory" / "history.csv"))
    metrics = [json.loads(bm("evaluate", tmp_path / r, "--json", "--no-plots").stdout)["metrics"]
               for r in ("stream", "memory")]
    assert metrics[0] == metrics[1]  # the streamed test split is read one row group at a time
    # predict and evaluate on a raw file: the streamed run's config streams them in chunks of 50 rows
    for r in ("stream", "memory"):
        bm("predict", tmp_path / r, PENGUINS, "--out", tmp_path / f"{r}.csv")
        bm("predict", tmp_path / r, PENGUINS, "--out", tmp_path / f"{r}.parquet")
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "stream.csv"), pd.read_csv(tmp_path / "memory.csv"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "stream.parquet"),
                                  pd.read_parquet(tmp_path / "memory.parquet"))
    on_file = [json.loads(bm("evaluate", tmp_path / r, "--data", PENGUINS, "--json", "--no-plots").stdout)
               for r in ("stream", "memory")]
    assert on_file[0]["metrics"] == on_file[1]["metrics"] and on_file[0]["data"]["rows"] == 344
    # explain samples the streamed split row group by row group: the same rows, the same importance
    explained = [json.loads(bm("explain", tmp_path / r, "--rows", "20", "--repeats", "2", "--json").stdout)
                 for r in ("stream", "memory")]
    assert explained[0]["importance"] == explained[1]["importance"] and explained[0]["rows"] == 20
    # tune on the streamed prep folder: its trials train from the on-disk matrix like `train` does
    tuned = json.loads(bm("tune", prep, "--out", tmp_path / "tune", "--trials", "2", *TRAIN, "--json").stdout)
    assert sum(tuned["trials"].values()) == 2 and (tmp_path / "tune" / "best" / "manifest.json").exists()
    assert not [p.name for p in (tmp_path / "stream").iterdir() if p.name.startswith(".")]  # no leftovers


def test_streaming_drops_the_same_duplicates(tmp_path):
    """preprocess.drop_duplicates on a streamed file (rows hashed chunk by chunk, only when asked): the same
    rows dropped and the same splits as in memory."""
    df = pd.read_csv(PENGUINS)
    data = tmp_path / "dups.csv"
    pd.concat([df, df.iloc[::7], df.iloc[5:9]]).to_csv(data, index=False)  # 50 + 4 repeated rows
    dedupe = ["--set", "preprocess.drop_duplicates=true"]
    bm("preprocess", data, "--target", "species", "--out", tmp_path / "memory", *dedupe)
    bm("preprocess", data, "--target", "species", "--out", tmp_path / "stream", *dedupe, *STREAM)
    reports = [read_json(tmp_path / p / "report.json") for p in ("memory", "stream")]
    assert reports[0]["duplicates_dropped"] == reports[1]["duplicates_dropped"] == 54
    assert reports[0]["splits"] == reports[1]["splits"]
    for split in ("train", "val", "test"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "stream" / f"{split}.parquet"),
                                      pd.read_parquet(tmp_path / "memory" / f"{split}.parquet"), check_dtype=False)


def test_splits_written_in_many_row_groups_are_the_same(penguins_prep, tmp_path, monkeypatch):
    """The in-memory path gathers and writes each split data.ROWS_PER_GROUP rows at a time (2^18; here 16, so
    the 344 rows take many groups): the same rows in the same order, and only the group count differs."""
    import pyarrow.parquet as pq

    from bigmodel_cli import data

    monkeypatch.setattr(data, "ROWS_PER_GROUP", 16)
    prep = tmp_path / "prep"
    bm("preprocess", PENGUINS, "--target", "species", "--out", prep)
    for split in ("train", "val", "test"):
        rows = len(pd.read_parquet(penguins_prep / f"{split}.parquet"))
        assert pq.ParquetFile(prep / f"{split}.parquet").num_row_groups == -(-rows // 16)
        pd.testing.assert_frame_equal(pd.read_parquet(prep / f"{split}.parquet"),
                                      pd.read_parquet(penguins_prep / f"{split}.parquet"))
    assert read_json(prep / "schema.json") == read_json(penguins_prep / "schema.json")
    assert read_json(prep / "report.json") == read_json(penguins_prep / "report.json")
    manifest = read_json(prep / "manifest.json")  # the hashes taken while writing are those of the files
    assert manifest["splits"] == {n: hashlib.sha256((prep / f"{n}.parquet").read_bytes()).hexdigest()
                                  for n in ("train", "val", "test")}
    assert manifest["data"]["sha256"] == hashlib.sha256(PENGUINS.read_bytes()).hexdigest()


def test_fast_column_helpers_match_the_general_ones():
    """columns.take and columns.missing_numbers (the in-memory path's NumPy shortcuts) give what pandas' take and
    counting numeric_column's missing values give, for every dtype a table can bring."""
    import numpy as np

    from bigmodel_cli.columns import missing_numbers, take
    from bigmodel_cli.schema import numeric_column

    rows = np.array([0, 2, 3])
    cases = [pd.Series([1.5, np.nan, np.inf, -np.inf, 1e300, 2.0]), pd.Series([1, 2, 3, 4]),
             pd.Series([True, False, True, True]), pd.Series(pd.array([1, None, 3, 4], dtype="Int64")),
             pd.Series(["1", None, "2.5", "x"], dtype="str"), pd.Series([1, None, 2.5, "3"], dtype=object)]
    for s in cases:
        pd.testing.assert_series_equal(take(s, rows), s.take(rows).reset_index(drop=True))
        if s.dtype.kind != "O" and str(s.dtype) != "str":
            assert missing_numbers(s, "c") == int(np.isnan(numeric_column(s, "c", "data")).sum()), s
    assert missing_numbers(cases[0], "c") == 4


def test_streaming_errors_name_the_row_in_the_file(tmp_path):
    df = pd.read_csv(PENGUINS)
    df["bill_length_mm"] = df["bill_length_mm"].astype(object)
    df.loc[119, "bill_length_mm"] = "oops"  # data row 120, in the third chunk
    bad = tmp_path / "bad.csv"
    df.to_csv(bad, index=False)
    r = bm("preprocess", bad, "--target", "species", "--out", tmp_path / "p", *STREAM, code=2)
    assert "column 'bill_length_mm' is numeric but data row 120 holds 'oops'" in r.stderr
    assert not (tmp_path / "p" / "train.parquet").exists()


def test_category_counts_are_those_of_the_strings_written():
    """The fast count (distinct raw values first) gives the counts of converting every row with as_str: stripped,
    missing and blank not counted, whole floats as ints only when all are; object columns, whose equal values
    may print apart (3 and 3.0, True and 1), are counted row by row."""
    import numpy as np

    from bigmodel_cli.columns import category_counts
    from bigmodel_cli.schema import as_str

    cases = [pd.Series(["a", " b", "b ", None, "", "  ", "a", np.nan], dtype="str"), pd.Series([1.0, 2.0, np.nan, 1.0]),
             pd.Series([1.5, 2.0, np.nan]), pd.Series([True, False, True]), pd.Series([1, 2, 2, 3]),
             pd.Series([1e308, 1.0, 2.0]), pd.Series(pd.array([1, None, 1], dtype="Int64")),
             pd.Series(["3", 3, 3.0], dtype=object), pd.Series([True, 1], dtype=object)]
    for s in cases:
        rows = as_str(s)
        want = rows[rows != ""].value_counts()
        assert dict(category_counts(s).items()) == dict(want.items()), s.tolist()


def test_ids_and_errors_past_the_first_chunk(tmp_path):
    """#29: predictions keep a CSV's id columns as written, so an id column of numbers with a word past the first
    chunk gives the same Parquet output streamed (chunk by chunk, one Arrow schema) as read whole (it was exit 3:
    'Table schema does not match'), and '007' stays '007'."""
    df = pd.read_csv(PENGUINS)
    df.insert(0, "id", [f"{i:03d}" for i in range(len(df))])
    df.loc[200, "id"] = "P-200"
    df.to_csv(tmp_path / "ids.csv", index=False)
    outs = {}
    for name, opts in (("stream", STREAM), ("memory", [])):
        bm("preprocess", tmp_path / "ids.csv", "--target", "species", "--out", tmp_path / f"{name}_prep", *opts)
        assert read_json(tmp_path / f"{name}_prep" / "schema.json")["id_columns"] == ["id"]
        bm("train", tmp_path / f"{name}_prep", "--out", tmp_path / name, *TRAIN)
        bm("predict", tmp_path / name, tmp_path / "ids.csv", "--out", tmp_path / f"{name}.parquet")
        outs[name] = pd.read_parquet(tmp_path / f"{name}.parquet")
    for out in outs.values():
        assert out["id"].tolist() == df["id"].tolist()  # as written: '000', ..., 'P-200'
    pd.testing.assert_series_equal(outs["stream"]["id"], outs["memory"]["id"])
    # a Parquet file's integer ids with a null past the first chunk (pandas makes that batch's ids floats): the
    # streamed output keeps the first chunk's types (it was exit 3, 'Table schema does not match')
    ints = df.assign(id=pd.array(range(len(df)), dtype="Int64"))
    ints.loc[200, "id"] = None
    ints.to_parquet(tmp_path / "ids.parquet")
    bm("predict", tmp_path / "stream", tmp_path / "ids.parquet", "--out", tmp_path / "ints.parquet")
    assert pd.read_parquet(tmp_path / "ints.parquet")["id"].astype("Int64").equals(ints["id"])
    # a bad value in a later chunk: predict and evaluate name its row in the file, as the whole-file read does
    # (streamed, they named its row in the chunk: 20 for 120)
    df["bill_length_mm"] = df["bill_length_mm"].astype(object)
    df.loc[119, "bill_length_mm"] = "oops"
    df.to_csv(tmp_path / "bad.csv", index=False)
    df.loc[119, "bill_length_mm"] = 40.0
    df.loc[169, "species"] = None
    df.to_csv(tmp_path / "no_label.csv", index=False)
    for name in ("stream", "memory"):
        r = bm("predict", tmp_path / name, tmp_path / "bad.csv", "--out", tmp_path / "bad.parquet", code=2)
        assert "column 'bill_length_mm' is numeric but data row 120 holds 'oops'" in r.stderr, r.stderr
        r = bm("evaluate", tmp_path / name, "--data", tmp_path / "bad.csv", "--no-plots", code=2)
        assert "data row 120 holds 'oops'" in r.stderr, r.stderr
        r = bm("evaluate", tmp_path / name, "--data", tmp_path / "no_label.csv", "--no-plots", code=2)
        assert "column 'species' (target) is missing a value at data row 170" in r.stderr, r.stderr
