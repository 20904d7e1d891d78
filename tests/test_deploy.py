"""Deployment: portable exports (ONNX, TFLite) checked in their own runtimes, also where TensorFlow is absent."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .conftest import PENGUINS, bm, read_json

# under `pytest -n` (make test) one worker runs this module: its module fixtures (three runs, eight portable
# exports) are made once
pytestmark = pytest.mark.xdist_group("deploy")


@pytest.fixture(scope="module")
def mass_run(tmp_path_factory) -> Path:
    """A regression in raw units (penguin body mass in grams, ~4200)."""
    root = tmp_path_factory.mktemp("mass")
    bm("preprocess", PENGUINS, "--target", "body_mass_g", "--out", root / "prep")
    bm("train", root / "prep", "--out", root / "run", "--set", "train.epochs=3")
    return root / "run"


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("embedded")
    bm("preprocess", PENGUINS, "--target", "species", "--out", root / "prep", "--set",
       "preprocess.categorical_encoding=embedding")
    bm("train", root / "prep", "--out", root / "run", "--set", "train.epochs=3")
    return root / "run"


RUNS = ["penguins_run", "cancer_run", "mass_run", "embedded_run"]  # multiclass with categoricals, binary, regression


@pytest.fixture(scope="module")
def portable_exports(request, tmp_path_factory) -> dict[tuple[str, str], Path]:
    out = {}
    root = tmp_path_factory.mktemp("portable")
    for run in RUNS:
        for fmt in ("onnx", "tflite"):
            folder = root / f"{run}-{fmt}"
            doc = json.loads(bm("export", request.getfixturevalue(run), "--format", fmt, "--out", folder,
                                "--json").stdout)
            assert doc["passed"] and set(doc["max_abs_diff"]) == {"keras", fmt, f"{fmt} (batch 1)"}, doc
            out[(run, fmt)] = folder
    return out


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
@pytest.mark.parametrize("run", RUNS)
def test_portable_export_matches_predict_in_its_own_runtime(portable_exports, run, fmt, request):
    from bigmodel_cli import features, runtimes
    from bigmodel_cli.export import hostile
    from bigmodel_cli.folders import load_run

    folder = portable_exports[(run, fmt)]
    manifest = read_json(folder / "manifest.json")
    assert (folder / f"model.{fmt}").stat().st_size > 0 and manifest["format"] == fmt
    assert manifest["parity"]["hostile_rows"] > 0 and manifest["parity"]["one_by_one"] > 0
    if fmt == "onnx":  # the run's own graph, checked again, not converted a second time
        assert manifest["onnx"]["opset"] == 17 and manifest["onnx"]["from"] == "the run's model.onnx"
        assert (folder / "model.onnx").read_bytes() == (request.getfixturevalue(run) / "model.onnx").read_bytes()
    # the test split plus NaN / ±inf / '' / unseen rows, through onnxruntime or LiteRT, against predict's model
    loaded = load_run(request.getfixturevalue(run))
    x = hostile(features.to_inputs(loaded.split("test"), loaded.schema, "test"), loaded.schema)
    got = runtimes.load(folder / f"model.{fmt}")(x)
    want = features.apply(loaded.serving, x)
    assert got.shape == want.shape and np.isfinite(got).all()
    assert np.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert manifest["inputs"] == {f.key: {"column": f.name, "dtype": "float32" if f.is_numeric else "string"}
                                  for f in loaded.schema.features}


@pytest.mark.parametrize("run", RUNS)
def test_a_run_predicts_in_onnxruntime_as_it_does_in_tensorflow(run, request):
    """`train` writes model.onnx, checked as an export is; predict and evaluate run it in onnxruntime (no
    TensorFlow), with the Keras path's predictions to 1e-5: every task kind, embedded categoricals, hostile rows."""
    from bigmodel_cli.folders import load_run

    folder = request.getfixturevalue(run)
    entry = read_json(folder / "manifest.json")["portable"]
    assert entry["onnx"] == "model.onnx" and entry["parity"]["max_abs_diff"]["onnx"] <= 1e-5, entry
    fast, slow = load_run(folder, portable=True), load_run(folder)
    assert (fast.engine, fast.network, fast.why_tensorflow) == ("onnxruntime", None, None)
    assert slow.engine == "tensorflow" and slow.network is not None
    df = fast.split("test")
    odd = df.head(2).copy()  # a missing number, an empty and an unseen category
    for f in fast.schema.features:
        odd[f.name] = odd[f.name].astype(object)
        odd.loc[odd.index[0], f.name] = None
        odd.loc[odd.index[1], f.name] = "never seen" if f.kind in ("categorical", "boolean") else np.nan
    rows = pd.concat([df, odd], ignore_index=True)
    a, b = fast.predict(rows, "rows"), slow.predict(rows, "rows")
    got, want = (a.values, b.values) if a.probabilities is None else (a.probabilities, b.probabilities)
    assert got.shape == want.shape and np.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert a.unseen_categories == b.unseen_categories


NO_TF = """
import json, sys
from bigmodel_cli.cli import app
try:
    app(sys.argv[1:])
except SystemExit as e:
    assert not e.code, e.code
print(json.dumps({"tensorflow": "tensorflow" in sys.modules}))
"""


def test_predict_and_evaluate_start_no_tensorflow(penguins_run, tmp_path):
    """In a process of their own, predict and evaluate on a run with its portable graph never import TensorFlow;
    a graph that is not the one trained (here: changed on disk) is not used: TensorFlow, with a one-line note."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def cli(*args):
        done = subprocess.run([sys.executable, "-c", NO_TF, *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.strip().splitlines()[-1])["tensorflow"], done.stderr

    assert cli("predict", penguins_run, PENGUINS, "--out", tmp_path / "p.csv") == (False, "")
    assert cli("evaluate", penguins_run, "--data", PENGUINS, "--no-plots")[0] is False
    run = tmp_path / "run"
    shutil.copytree(penguins_run, run)
    with open(run / "model.onnx", "ab") as f:
        f.write(b"\0")
    used_tf, stderr = cli("predict", run, PENGUINS, "--out", tmp_path / "q.csv")
    assert used_tf and "note: using TensorFlow" in stderr and "not the one trained" in stderr
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "p.csv"), pd.read_csv(tmp_path / "q.csv"), atol=1e-5)
    bm("export", run, "--format", "onnx", "--out", tmp_path / "export")  # that graph is not reused: converted anew
    manifest = read_json(tmp_path / "export" / "manifest.json")
    assert "from" not in manifest["onnx"] and (tmp_path / "export" / "model.onnx").read_bytes() != \
        (run / "model.onnx").read_bytes()


def test_large_files_show_rows_done_and_rows_per_second(penguins_run, tmp_path, monkeypatch):
    """predict, evaluate and export report progress on stderr when a file is larger than one model call
    (folders.SLICE_ROWS, made small here), and the predictions made slice by slice equal those made at once."""
    from bigmodel_cli import folders

    big = tmp_path / "big.csv"
    pd.concat([pd.read_csv(PENGUINS)] * 3).to_csv(big, index=False)
    r = bm("predict", penguins_run, big, "--out", tmp_path / "whole.csv")
    assert r.stderr == ""  # one model call: nothing to report
    monkeypatch.setattr(folders, "SLICE_ROWS", 10)
    r = bm("predict", penguins_run, big, "--out", tmp_path / "sliced.csv")
    assert re.search(r"^predict: 1,032 of 1,032 rows, [\d,]+ rows/s$", r.stderr, re.M), r.stderr
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "sliced.csv"), pd.read_csv(tmp_path / "whole.csv"))
    r = bm("evaluate", penguins_run, "--data", big, "--no-plots")
    assert re.search(r"^evaluate: 1,032 of 1,032 rows, [\d,]+ rows/s$", r.stderr, re.M), r.stderr
    r = bm("export", penguins_run, "--format", "onnx", "--out", tmp_path / "export")
    assert re.search(r"^export: model.onnx: converting and checking it \(\d+ rows\)$", r.stderr, re.M), r.stderr


def test_failed_parity_keeps_the_previous_export(penguins_run, tmp_path):
    """A mismatch (here: a tolerance no float32 model meets) is exit 1, and the export folder that was there
    stays byte for byte: the new one is built aside and swapped in only when every check passed."""
    run = tmp_path / "run"
    shutil.copytree(penguins_run, run)
    out = tmp_path / "export"
    bm("export", run, "--format", "keras", "--out", out)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir() if p.is_file()}
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("parity_tolerance: 1.0e-05", "parity_tolerance: 1.0e-30"))
    r = bm("export", run, "--format", "onnx", "--out", out, "--json", code=1)
    assert "onnx" in json.loads(r.stdout)["mismatch"]
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "run"]  # no temp folder left beside it


def test_export_versions_in_tf_serving_s_layout(penguins_run, tmp_path):
    """--version next writes BASE/1, then BASE/2 (each a whole export folder, with the run's reference statistics);
    an existing version is never overwritten, and an export folder is no base."""
    base = tmp_path / "models" / "penguins"
    for n in ("1", "2"):
        doc = json.loads(bm("export", penguins_run, "--format", "keras", "--out", base, "--version", "next",
                            "--json").stdout)
        assert doc["out"] == str((base / n).resolve()) and (base / n / "manifest.json").exists()
    assert sorted(p.name for p in base.iterdir()) == ["1", "2"] and (base / "2" / "reference.json").exists()
    r = bm("export", penguins_run, "--format", "keras", "--out", base, "--version", "2", code=2)
    assert "versions are never overwritten" in r.stderr
    r = bm("export", penguins_run, "--format", "keras", "--out", base / "1", "--version", "next", code=2)
    assert "is an export or run folder itself" in r.stderr


def test_free_text_is_refused_by_portable_formats(tmp_path):
    rng = np.random.default_rng(0)
    words = ["red fox", "blue whale", "green frog jumps", "the quick brown", "lazy dog sleeps"]
    df = pd.DataFrame({"x": rng.normal(size=60), "note": rng.choice(words, 60), "y": rng.choice(["a", "b"], 60)})
    df.to_csv(tmp_path / "t.csv", index=False)
    bm("preprocess", tmp_path / "t.csv", "--target", "y", "--out", tmp_path / "prep", "--set",
       "data.columns={note: text}")
    bm("train", tmp_path / "prep", "--out", tmp_path / "run", "--set", "train.epochs=1")
    for fmt in ("onnx", "tflite"):
        r = bm("export", tmp_path / "run", "--format", fmt, "--out", tmp_path / fmt, code=2)
        assert r.stderr.startswith("error:") and "column 'note'" in r.stderr and fmt in r.stderr
        assert not (tmp_path / fmt).exists() or not any((tmp_path / fmt).iterdir())


# ---- a consumer without TensorFlow: a venv with only numpy, onnxruntime and ai-edge-litert (made once, cached)
CONSUMER = r"""
import json, sys
import numpy as np
try:
    import tensorflow  # noqa: F401
    sys.exit("tensorflow is importable here")
except ImportError:
    pass
folder, rows = sys.argv[1], json.load(open(sys.argv[2]))
manifest = json.load(open(f"{folder}/manifest.json"))
x = {}
for key, spec in manifest["inputs"].items():
    col = rows[spec["column"]]
    if spec["dtype"] == "float32":
        x[key] = np.array([np.nan if v is None else v for v in col], dtype=np.float32).reshape(-1, 1)
    else:
        x[key] = np.array(["" if v is None else str(v).strip() for v in col], dtype=object).reshape(-1, 1)
if manifest["format"] == "onnx":
    import onnxruntime as ort
    out = ort.InferenceSession(f"{folder}/model.onnx").run(None, x)[0]
else:
    from ai_edge_litert.interpreter import Interpreter
    runner = Interpreter(model_path=f"{folder}/model.tflite").get_signature_runner()
    feed = {k: (v if v.dtype != object else np.array([s.encode() for s in v[:, 0]], dtype=object).reshape(-1, 1))
            for k, v in x.items()}
    out = next(iter(runner(**feed).values()))
print(json.dumps(np.asarray(out).tolist()))
"""


@pytest.fixture(scope="session")
def consumer_python() -> Path:
    cache = Path(os.environ.get("BIGMODEL_TEST_CACHE", Path.home() / ".cache" / "bigmodel-tests"))
    pins = [f"{p}=={metadata.version(p)}" for p in ("numpy", "onnxruntime", "ai-edge-litert")]
    venv = cache / ("consumer-" + hashlib.sha256(" ".join(pins).encode()).hexdigest()[:12])
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *pins], check=True, capture_output=True)
        (venv / ".complete").touch()
    return python


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_a_consumer_without_tensorflow_gets_predicts_answers(portable_exports, consumer_python, fmt, tmp_path):
    """Raw rows (missing numbers, '' and untrimmed and unseen categories) fed by a script that has only
    onnxruntime / LiteRT: the same probabilities as `bigmodel predict` on those rows."""
    run = "penguins_run"
    folder = portable_exports[(run, fmt)]
    raw = pd.read_csv(PENGUINS).drop(columns="species").head(40)
    raw.loc[0, "bill_length_mm"] = np.nan
    raw.loc[1, "island"], raw.loc[2, "island"], raw.loc[3, "sex"] = "", "  Dream ", "Atlantis"
    raw.to_csv(tmp_path / "raw.csv", index=False)
    rows = {c: [None if pd.isna(v) else v.item() if hasattr(v, "item") else v for v in raw[c]] for c in raw.columns}
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "consumer.py").write_text(CONSUMER)
    r = subprocess.run([str(consumer_python), str(tmp_path / "consumer.py"), str(folder), str(tmp_path / "rows.json")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = np.array(json.loads(r.stdout))
    run_dir = Path(read_json(folder / "manifest.json")["run_dir"])
    bm("predict", run_dir, tmp_path / "raw.csv", "--out", tmp_path / "p.csv")
    classes = read_json(folder / "manifest.json")["classes"]
    want = pd.read_csv(tmp_path / "p.csv")[[f"prob_{c}" for c in classes]].to_numpy()
    assert got.shape == want.shape and np.allclose(got, want, atol=1e-5)


def test_export_never_replaces_a_folder_that_is_not_an_export(penguins_run, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    r = bm("export", penguins_run, "--format", "keras", "--out", mine, code=2)
    assert "is not an export folder" in r.stderr and (mine / "notes.txt").read_text() == "keep me"
    r = bm("export", penguins_run, "--format", "keras", "--out", penguins_run, code=2)
    assert "this is a run folder, not an export folder" in r.stderr, r.stderr
    assert (penguins_run / "model.keras").exists()
