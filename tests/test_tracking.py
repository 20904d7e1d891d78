"""MLflow tracking against a real `mlflow server` (SQLite backend, local artifact root) on a free loopback port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from .conftest import bm, free_port, read_json

pytest.importorskip("mlflow", reason="the dev extras (mlflow) are not installed")
pytestmark = pytest.mark.xdist_group("tracking")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    log = open(root / "server.log", "w")  # noqa: SIM115  (open while the server runs)
    proc = subprocess.Popen([str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                             "--artifacts-destination", str(root / "artifacts")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
                            # no job runner (~10 huey consumer processes of ~240 MB): tracking needs none of it
                            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (root / "server.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start in 120 s"
            time.sleep(0.3)
        yield SimpleNamespace(uri=uri, proc=proc)
    finally:  # the server's whole process group: `mlflow server` runs its web server as a child
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_train_and_evaluate_log_to_one_mlflow_run(server, penguins_prep, tmp_path, monkeypatch):
    """train --track: the config as params, every epoch's metrics, tags and the run folder's files; evaluate: its
    metrics and bootstrap intervals into the same MLflow run, read back through MLflow's client."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "penguins")
    run = tmp_path / "run"
    r = bm("train", penguins_prep, "--out", run, "--set", "train.epochs=4", "--set", "train.early_stopping.patience=2",
           "--track", "--json")
    result = json.loads(r.stdout)  # MLflow's own "View run" lines are not on stdout
    run_id = result["tracking"]["mlflow"]["run_id"]
    manifest = read_json(run / "manifest.json")
    assert manifest["tracking"]["mlflow"] == {"uri": server.uri, "experiment_id": result["tracking"]["mlflow"][
        "experiment_id"], "run_id": run_id} and not result["warnings"]
    client = MlflowClient(server.uri)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and client.get_experiment(logged.info.experiment_id).name == "penguins"
    params = logged.data.params
    assert params["train.epochs"] == "4" and params["seed"] == "42" and params["model.dropout"] == "auto"
    tags = logged.data.tags
    assert tags["bigmodel.data_sha256"] == manifest["data"]["sha256"] and tags["bigmodel.seed"] == "42"
    assert tags["bigmodel.run_dir"] == str(run.resolve())
    history = [(m.step, m.value) for m in client.get_metric_history(run_id, "val_loss")]
    import pandas as pd

    local = pd.read_csv(run / "history.csv")
    assert [s for s, _ in history] == local["epoch"].tolist() == list(range(1, manifest["epochs_run"] + 1))
    assert [v for _, v in history] == pytest.approx(local["val_loss"].tolist(), rel=1e-6)
    assert len(client.get_metric_history(run_id, "refit_loss")) == manifest["best_epoch"]  # the refit's epochs
    files = {f.path for f in client.list_artifacts(run_id)}
    assert {"model.keras", "config.yaml", "history.csv", "report.json", "manifest.json", "model.onnx"} <= files

    doc = json.loads(bm("evaluate", run, "--bootstrap", "30", "--no-plots", "--json").stdout)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["test_accuracy"] == pytest.approx(doc["metrics"]["accuracy"])
    assert metrics["test_accuracy_ci_low"] == pytest.approx(doc["bootstrap"]["intervals"]["accuracy"][0])
    assert "metrics.json" in {f.path for f in client.list_artifacts(run_id)}

    # export --register: the run as a pyfunc model in its MLflow run, registered; loaded back, it answers as predict
    r = bm("export", run, "--format", "keras", "--out", tmp_path / "export", "--register", "penguins-species", "--json")
    registered = json.loads(r.stdout)["registered"]
    assert registered["name"] == "penguins-species" and str(registered["version"]) == "1"
    assert client.get_registered_model("penguins-species").latest_versions[0].run_id == run_id
    import mlflow.pyfunc

    from .conftest import PENGUINS

    raw = pd.read_csv(PENGUINS).drop(columns="species").head(25)
    got = mlflow.pyfunc.load_model("models:/penguins-species/1").predict(raw)
    raw.to_csv(tmp_path / "raw.csv", index=False)
    bm("predict", run, tmp_path / "raw.csv", "--out", tmp_path / "p.csv")
    pd.testing.assert_frame_equal(got.reset_index(drop=True), pd.read_csv(tmp_path / "p.csv"), check_dtype=False,
                                  atol=1e-6)


def test_register_needs_a_tracked_run(penguins_run, tmp_path):
    r = bm("export", penguins_run, "--format", "keras", "--out", tmp_path / "export", "--register", "x", code=2)
    assert "was not tracked; train it with --track" in r.stderr
    assert (tmp_path / "export" / "manifest.json").exists()  # the export itself is written


def test_a_server_that_is_down_is_a_warning_or_with_required_an_error(penguins_prep, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    fast = ["--set", "train.epochs=2", "--set", "train.portable=false", "--set", f"tracking.uri={down}"]
    r = bm("train", penguins_prep, "--out", tmp_path / "run", *fast, "--track", "--json")
    assert json.loads(r.stdout)["tracking"] is None
    assert f"warning: MLflow tracking at {down} stopped" in r.stderr
    m = read_json(tmp_path / "run" / "manifest.json")  # trained and written all the same
    assert "tracking" not in m and (tmp_path / "run" / "model.keras").exists()
    r = bm("train", penguins_prep, "--out", tmp_path / "strict", *fast, "--set", "tracking.mlflow=required", code=2)
    line = r.stderr.strip()
    assert line.startswith("error: tracking: MLflow at " + down) and len(line.splitlines()) == 1, r.stderr
    assert not (tmp_path / "strict").exists()  # refused before training
    r = bm("train", penguins_prep, "--out", tmp_path / "nowhere", "--track", code=2)
    assert "set tracking.uri or MLFLOW_TRACKING_URI" in r.stderr


def test_experiment_track_logs_train_and_evaluate(server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from .conftest import PENGUINS

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    r = bm("experiment", PENGUINS, "--target", "species", "--out", tmp_path / "exp", "--set", "train.epochs=2",
           "--set", f"tracking.uri={server.uri}", "--set", "tracking.experiment=experiments", "--track", "--json")
    doc = json.loads(r.stdout)
    logged = MlflowClient(server.uri).get_run(doc["train"]["tracking"]["mlflow"]["run_id"])
    assert logged.data.params["data.target"] == "species" and logged.data.params["tracking.experiment"] == "experiments"
    assert logged.data.metrics["test_accuracy"] == pytest.approx(doc["evaluate"]["metrics"]["accuracy"])


def test_federated_rounds_are_logged_as_the_run_s_epochs(server, penguins_prep, tmp_path, monkeypatch):
    """A simulated federation with --track: each round's global metrics at step = the round, as history.csv has
    them; the manifest (written by the simulation's own process) gets the MLflow run, so evaluate logs to it."""
    pytest.importorskip("flwr", reason="the federated extra is not installed")
    import pandas as pd
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    run = tmp_path / "fed"
    r = bm("federated", penguins_prep, "--out", run, "--set", "federated.clients=3", "--set", "federated.rounds=2",
           "--set", "federated.local_epochs=1", "--set", "train.early_stopping.enabled=false",
           "--set", "train.tensorboard=false", "--set", "federated.workers=1", "--track", "--json")
    run_id = json.loads(r.stdout)["tracking"]["mlflow"]["run_id"]
    assert read_json(run / "manifest.json")["tracking"]["mlflow"]["run_id"] == run_id
    client = MlflowClient(server.uri)
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.data.tags["bigmodel.command"] == "federated"
    series = [(m.step, m.value) for m in client.get_metric_history(run_id, "val_loss")]
    local = pd.read_csv(run / "history.csv")
    assert [s for s, _ in series] == [1, 2] and [v for _, v in series] == pytest.approx(local["val_loss"].tolist())
    bm("evaluate", run, "--no-plots")
    assert "test_accuracy" in client.get_run(run_id).data.metrics


def test_track_turns_tracking_on_and_keeps_required(tmp_path):
    """--track is tracking.mlflow true, but does not weaken a config's `required` to true."""
    from bigmodel_cli.cli.app import resolve

    required = tmp_path / "required.yaml"
    required.write_text("tracking: {mlflow: required}\n")
    assert resolve(required, None, track=True).tracking.mlflow == "required"
    assert resolve(None, None, track=True).tracking.mlflow is True
    assert resolve(None, ["tracking.mlflow=false"]).tracking.mlflow is False


def test_tune_trials_are_nested_under_the_study_s_run(server, penguins_prep, tmp_path, monkeypatch):
    """tune with tracking: one MLflow run for the study (its best value and parameters, trials.csv), and each
    trial an MLflow run nested under it (mlflow.parentRunId) with its own per-epoch series."""
    pytest.importorskip("optuna", reason="the tune extra is not installed")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tune")
    doc = json.loads(bm("tune", penguins_prep, "--out", tmp_path / "study", "--trials", "2", "--set", "train.epochs=2",
                        "--set", "train.refit=false", "--set", "train.tensorboard=false",
                        "--set", "tracking.mlflow=true", "--json").stdout)
    client = MlflowClient(server.uri)
    runs = client.search_runs([client.get_experiment_by_name("tune").experiment_id])
    study = [r for r in runs if r.data.tags["bigmodel.command"] == "tune"]
    assert len(study) == 1 and study[0].info.status == "FINISHED", [r.data.tags for r in runs]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study[0].info.run_id]
    assert len(trials) == 2 and len(runs) == 3 and all(r.data.tags["bigmodel.command"] == "train" for r in trials)
    assert study[0].data.metrics["best_val_loss"] == pytest.approx(doc["best_value"])
    assert {k.removeprefix("best."): v for k, v in study[0].data.params.items() if k.startswith("best.")} == {
        k: str(v) for k, v in doc["best_params"].items()}
    assert {a.path for a in client.list_artifacts(study[0].info.run_id)} >= {"trials.csv", "best.yaml"}
    assert all(len(client.get_metric_history(r.info.run_id, "val_loss")) == 2 for r in trials)


def test_required_tracking_that_fails_mid_run_is_exit_2_after_the_run_is_written(server, penguins_prep, tmp_path,
                                                                                  monkeypatch):
    """The server dies after the first epoch (killed): under tracking.mlflow required the training still finishes
    and writes its run folder, then the command exits 2 naming the server. (Last in this module: it kills the
    module's server.)"""
    import threading

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    run = tmp_path / "run"

    def kill_after_the_first_epoch() -> None:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(server.proc.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_after_the_first_epoch, daemon=True)
    killer.start()
    r = bm("train", penguins_prep, "--out", run, "--set", "train.epochs=60", "--set",
           "train.early_stopping.enabled=false", "--set", "train.portable=false", "--set", "tracking.mlflow=required",
           code=2)
    killer.join(timeout=5)
    with pytest.raises(OSError):  # the server was killed during the training (else this test proves nothing)
        urllib.request.urlopen(f"{server.uri}/health", timeout=2)
    last = r.stderr.strip().splitlines()[-1]  # (after the epochs' progress lines)
    assert last.startswith(f"error: tracking.mlflow is required: MLflow tracking at {server.uri} stopped"), r.stderr
    m = read_json(run / "manifest.json")  # the run folder is complete all the same
    assert m["epochs_run"] == 60 and m["tracking"]["mlflow"]["uri"] == server.uri and (run / "model.keras").exists()
