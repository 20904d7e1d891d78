"""Pipelines: each stage writes only its own folder (evaluate --out), and examples/dvc runs under the real `dvc`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import PENGUINS, ROOT, bm, read_json

pytestmark = pytest.mark.xdist_group("pipelines")


def test_evaluate_out_leaves_the_run_folder_as_it_was(penguins_run, tmp_path):
    def state() -> dict[Path, int]:
        return {p.relative_to(penguins_run): p.stat().st_mtime_ns for p in penguins_run.rglob("*") if p.name != ".lock"}

    before = state()
    doc = json.loads(bm("evaluate", penguins_run, "--out", tmp_path / "eval", "--json").stdout)
    assert read_json(tmp_path / "eval" / "metrics.json") == doc and doc["run_dir"] == str(penguins_run.resolve())
    assert doc["plots"] and all((tmp_path / "eval" / p).is_file() for p in doc["plots"])
    assert state() == before  # nothing written into the run folder: evaluate's folder is a DVC output of its own
    # compare reads evaluate's folders (the metrics there, the config from the run they name)
    val = json.loads(bm("evaluate", penguins_run, "--out", tmp_path / "val", "--split", "val", "--no-plots",
                        "--json").stdout)
    got = json.loads(bm("compare", tmp_path / "eval", tmp_path / "val", "--format", "json").stdout)
    assert got["metrics"]["accuracy"]["deltas"][1] == pytest.approx(val["metrics"]["accuracy"]
                                                                     - doc["metrics"]["accuracy"])
    assert got["config_diff"] == {} and "evaluated on different data" in got["warnings"][0]  # (test vs val split)


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"dvc {' '.join(args)}: {r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


def test_the_dvc_example_runs_reruns_nothing_and_follows_a_param(tmp_path):
    """examples/dvc in a fresh git + DVC repository: `dvc repro` runs preprocess, train, evaluate, explain and report
    (each into its own folder); again, nothing; a changed train param re-runs all but preprocess; `dvc metrics show`
    reads evaluate's metrics.json; the report shows evaluate's and explain's folders."""
    if shutil.which("git") is None or not (Path(sys.executable).parent / "dvc").exists():
        pytest.skip("needs git and dvc (the dev extras)")
    repo = tmp_path / "pipeline"
    shutil.copytree(ROOT / "examples" / "dvc", repo)
    (repo / "data").mkdir()
    shutil.copy(PENGUINS, repo / "data" / "penguins.csv")
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace("epochs: 30", "epochs: 4")
                                      .replace("rows: 100", "rows: 40"))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    first = _dvc(repo, "repro").stdout
    stages = ("preprocess", "train", "evaluate", "explain", "report")
    assert all(f"Running stage '{s}'" in first for s in stages), first
    model = (repo / "run" / "model.keras").stat().st_mtime_ns
    again = _dvc(repo, "repro").stdout
    assert "Running stage" not in again and again.count("didn't change, skipping") == len(stages), again
    assert (repo / "run" / "model.keras").stat().st_mtime_ns == model
    (repo / "params.yaml").write_text((repo / "params.yaml").read_text().replace("epochs: 4", "epochs: 3"))
    changed = _dvc(repo, "repro").stdout
    assert "Stage 'preprocess' didn't change" in changed and "Running stage 'train'" in changed
    assert all(f"Running stage '{s}'" in changed for s in stages[2:])
    assert read_json(repo / "run" / "manifest.json")["epochs_run"] == 3
    shown = json.loads(_dvc(repo, "metrics", "show", "--json").stdout)
    metrics = shown[""]["data"]["eval/metrics.json"]["data"]["metrics"]
    assert metrics == read_json(repo / "eval" / "metrics.json")["metrics"] and 0 <= metrics["accuracy"] <= 1
    assert not (repo / "run" / "metrics.json").exists() and not (repo / "run" / "explain").exists()  # own folders
    page = (repo / "report.html").read_text()
    assert "Not explained" not in page and f"{metrics['accuracy']:.4f}" in page  # read from eval/ and explain/
