"""Fuzzing: random CSV bytes at `preprocess`, random YAML at config loading. Never a traceback, never a hang."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator

import pandas as pd
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

from bigmodel_cli.config import Config, load_config
from bigmodel_cli.errors import ConfigError

from .conftest import bm

# derandomized (the same examples in every run: CI stays reproducible), no shrinking (a failure is reported at
# once, with its input, instead of minutes of shrinking). `make fuzz` sets BIGMODEL_FUZZ_EXAMPLES (the tables
# through every stage; ten times as many CSV and YAML examples) and BIGMODEL_FUZZ_RANDOM (new examples each run).
LONG = "BIGMODEL_FUZZ_EXAMPLES" in os.environ
STAGE_EXAMPLES = int(os.environ.get("BIGMODEL_FUZZ_EXAMPLES", "30"))
FUZZ = settings(max_examples=10 * STAGE_EXAMPLES if LONG else 150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=not os.environ.get("BIGMODEL_FUZZ_RANDOM"),
                phases=[Phase.explicit, Phase.reuse, Phase.generate])


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def fail(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


cell = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "NA", "nan", "inf", "yes", "no", "a", "b", '"q,uoted"', '"multi\nline"', "x y z w",
                     "\ufeff", "é", ";", "\t"]),
    st.text(max_size=6),
)
rows = st.lists(st.lists(cell, min_size=1, max_size=5), min_size=0, max_size=25)


def csv_bytes(header: list[str], body: list[list[str]], sep: str) -> bytes:
    lines = [sep.join(header)] + [sep.join(r) for r in body]
    return ("\n".join(lines) + "\n").encode("utf-8", errors="surrogatepass")


@FUZZ
@given(data=st.one_of(
    st.binary(max_size=2000),
    st.builds(csv_bytes, st.lists(st.sampled_from(["x", "y", "c", "t", "x", ""]), min_size=1, max_size=5), rows,
              st.sampled_from([",", ";", "\t", "|"])),
))
def test_random_csv_never_crashes(tmp_path, data):
    path = tmp_path / "fuzz.csv"
    path.write_bytes(data)
    with time_limit(60):
        r = bm("preprocess", path, "--target", "y", "--out", tmp_path / "prep", code=None)
    assert r.exit_code in (0, 2), (data, r.exit_code, r.stderr)
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr
    if r.exit_code == 2:
        assert r.stderr.startswith("error:")


yaml_scalar = st.one_of(st.integers(), st.floats(), st.booleans(), st.none(), st.text(max_size=8))
yaml_keys = st.sampled_from(["seed", "data", "train", "model", "epochs", "layers", "target", "split", "x", "type"])
yaml_tree = st.recursive(yaml_scalar, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                             st.dictionaries(yaml_keys, kids, max_size=4)),
                         max_leaves=12)


def dump(tree) -> str:
    import yaml

    return yaml.safe_dump(tree)


@FUZZ
@given(text=st.one_of(
    st.text(max_size=300),
    yaml_tree.map(dump),
    st.sampled_from(["a: &x [1]\nb: *x\n", "!!python/object:os.system {}", "a: 1\na: 2\n", "? [a]\n: 1\n",
                     "train: {epochs: 1e9999}\n", "%YAML 9.9\n---\na: 1\n", "\t- x", "a: !!binary bad\n"]),
))
def test_random_yaml_gives_config_or_config_error(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    with time_limit(10):
        try:
            cfg = load_config(path)
        except ConfigError as e:
            assert str(e).startswith(str(path)) and "\n" not in str(e).strip()
        else:
            assert isinstance(cfg, Config)


# ---- across stages: hypothesis-made tables through preprocess -> train (1 epoch) -> predict -> export.
# `make test` runs 30 derandomised examples (~20 s; a quarter of them reach export), `make fuzz` many more.
STAGES = settings(FUZZ, max_examples=STAGE_EXAMPLES)

header_name = st.one_of(st.sampled_from(["x", "größe", "名前", "a b", "wt", "wt.1", "ünï", "—", "1", "col;",
                                         "e\u0301"]),
                        st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=6))
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e-300, 1e-300),
                   st.sampled_from([1e308, -1e308, 5e-324, 0.0, -0.0]), st.integers(-10**15, 10**15))
category = st.one_of(st.sampled_from(["", " ", "a", "b", "ä", "日本", "NA", "None", "null", "a,b", 'q"uote', "\u00a0"]),
                     st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=4))


@st.composite
def tables(draw):
    """A table with mixed column kinds, a target of 1-5 classes (or numbers), duplicate rows, missing cells."""
    n = draw(st.one_of(st.integers(0, 12), *[st.integers(20, 80)] * 4))  # around the split's minimum, and above it
    names = draw(st.lists(header_name, min_size=1, max_size=4, unique_by=lambda s: s.strip().casefold()))
    cols: dict[str, list] = {}
    for name in names:
        kind = draw(st.sampled_from(["number", "category", "bool", "mixed", "empty"]))
        cell = {"number": number, "category": category, "bool": st.sampled_from([True, False, None]),
                "mixed": st.one_of(number, category), "empty": st.just("")}[kind]
        cols[name] = draw(st.lists(cell, min_size=n, max_size=n))
    if draw(st.booleans()):  # 1-5 classes, every class on some rows, a few labels missing
        k = draw(st.integers(1, 5))
        labels = draw(st.permutations([["A", "B", "ç", "d d", "5"][i % k] for i in range(n)]))
        for i in draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=3)) if n else []:
            labels[i] = ""
    else:  # mostly ordinary numbers; now and then a huge, tiny or non-finite one
        finite = st.floats(-1e6, 1e6, allow_nan=False)
        labels = draw(st.lists(st.one_of(finite, finite, finite, finite, number), min_size=n, max_size=n))
    cols["y"] = labels
    frame = pd.DataFrame(cols)
    if n and draw(st.booleans()):  # duplicate rows
        frame = pd.concat([frame, frame.iloc[: draw(st.integers(1, n))]], ignore_index=True)
    return frame


def _clean(result, stage: str, table: str) -> int:
    where = f"{stage} on the table:\n{table}\nexit {result.exit_code}, stderr:\n{result.stderr}"
    event(f"{stage} exit {result.exit_code}")  # --hypothesis-show-statistics: how far the examples get
    assert result.exit_code in (0, 1, 2), where
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, where
    if result.exit_code == 2:
        assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1, where
    return result.exit_code


def _found(y: list[float]) -> pd.DataFrame:
    """The shape of two tables the fuzzing found: 30 rows, a category, a target of few distinct numbers."""
    return pd.DataFrame({"c": ["a", "b", "", "日本", " "] * 6, "y": y})


@STAGES
@given(frame=tables())
@example(frame=_found([0.0, 2.0, 0.0, 1.0, 1e308] * 6))  # classes '0', '2', '1e308': was a crash (exit 3)
@example(frame=_found([0.5, -3.25, 1e308, 7.0, 2.5] * 6))  # a regression target beyond float32: was NaN training
def test_random_tables_through_every_stage(tmp_path_factory, frame):
    tmp = tmp_path_factory.mktemp("stages")
    data = tmp / "t.csv"
    frame.to_csv(data, index=False)
    table = data.read_text(encoding="utf-8")
    with time_limit(120):
        if _clean(bm("preprocess", data, "--target", "y", "--out", tmp / "prep", code=None), "preprocess", table):
            return
        if _clean(bm("train", tmp / "prep", "--out", tmp / "run", "--set", "train.epochs=1", code=None),
                  "train", table):
            return
        _clean(bm("predict", tmp / "run", data, "--out", tmp / "p.csv", code=None), "predict", table)
        _clean(bm("export", tmp / "run", "--out", tmp / "export", code=None), "export", table)


# ---- chunk boundaries (#29): a streamed preprocess (kinds from the first chunk, rows in chunks of `chunk_rows`)
# must decide as the whole-file read does, or both refuse in one line. Small chunks put the boundary within a few
# dozen rows, so the cases cost kilobytes.
CHANGES = ["missing_before", "words_after", "class_after", "category_after", "floats_after", "bool_word_after"]


def _straddling(change: str, rows: int, at: int, seed: int) -> pd.DataFrame:
    """A table whose column `v` (or target `y`) changes at row `at`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"x": rng.normal(size=rows).round(3), "y": rng.choice(["p", "q"], rows)})
    if change == "missing_before":  # a column empty until `at` (numbers after)
        df["v"] = [None] * at + list(rng.integers(0, 9, rows - at))
    elif change == "words_after":  # numbers, then a word: refused by both, naming the row
        df["v"] = [str(i) for i in rng.integers(0, 9, rows)]
        df.loc[at, "v"] = "oops"
    elif change == "class_after":  # a third class first seen at `at`
        df.loc[at:, "y"] = rng.choice(["p", "q", "r"], rows - at)
        df.loc[at, "y"] = "r"
    elif change == "category_after":  # a category first seen at `at`
        df["v"] = ["a"] * at + ["b"] * (rows - at)
    elif change == "floats_after":  # whole numbers, then fractions
        df["v"] = [float(i) for i in rng.integers(0, 9, rows)]
        df.loc[at:, "v"] += 0.5
    else:  # yes/no, then another word
        df["v"] = rng.choice(["yes", "no"], rows)
        df.loc[at, "v"] = "maybe"
    return df


def _outcome(path, out, *extra) -> tuple[int, object]:
    import json

    r = bm("preprocess", path, "--target", "y", "--out", out, *extra, code=None)
    if r.exit_code:
        assert r.exit_code == 2 and "Traceback" not in r.stderr, r.stderr
        return 2, r.stderr.strip().splitlines()[-1]
    schema = json.loads((out / "schema.json").read_text())
    return 0, (schema["task"], schema["classes"], [(f["name"], f["kind"]) for f in schema["features"]],
               [(f["name"], f["vocabulary"], f["fill"], f["min"], f["max"]) for f in schema["features"]])


@settings(FUZZ, max_examples=STAGE_EXAMPLES if LONG else 12)
@example(change="bool_word_after", chunk=10, offset=0, seed=1)  # (each was a difference before the mend)
@example(change="missing_before", chunk=20, offset=1, seed=1)
@example(change="class_after", chunk=10, offset=0, seed=1)
@given(change=st.sampled_from(CHANGES), chunk=st.integers(10, 40), offset=st.integers(-2, 2),
       seed=st.integers(0, 3))
def test_a_change_at_a_chunk_boundary_is_read_as_whole(tmp_path_factory, change, chunk, offset, seed):
    at = chunk + offset  # just before, at or just after the first boundary
    tmp = tmp_path_factory.mktemp("boundary")
    _straddling(change, 3 * chunk, at, seed).to_csv(tmp / "t.csv", index=False)
    whole = _outcome(tmp / "t.csv", tmp / "whole")
    streamed = _outcome(tmp / "t.csv", tmp / "streamed", "--set", "data.streaming=true",
                        "--set", f"data.chunk_rows={chunk}")
    event(f"{change}: exit {whole[0]}")
    assert streamed == whole


def test_a_target_of_numbers_taken_for_classes_in_the_first_chunk(tmp_path):
    """Whole numbers 0-4 in the first chunk, then fractions: the whole file is a regression; the streamed path,
    whose staged labels are classes by then, says what to set instead of training 60 classes."""
    df = _straddling("floats_after", 90, 30, 0)
    df["y"] = [float(v % 5) for v in range(30)] + [v / 7 for v in range(60)]
    df.to_csv(tmp_path / "t.csv", index=False)
    assert _outcome(tmp_path / "t.csv", tmp_path / "whole")[1][0] == "regression"
    code, line = _outcome(tmp_path / "t.csv", tmp_path / "streamed", "--set", "data.streaming=true",
                          "--set", "data.chunk_rows=30")
    assert code == 2 and "target 'y' looks like classes in the first 30 rows" in line
    assert "set data.task: regression" in line
    assert _outcome(tmp_path / "t.csv", tmp_path / "told", "--set", "data.streaming=true", "--set",
                    "data.chunk_rows=30", "--set", "data.task=regression")[1][0] == "regression"
