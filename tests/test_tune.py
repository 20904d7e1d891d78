"""`bigmodel tune`: real Optuna studies of real (tiny) trainings on the penguins prep folder."""

from __future__ import annotations

import contextlib
import json

import pandas as pd
import pytest

from bigmodel_cli.config import Config

from .conftest import bm, read_json

# under `pytest -n` (make test) one worker runs this module: its module fixture (a study) is made once
pytestmark = pytest.mark.xdist_group("tune")

QUICK = ["--set", "train.epochs=8", "--set", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def study(penguins_prep, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "study"
    doc = json.loads(bm("tune", penguins_prep, "--out", out, "--trials", "4", *QUICK, "--json").stdout)
    return out, doc


def test_a_study_writes_its_trials_and_a_best_config_no_worse_than_the_default(study, penguins_prep, tmp_path):
    out, doc = study
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["number"]) == [0, 1, 2, 3] and set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    assert {"param:train.optimizer.learning_rate", "param:model.layers.0.units", "param:train.batch_size"} \
        <= set(trials.columns)
    # trial 0 is the config as given (the defaults): the best is never worse than them
    assert trials.loc[0, "param:train.optimizer.learning_rate"] == Config().train.optimizer.learning_rate
    assert trials.loc[0, "state"] == "COMPLETE"
    default = trials.loc[0, "value"]
    assert doc["best_value"] <= default and doc["best_value"] == trials["value"][trials["state"] == "COMPLETE"].min()
    assert read_json(out / "best" / "manifest.json")["kind"] == "run"  # ready for evaluate / export
    assert (out / "optimization_history.png").stat().st_size > 0
    # best.yaml is a config `train` accepts, and it reproduces the best trial's validation metric
    run = json.loads(bm("train", penguins_prep, "--out", tmp_path / "again", "--config", out / "best.yaml",
                        "--json").stdout)
    assert run["final"]["val_loss"] == pytest.approx(doc["best_value"], rel=1e-6)


def test_each_epoch_is_reported_to_the_pruner(study):
    import optuna

    out, _ = study
    s = optuna.load_study(study_name="bigmodel", storage=f"sqlite:///{out / 'study.db'}")
    for t in s.trials:
        assert len(t.intermediate_values) == (8 if t.state.name == "COMPLETE" else t.user_attrs.get("epochs_run", 0)
                                             or len(t.intermediate_values)) > 0


def test_resuming_adds_new_trials_and_a_fresh_study_repeats_them(study, penguins_prep, tmp_path):
    out, _ = study
    bm("tune", penguins_prep, "--out", out, "--trials", "6", *QUICK)
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["number"]) == list(range(6))
    params = trials.filter(like="param:").astype(str).agg("|".join, axis=1)
    assert params.is_unique  # resumed with new points, not the first ones again
    # the same seed, one worker: the same trials and values
    again = tmp_path / "again"
    bm("tune", penguins_prep, "--out", again, "--trials", "4", *QUICK)
    first = pd.read_csv(out / "trials.csv").head(4)
    pd.testing.assert_frame_equal(pd.read_csv(again / "trials.csv").drop(columns="seconds"),
                                  first.drop(columns="seconds"))


@pytest.mark.parametrize("space, words", [
    ("{train.nope: {int: [1, 4]}}", "tune.space.train.nope"),
    ("{train.batch_size: {int: [64, 8]}}", "low 64 must be below high 8"),
    ("{train.optimizer.learning_rate: {float: [0, 0.1], log: true}}", "positive low bound"),
    ("{train.epochs: {int: [-5, 3]}}", "tune.space.train.epochs"),
    ("{train.batch_size: [1, 2]}", "tune.space.train.batch_size"),
    ("{train.batch_size: {range: [1, 2]}}", "give one of float"),
    ("{train.optimizer.learning_rate: {float: [1.0e-4, 1.0e-2], log: true, step: 0.001}}", "step and log"),
])
def test_a_bad_space_is_refused_before_any_trial(penguins_prep, tmp_path, space, words):
    r = bm("tune", penguins_prep, "--out", tmp_path / "t", "--set", f"tune.space={space}", code=2)
    assert r.stderr.startswith("error:") and words in r.stderr and "\n" not in r.stderr.strip(), r.stderr
    assert not (tmp_path / "t" / "study.db").exists()


def test_two_workers_share_one_study_and_stop_at_exactly_n(penguins_prep, tmp_path):
    out = tmp_path / "two"
    doc = json.loads(bm("tune", penguins_prep, "--out", out, "--trials", "5", "--workers", "2", *QUICK,
                        "--json").stdout)
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["number"]) == list(range(5)) and sum(doc["trials"].values()) == 5
    import optuna

    s = optuna.load_study(study_name="bigmodel", storage=f"sqlite:///{out / 'study.db'}")
    spans = [(t.datetime_start, t.datetime_complete) for t in s.trials]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])  # in parallel


def _trial_reported(db, number: int) -> bool:
    """Whether trial `number` is running and has reported an epoch, read from the study's SQLite file read-only
    (optuna.load_study would create the schema itself, racing the tuner that is creating it)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            row = con.execute("SELECT COUNT(*) FROM trials t JOIN trial_intermediate_values v ON v.trial_id = "
                              "t.trial_id WHERE t.number = ? AND t.state = 'RUNNING'", (number,)).fetchone()
    except sqlite3.Error:  # not created yet, or locked by the tuner's write
        return False
    return bool(row and row[0])


def test_a_killed_worker_loses_only_its_trial(penguins_prep, tmp_path):
    """kill -9 mid-trial: the rerun finds the trial silent, marks it failed, runs it again, and ends with exactly
    the requested number of finished trials."""
    import os
    import signal
    import subprocess
    import sys
    import time


    out = tmp_path / "killed"
    args = ["tune", str(penguins_prep), "--out", str(out), "--trials", "3", "--set", "train.epochs=40",
            "--set", "train.early_stopping.enabled=false", "--set", "tune.pruner=none",
            "--set", "tune.heartbeat_seconds=1", "--set", "tune.stale_after_seconds=3"]
    proc = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:  # until trial 1 is running and has reported an epoch
            time.sleep(0.3)
            if (out / "study.db").exists() and _trial_reported(out / "study.db", 1):
                break
        else:
            raise AssertionError("trial 1 never ran")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    bm("tune", *args[1:])
    trials = pd.read_csv(out / "trials.csv")
    states = trials["state"].tolist()
    assert states.count("FAIL") == 1 and states[1] == "FAIL", states
    assert sum(st in ("COMPLETE", "PRUNED") for st in states) == 3  # exactly the trials asked for


def test_a_metric_that_is_not_logged_is_refused_before_any_trial(penguins_prep, tmp_path):
    r = bm("tune", penguins_prep, "--out", tmp_path / "t", "--set", "tune.metric=val_mae", code=2)
    assert "tune.metric: 'val_mae' is not logged" in r.stderr and "val_loss, val_accuracy" in r.stderr, r.stderr
    assert not (tmp_path / "t" / "study.db").exists()


def test_a_helper_process_says_what_went_wrong_in_one_line(tmp_path):
    """`--workers` helpers run tune's own entry point (not the CLI): a user error is one `error:` line on stderr,
    which the starting process quotes from the worker's log, and exit 2."""
    import subprocess
    import sys

    from bigmodel_cli.config import Config

    job = {"prep": str(tmp_path / "no_prep"), "out": str(tmp_path / "tune"), "config": Config().to_yaml(),
           "trials": 2, "timeout": None, "storage": f"sqlite:///{tmp_path / 'study.db'}", "worker": 1,
           "source": "config"}
    done = subprocess.run([sys.executable, "-m", "bigmodel_cli.tune", json.dumps(job)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and "no_prep" in lines[-1] and "Traceback" not in done.stderr
