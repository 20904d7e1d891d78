"""Bad input at every stage: exit 2 with a one-line message that names the problem, or a documented
acceptance; never a traceback, and a pre-existing output folder stays byte-identical."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .conftest import PENGUINS, bm, read_json

# under `make test` (pytest -n 2 --dist loadgroup) one worker runs this module, so its module fixtures are made once
pytestmark = pytest.mark.xdist_group("bad_input")


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def good_frame(n: int = 60) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x.round(3), "c": rng.choice(["a", "b", "c"], n), "y": np.where(x > 0, "pos", "neg")})


def csv_text(df: pd.DataFrame, **kw) -> str:
    return df.to_csv(index=False, **kw)


# name -> (writer(path) -> data path, extra CLI args, expected exit, words expected in stderr)
Case = tuple[Callable[[Path], Path], list[str], int, list[str]]


def text(content: str | bytes, name: str = "data.csv") -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        p = d / name
        p.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return p
    return write


def frame(df: pd.DataFrame, name: str = "data.csv", **kw) -> Callable[[Path], Path]:
    return text(csv_text(df, **kw), name)


def with_column(**cols) -> pd.DataFrame:
    df = good_frame()
    for k, v in cols.items():
        df[k] = v
    return df


def ragged() -> str:
    lines = csv_text(good_frame()).splitlines()
    lines[7] += ",1,2"
    return "\n".join(lines) + "\n"


def numeric_with_word() -> pd.DataFrame:
    df = good_frame().astype({"x": object})
    df.loc[6, "x"] = "abc"
    return df


def regression_target(value: float) -> pd.DataFrame:
    """A regression table whose data row 4 has `value` as its target (and row 2 no target: numbering is the file's)."""
    df = good_frame().assign(y=lambda d: d["x"] * 3.0)
    df.loc[1, "y"], df.loc[3, "y"] = np.nan, value
    return df


def folder(d: Path) -> Path:
    (d / "adir").mkdir()
    return d / "adir"


def nested_parquet(d: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.Table.from_pandas(good_frame(), preserve_index=False)
    pq.write_table(t.append_column("tags", pa.array([["a", "b"]] * len(good_frame()))), d / "data.parquet")
    return d / "data.parquet"


def wordless() -> pd.DataFrame:
    return with_column(note=["!" * (i % 9 + 1) + " ?" * (i % 4) for i in range(60)])


def zstandard_missing() -> bool:
    import importlib.util

    return importlib.util.find_spec("zstandard") is None


FAILS: dict[str, Case] = {
    "empty file": (text(""), [], 2, ["empty"]),
    "header only": (text("x,c,y\n"), [], 2, ["no data rows"]),
    "a folder": (folder, [], 2, ["is a folder"]),
    "missing path": (lambda d: d / "nope.csv", [], 2, ["nope.csv", "no such file"]),
    "target absent": (frame(good_frame().drop(columns="y")), [], 2, ["target column 'y' not found"]),
    "single class": (frame(good_frame().assign(y="pos")), [], 2, ["single class"]),
    "all targets missing": (frame(good_frame().assign(y=None)), [], 2, ["'y' has no values"]),
    "non-numeric string in numeric column": (frame(numeric_with_word()), [], 2, ["column 'x'", "data row 7", "abc"]),
    # found while fitting, when the split files are already being written: none may be left behind
    "non-numeric string in a column declared numeric": (frame(numeric_with_word()),
                                                        ["--set", "data.columns={x: numeric}"], 2,
                                                        ["column 'x' is numeric", "'abc'"]),
    # found once the split files are written: the old ones stay (in memory and streamed)
    "no usable feature": (frame(good_frame()), ["--set", "data.id_columns=[x, c]"], 2, ["no usable feature"]),
    "no usable feature, streamed": (frame(good_frame()), ["--set", "data.id_columns=[x, c]", "--set",
                                                          "data.streaming=true", "--set", "data.chunk_rows=10"], 2,
                                    ["no usable feature"]),
    "duplicate column names": (text("x,x,y\n1,2,a\n3,4,b\n"), [], 2, ["duplicate column names: x"]),
    "one data row": (text("x,c,y\n1,a,pos\n"), [], 2, ["1 data row(s) with a target", "needs at least 10"]),
    "too few rows for the split": (frame(good_frame().head(8)), [], 2, ["8 data row(s)", "needs at least 10"]),
    "not utf-8": (text(csv_text(with_column(c="café")).encode("latin-1")), [], 2, ["not utf-8", "data.encoding"]),
    "ragged rows": (text(ragged()), [], 2, ["cannot parse", "line 8"]),
    "binary garbage": (text(bytes(range(256)) * 40), [], 2, ["data.csv"]),
    "corrupt parquet": (text("not parquet", "data.parquet"), [], 2, ["data.parquet", "cannot read"]),
    "unknown encoding": (frame(good_frame()), ["--set", "data.encoding=klingon"], 2, ["unknown data.encoding"]),
    "column in config absent": (frame(good_frame()), ["--set", "data.columns={zz: numeric}"], 2, ["zz"]),
    "regression target inf": (frame(regression_target(np.inf)), [], 2, ["'y' (target)", "'inf'", "data row 4"]),
    "regression target inf, streamed": (frame(regression_target(-np.inf)), ["--set", "data.streaming=true", "--set",
                                        "data.chunk_rows=10"], 2, ["'y' (target)", "'-inf'", "data row 4"]),
    "regression target beyond float32": (frame(regression_target(1e300)), [], 2, ["'1e+300'", "float32"]),
    # third-party failures named (#29 item 3): each was exit 3
    "parquet list column": (nested_parquet, [], 2, ["data.parquet", "column 'tags'", "nested"]),
    "parquet list column, streamed": (nested_parquet, ["--set", "data.streaming=true"], 2, ["column 'tags'"]),
    "corrupt zip": (text(b"PK\x03\x04garbage" * 10, "data.csv.zip"), [], 2, ["data.csv.zip", "not a readable .zip"]),
    "corrupt tar": (text(b"garbage" * 100, "data.csv.tar"), [], 2, ["not a readable .tar"]),
    "corrupt tar, streamed": (text(b"garbage" * 100, "data.csv.tar"), ["--set", "data.streaming=true"], 2,
                              ["not a readable .tar"]),
    **({"zst without zstandard": (text(b"\x28\xb5\x2f\xfd" * 10, "data.csv.zst"), [], 2,
                                  ["data.csv.zst", "pip install zstandard"])} if zstandard_missing() else {}),
    "text column without a word": (frame(wordless()), ["--set", "data.columns={note: text}"], 2,
                                   ["column 'note'", "without a single word"]),
    "text column without a word, streamed": (frame(wordless()), ["--set", "data.columns={note: text}", "--set",
                                             "data.streaming=true", "--set", "data.chunk_rows=10"], 2,
                                             ["column 'note'", "without a single word"]),
    "config nested too deeply": (frame(good_frame()), ["--set", "model.layers=" + "[" * 3000 + "]" * 3000], 2,
                                 ["nested too deeply"]),
    "seed beyond 2**31": (frame(good_frame()), ["--set", "seed=4294967296"], 2, ["seed", "2147483647"]),
}


@pytest.mark.parametrize("case", list(FAILS), ids=list(FAILS))
def test_preprocess_rejects(case, tmp_path, penguins_prep):
    write, extra, code, words = FAILS[case]
    existing = tmp_path / "prep"
    shutil.copytree(penguins_prep, existing)
    before = snapshot(existing)
    r = bm("preprocess", write(tmp_path), "--target", "y", "--out", existing, *extra, code=code)
    message = r.stderr.strip()
    assert message.startswith("error:") and "\n" not in message, message
    assert "Traceback" not in r.stderr and r.stdout == ""
    for w in words:
        assert w.lower() in message.lower(), (w, message)
    assert snapshot(existing) == before


def quoted_newlines() -> str:
    df = good_frame()
    df["c"] = df["c"].map({"a": "line one\nline two", "b": "b", "c": "c, with comma"})
    return csv_text(df)


ACCEPTS: dict[str, tuple[Callable[[Path], Path], list[str], Callable[[dict], None]]] = {
    "missing target values dropped": (frame(good_frame().assign(y=lambda d: d["y"].where(d.index % 10 != 0))), [],
                                      lambda r: r["missing_target_dropped"] == 6),
    "inf and -inf are missing": (frame(with_column(x=[np.inf, -np.inf] + list(good_frame()["x"][2:]))), [],
                                 lambda r: r["columns"]["x"]["missing"] == 2),
    "huge values are missing": (frame(with_column(h=[1e300] + [1.0] * 59)), [],
                                lambda r: r["columns"]["h"]["missing"] == 1),
    "all-missing column dropped": (frame(with_column(empty=np.nan)), [],
                                   lambda r: r["columns"]["empty"]["kind"] == "ignore" and r["notes"]),
    "constant column kept": (frame(with_column(k=5.0)), [], lambda r: r["columns"]["k"]["kind"] == "numeric"),
    "latin-1 with data.encoding": (text(csv_text(with_column(c="café")).encode("latin-1")),
                                   ["--set", "data.encoding=latin-1"], lambda r: r["columns"]["c"]["unique"] == 1),
    "byte order mark": (text("\ufeff" + csv_text(good_frame())), [], lambda r: "x" in r["columns"]),
    "semicolons sniffed": (text(csv_text(good_frame(), sep=";")), [], lambda r: set(r["columns"]) == {"x", "c"}),
    "tabs sniffed": (text(csv_text(good_frame(), sep="\t"), "data.tsv"), [], lambda r: set(r["columns"]) == {"x", "c"}),
    "pipe by data.delimiter": (text(csv_text(good_frame(), sep="|")), ["--set", "data.delimiter=|"],
                               lambda r: set(r["columns"]) == {"x", "c"}),
    "quoted newlines": (text(quoted_newlines()), [], lambda r: r["rows_in"] == 60),
    "short rows padded with missing": (text(csv_text(good_frame()) + "0.5,a\n"), [],
                                       lambda r: r["missing_target_dropped"] == 1),
    "gzip'd csv": (text(gzip.compress(csv_text(good_frame()).encode()), "data.csv.gz"), [],
                   lambda r: r["rows_in"] == 60),
    "R-style names wt and wt.1": (frame(with_column(wt=1.0, **{"wt.1": 2.0})), [],
                                  lambda r: {"wt", "wt.1"} <= set(r["columns"])),
    # integers beyond int64 (Arrow cannot store pandas' Python ints): read as their text, every value its own
    # (as float64 the 60 would be one number)
    "integers beyond int64": (frame(with_column(big=[str(2**70 + i) for i in range(60)])), [],
                              lambda r: r["columns"]["big"]["unique"] == 60),
    "integers beyond int64, streamed": (frame(with_column(big=[str(2**70 + i) for i in range(60)])),
                                        ["--set", "data.streaming=true", "--set", "data.chunk_rows=10"],
                                        lambda r: r["columns"]["big"]["unique"] == 60),
}


@pytest.mark.parametrize("case", list(ACCEPTS), ids=list(ACCEPTS))
def test_preprocess_accepts_and_reports(case, tmp_path):
    write, extra, check = ACCEPTS[case]
    r = bm("preprocess", write(tmp_path), "--target", "y", "--out", tmp_path / "prep", "--json", *extra)
    report = json.loads(r.stdout)
    assert check(report), report
    assert "Traceback" not in r.stderr
    assert read_json(tmp_path / "prep" / "manifest.json")["kind"] == "prep"


@pytest.fixture(scope="module")
def run_copy(penguins_run, tmp_path_factory):
    """A private copy of a trained run, its snapshot checked after every drift case."""
    run = tmp_path_factory.mktemp("drift") / "run"
    shutil.copytree(penguins_run, run)
    bm("evaluate", run)  # metrics.json exists before the bad cases
    return run


def penguins(d: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    p = d / "new.csv"
    change(pd.read_csv(PENGUINS)).to_csv(p, index=False)
    return p


DRIFT = {
    "missing columns named": (lambda df: df.drop(columns=["island", "sex"]), ["missing column", "island, sex"]),
    "numeric column holds strings": (lambda df: df.assign(bill_depth_mm="deep"), ["'bill_depth_mm'", "'deep'"]),
    "label unseen in training": (lambda df: df.assign(species=df["species"].where(df.index != 3, "Emperor")),
                                 ["not seen in training", "Emperor"]),
}


DRIFT_CASES = [(stage, case) for stage in ("evaluate", "predict") for case in DRIFT
               if not (stage == "predict" and "label" in case)]  # predict does not read labels


@pytest.mark.parametrize(("stage", "case"), DRIFT_CASES, ids=[f"{s}: {c}" for s, c in DRIFT_CASES])
def test_schema_drift_rejected(case, stage, run_copy, tmp_path):
    change, words = DRIFT[case]
    data = penguins(tmp_path, change)
    before = snapshot(run_copy)
    args = ["--data", data] if stage == "evaluate" else [data, "--out", tmp_path / "p.csv"]
    r = bm(stage, run_copy, *args, code=2)
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    assert snapshot(run_copy) == before
    assert not (tmp_path / "p.csv").exists()


def test_a_pipe_is_refused_not_waited_on(tmp_path):
    """A named pipe (or /dev/stdin) cannot be read more than once: one line, exit 2, at once (it hung)."""
    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "bigmodel_cli", "preprocess", str(fifo), "--target", "y", "--out",
                        str(tmp_path / "prep")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a regular file" in r.stderr, r.stderr


def test_evaluate_on_a_missing_file_or_a_pipe(penguins_run, tmp_path):
    """evaluate --data hashes the file for metrics.json: a missing file was exit 3 (FileNotFoundError from the
    hash), a pipe hung; both are the one line every stage gives."""
    r = bm("evaluate", penguins_run, "--data", tmp_path / "nope.csv", "--no-plots", code=2)
    assert "nope.csv: no such file" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    os.mkfifo(tmp_path / "fifo.csv")
    r = bm("evaluate", penguins_run, "--data", tmp_path / "fifo.csv", "--no-plots", code=2)
    assert "not a regular file" in r.stderr, r.stderr


def test_prep_folder_of_other_features_refused(run_copy, tmp_path):
    bm("preprocess", PENGUINS, "--target", "species", "--out", tmp_path / "prep",
       "--set", "data.columns={year: ignore, island: ignore}")
    r = bm("evaluate", run_copy, "--data", tmp_path / "prep", code=2)
    assert "does not match the run's features" in r.stderr and "island, year" in r.stderr


def model_variant(run_copy: Path, tmp_path: Path, write: Callable[[Path], None]) -> Path:
    run = tmp_path / "run"
    shutil.copytree(run_copy, run)
    write(run / "model.keras")
    return run


def test_unsafe_model_refused_unless_asked(run_copy, tmp_path):
    import keras

    def lambda_model(path: Path) -> None:
        original = keras.saving.load_model(path, safe_mode=True)
        unsafe = keras.Sequential([keras.Input(original.input_shape[1:]), keras.layers.Lambda(lambda x: x * 1.0),
                                   *original.layers])
        unsafe.compile(loss="sparse_categorical_crossentropy")
        unsafe.save(path)

    run = model_variant(run_copy, tmp_path, lambda_model)
    before = snapshot(run)
    r = bm("evaluate", run, code=2)
    assert "refused to load: the model contains code (e.g. a Lambda layer) that would run on loading" in r.stderr
    assert "pass --unsafe-load only if you trust this file" in r.stderr
    assert snapshot(run) == before
    r = bm("evaluate", run, "--unsafe-load", "--json")
    assert json.loads(r.stdout)["metrics"]["accuracy"] == read_json(run_copy / "metrics.json")["metrics"]["accuracy"]


@pytest.mark.parametrize("damage", ["truncated", "not a model", "other model"])
def test_damaged_model_is_a_clear_error(run_copy, tmp_path, damage):
    import keras

    def write(path: Path) -> None:
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[:2000])
        elif damage == "not a model":
            path.write_text("hello")
        else:
            other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
            other.save(path)

    run = model_variant(run_copy, tmp_path, write)
    for stage, args in (("evaluate", []), ("predict", [PENGUINS, "--out", tmp_path / "p.csv"]),
                        ("export", ["--out", tmp_path / "export"])):
        r = bm(stage, run, *args, code=2)
        assert "model.keras" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "export" / "manifest.json").exists()


def test_target_option_is_a_column_name_not_yaml(tmp_path):
    data = tmp_path / "data.csv"
    good_frame().rename(columns={"y": "on"}).to_csv(data, index=False)  # YAML reads a bare `on` as true
    r = bm("preprocess", data, "--target", "on", "--out", tmp_path / "prep", "--json")
    assert json.loads(r.stdout)["target"] == "on"


LOSS_AND_MODEL = {  # each was exit 3, at build or at the first training step
    "a loss for one-hot labels": (["train.loss=categorical_crossentropy"], "train.loss: 'categorical_crossentropy'"),
    "a loss for another task": (["train.loss=mse"], "does not fit a multiclass target"),
    "a layer that fails to build": (["model.layers=[{type: PeriodicEmbeddings, frequencies: 0}]"], "model.layers"),
    "a layer's bad argument": (["model.layers=[{type: StringLookup, vocabulary: 5}]"],
                               "model.layers[0] (StringLookup)"),
    "a layer loading another model": (["model.layers=[{type: TFSMLayer, filepath: x}]"], "TFSMLayer"),
    "the base optimizer class": (["train.optimizer.name=Optimizer"], "unknown optimizer 'Optimizer'"),
    "a wrapper optimizer": (["train.optimizer.name=LossScaleOptimizer"], "unknown optimizer 'LossScaleOptimizer'"),
    "DP batches larger than the data": (["train.privacy={l2_norm_clip: 1.0}", "train.batch_size=100000"],
                                        "at most"),
}


@pytest.mark.parametrize("case", list(LOSS_AND_MODEL), ids=list(LOSS_AND_MODEL))
def test_config_that_keras_refuses_is_one_line(case, penguins_prep, tmp_path):
    sets, words = LOSS_AND_MODEL[case]
    r = bm("train", penguins_prep, "--out", tmp_path / "run", "--set", "train.epochs=1",
           *[a for s in sets for a in ("--set", s)], code=2)
    message = r.stderr.strip().splitlines()[-1]
    assert message.startswith("error:") and words in message and "Traceback" not in r.stderr, r.stderr
    assert "{{function_node" not in message and "[Op:" not in message
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_tune_storage_url_that_cannot_open_is_one_line(penguins_prep, tmp_path):
    for url, words in (("notadialect:///x", "Can't load plugin"),
                       ("postgresql://me:secret@127.0.0.1:1/x", "me:***@")):
        r = bm("tune", penguins_prep, "--out", tmp_path / "tune", "--trials", "1", "--storage", url, code=2)
        assert r.stderr.startswith("error: --storage") and words in r.stderr, r.stderr
        assert "secret" not in r.stderr and "Traceback" not in r.stderr


def test_damaged_folder_files_are_one_line(penguins_prep, run_copy, tmp_path):
    """schema.json, metrics.json and manifest.json edited by hand: the file and what is wrong, not a crash."""
    prep, run = tmp_path / "prep", tmp_path / "run"
    shutil.copytree(penguins_prep, prep)
    shutil.copytree(run_copy, run)
    for doc, words in (('{"features": 5}', "target: Field required"), ("[1, 2]", "a JSON object expected"),
                       ('{"target": "species", "task": "multiclass", "features": [{"name": 3}]}', "features.0.name")):
        (prep / "schema.json").write_text(doc)
        r = bm("train", prep, "--out", tmp_path / "r", code=2)
        assert "schema.json: " in r.stderr and words in r.stderr, r.stderr
    (run / "metrics.json").write_text('{"accuracy": "high"}')
    for stage in (["compare", run, run_copy], ["report", run, "--out", tmp_path / "r.html"]):
        r = bm(*stage, code=2)
        assert "metrics.json: damaged" in r.stderr, r.stderr
    metrics = read_json(run_copy / "metrics.json")
    (run / "metrics.json").write_text(json.dumps({**metrics, "plots": [1]}))  # the top level fine, inside not
    r = bm("report", run, "--out", tmp_path / "r.html", code=2)
    assert "metrics.json: missing or damaged (TypeError" in r.stderr, r.stderr
    (run / "metrics.json").write_text(json.dumps(metrics))
    for name, content, stage in (("history.csv", b"", "train"), ("report.json", b'{"a": 1}', "preprocess"),
                                 ("config.yaml", b"# caf\xe9\n", "train"),
                                 ("explain/importance.json", b'{"rows": 3}', "explain")):
        good = (run / name).read_bytes() if (run / name).exists() else None
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_bytes(content)
        r = bm("report", run, "--out", tmp_path / "r.html", code=2)
        assert f"{name}: missing or damaged" in r.stderr and f"`bigmodel {stage}" in r.stderr, r.stderr
        if name == "config.yaml":
            r = bm("compare", run_copy, run, code=2)
            assert "config.yaml: missing or damaged" in r.stderr, r.stderr
        (run / name).unlink() if good is None else (run / name).write_bytes(good)
    manifest = read_json(run / "manifest.json")
    (run / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "prep_dir"}))
    r = bm("evaluate", run, code=2)
    assert "manifest.json: damaged (prep_dir" in r.stderr, r.stderr


def test_parquet_bytes_are_read_as_text_or_refused(penguins_run, tmp_path):
    df = pd.read_csv(PENGUINS).head(30)
    df.assign(island=[b"Biscoe"] * 30).to_parquet(tmp_path / "ok.parquet")  # UTF-8 bytes: the text they hold
    bm("predict", penguins_run, tmp_path / "ok.parquet", "--out", tmp_path / "p.csv")
    assert len(pd.read_csv(tmp_path / "p.csv")) == 30
    df.assign(island=[b"\xff"] * 30).to_parquet(tmp_path / "bad.parquet")
    for stage in (["predict", penguins_run, tmp_path / "bad.parquet", "--out", tmp_path / "q.csv"],
                  ["evaluate", penguins_run, "--data", tmp_path / "bad.parquet"]):
        r = bm(*stage, code=2)
        assert "column 'island' holds bytes that are not UTF-8 text at data row 1" in r.stderr, r.stderr


def test_odd_options_and_layers_are_one_line(penguins_prep, penguins_run, run_copy, tmp_path):
    r = bm("train", penguins_prep, "--out", tmp_path / "run", "--set", "train.epochs=1", "--set",
           "model.layers=[{type: LSTM, units: 4}]", code=2)  # passed the build, failed in the ensemble's head
    assert "model.layers: the layers do not fit together" in r.stderr, r.stderr
    (tmp_path / "file").write_text("x")
    for stage in (["init", PENGUINS, "--target", "species", "--out", tmp_path / "file" / "c.yaml"],
                  ["report", run_copy, "--out", tmp_path / "file" / "r.html"]):
        r = bm(*stage, code=2)
        assert "cannot write" in r.stderr, r.stderr
    for stage in (["evaluate", penguins_run, "--bootstrap", "10000000000"],
                  ["explain", penguins_run, "--steps", "100000000000"],
                  ["explain", penguins_run, "--repeats", "100000000000"]):
        r = bm(*stage, code=2)
        assert "Invalid value" in r.stderr, r.stderr


def test_a_stage_never_writes_into_a_folder_of_another_kind(penguins_prep, run_copy, tmp_path):
    before = snapshot(run_copy)
    r = bm("preprocess", PENGUINS, "--target", "species", "--out", run_copy, code=2)
    assert "this is a run folder" in r.stderr and "choose another --out" in r.stderr
    assert snapshot(run_copy) == before
    r = bm("train", penguins_prep, "--out", penguins_prep, "--set", "train.epochs=1", code=2)
    assert "this is a prep folder" in r.stderr


def test_out_to_a_device_writes_to_it_and_leaves_it_a_device(penguins_run, tmp_path):
    """`--out /dev/null`: written through, never replaced by a file (which, as root, a rename would do)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    import threading

    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    bm("predict", penguins_run, PENGUINS, "--out", fifo)
    reader.join(30)
    assert fifo.is_fifo() and got and got[0].startswith(b"prob_Adelie"), got[:1]
    bm("predict", penguins_run, PENGUINS, "--out", "/dev/null")
    assert Path("/dev/null").is_char_device()


def test_output_location_that_is_a_file(tmp_path, penguins_run):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = bm("preprocess", PENGUINS, "--target", "species", "--out", blocker / "prep", code=2)
    assert "cannot write" in r.stderr
    r = bm("predict", penguins_run, PENGUINS, "--out", blocker / "p.csv", code=2)
    assert "cannot write" in r.stderr
    assert blocker.read_text() == "x"


@pytest.fixture
def tiny_fs(tmp_path):
    """A 200 KiB tmpfs (root only): a full or read-only output location."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a tmpfs (CI runs as root, so these run there)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_keeps_previous_output(tiny_fs, penguins_run, tmp_path):
    big = tmp_path / "big.csv"
    pd.concat([pd.read_csv(PENGUINS)] * 20).drop(columns="species").to_csv(big, index=False)
    out = tiny_fs / "p.csv"
    out.write_text("previous")
    r = bm("predict", penguins_run, big, "--out", out, code=2)
    assert "No space left on device" in r.stderr and "Traceback" not in r.stderr
    assert out.read_text() == "previous"
    assert [p.name for p in tiny_fs.iterdir()] == ["p.csv"]  # no temp file left behind


def test_read_only_output_location(tiny_fs, penguins_prep):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    r = bm("train", penguins_prep, "--out", tiny_fs / "run", "--set", "train.epochs=1", code=2)
    assert "cannot write" in r.stderr and "Read-only" in r.stderr


def test_diverged_training_is_refused(penguins_prep, tmp_path):
    out = tmp_path / "run"
    r = bm("train", penguins_prep, "--out", out, "--set", "train.optimizer={name: sgd, learning_rate: 1e30}",
           "--set", "train.epochs=3", code=2)
    last = r.stderr.strip().splitlines()[-1]  # after the progress lines: no refit of a diverged run
    assert last.startswith("error: train: training diverged (the loss became NaN at epoch 1)"), r.stderr
    assert "refit" not in r.stderr and "learning_rate" in last and "Traceback" not in r.stderr and not out.exists()


def test_export_parity_counts_nan_as_a_difference_unless_both_are_nan():
    from bigmodel_cli.export import _check, _Mismatch

    want = np.array([[0.5, np.nan], [1.0, 2.0]])
    _check("same", want.copy(), want, 1e-6, {})
    for got in ([[0.5, np.nan], [1.0, np.nan]], [[0.5, 0.0], [1.0, 2.0]]):
        with pytest.raises(_Mismatch, match="by inf"):
            _check("other", np.array(got), want, 1e-6, {})


@pytest.fixture(scope="module")
def late_words(tmp_path_factory):
    """300k rows: pandas parses them in chunks (low_memory) and types each chunk apart. `age` holds numbers
    but one word in a late chunk; `code` holds numbers early and words from row 200,000 on (a text column)."""
    n = 300_000
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"age": rng.integers(18, 90, n).astype(object), "code": rng.integers(0, 9, n).astype(object),
                       "x": rng.normal(size=n).round(3), "y": rng.integers(0, 2, n)})
    df.loc[200_000:, "code"] = rng.choice(["a", "b", "c"], n - 200_000)
    good = tmp_path_factory.mktemp("late") / "good.csv"
    df.to_csv(good, index=False)
    df.loc[250_000, "age"] = "unknown"
    bad = good.with_name("bad.csv")
    df.to_csv(bad, index=False)
    return good, bad


def test_a_type_change_past_the_parsers_chunk_reads_as_the_whole_file(late_words):
    """#29: the chunks' Python numbers and strings crashed preprocess (ArrowTypeError, exit 3)."""
    from bigmodel_cli.data import read_table

    good, bad = late_words
    for path in (good, bad):
        got = read_table(path)
        pd.testing.assert_frame_equal(got, pd.read_csv(path, low_memory=False))  # the whole-file parse
    r = bm("preprocess", bad, "--target", "y", "--out", bad.parent / "bad_prep", code=2)
    assert r.stderr.strip() == f"error: {bad}: column 'age' is numeric but data row 250001 holds 'unknown'"
    r = bm("preprocess", good, "--target", "y", "--out", good.parent / "prep")
    kinds = {c: k["kind"] for c, k in read_json(good.parent / "prep" / "report.json")["columns"].items()}
    assert kinds["age"] == "numeric" and kinds["code"] == "categorical"
