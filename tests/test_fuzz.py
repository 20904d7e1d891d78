"""Fuzzing: random CSV bytes at `preprocess`, random YAML at config loading. Never a traceback, never a hang."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bigmodel_cli.config import Config, load_config
from bigmodel_cli.errors import ConfigError

from .conftest import bm

# derandomized (the same examples in every run: CI stays reproducible), no shrinking (a failure is reported at
# once, with its input, instead of minutes of shrinking)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
                derandomize=True, phases=[Phase.explicit, Phase.reuse, Phase.generate], database=None)


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
