"""MLflow tracking (the `mlflow` extra): `train --track` logs a run to a tracking server, `evaluate` adds its metrics.

`train` logs the resolved config, flattened, as params; every epoch's metrics as they come (the refit's as
refit_*); tags (bigmodel's version, the data's sha256, the seed, the run folder); and, once the run folder is
complete, its files (model, config, history, data report, manifest). The MLflow run's address is kept in the run
folder's manifest ("tracking"), so `evaluate` logs its metrics (and bootstrap intervals) to the same MLflow run.

Where to: tracking.uri, else MLFLOW_TRACKING_URI; the experiment: tracking.experiment, else MLFLOW_EXPERIMENT_NAME,
else "bigmodel". A server that is down or refuses is a warning and the work goes on (the run folder holds everything
either way); with tracking.mlflow: required it is an error (exit 2): before training starts, or, failing later, once
the run folder is complete.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, artifacts
from .errors import ConfigError, one_line

DEFAULT_EXPERIMENT = "bigmodel"
# the run folder's files logged as the MLflow run's artifacts (those that exist)
RUN_FILES = (artifacts.MODEL, artifacts.ONNX, artifacts.CONFIG, artifacts.HISTORY, artifacts.CURVE, artifacts.REPORT,
             artifacts.SCHEMA, artifacts.MANIFEST)
BATCH = 100  # params per request (MLflow's log_batch takes at most 100 params)


def _client(uri: str) -> Any:
    # a server that is down answers at once, not after MLflow's default 7 retries with backoff (minutes)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # its "Retrying ..." lines: ours says it
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ConfigError("tracking.mlflow: MLflow is not installed (pip install 'bigmodel[mlflow]')") from None
    return MlflowClient(uri)


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"train": {"epochs": 100}} -> {"train.epochs": "100"}: the config as MLflow params."""
    import json

    out: dict[str, str] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


@dataclass
class Tracker:
    """One MLflow run being logged; after the first failure it logs nothing more and says why in `warnings`."""

    uri: str
    required: bool
    client: Any = None
    run_id: str | None = None
    experiment_id: str | None = None
    warnings: list[str] = field(default_factory=list)
    started: bool = False  # past the start: a failure no longer stops the work, even when required (see check)

    def record(self) -> dict[str, Any] | None:
        """The manifest's "tracking" entry: where evaluate logs to."""
        if self.run_id is None:
            return None
        return {"mlflow": {"uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}}

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """fn() against the server, unless an earlier call failed; a failure is an error when required, else a
        warning that ends the logging."""
        if self.client is None:
            return None
        try:
            return fn()
        except Exception as e:  # noqa: BLE001  (MlflowException, requests' errors: the server's to fix)
            if self.required and not self.started:
                raise ConfigError(f"tracking: MLflow at {self.uri}: {what} failed: {one_line(e)[:300]}") from None
            self.client = None
            self.warnings.append(f"MLflow tracking at {self.uri} stopped ({what} failed: {one_line(e)[:200]}); "
                                 f"the run folder has everything")
            return None

    def check(self) -> None:
        """Required tracking that failed after the start: an error now that the run folder is complete (exit 2,
        nothing lost), not while training."""
        if self.required and self.warnings:
            raise ConfigError(f"tracking.mlflow is required: {self.warnings[0]}")

    def epochs(self, on_epoch: Any) -> Any:
        """`on_epoch` that also logs each epoch's metrics, step = the epoch."""
        def hook(epoch: int, total: int, logs: dict[str, float]) -> None:
            if self.client is not None:
                from mlflow.entities import Metric

                stamp = int(time.time() * 1000)
                metrics = [Metric(k, float(v), stamp, epoch) for k, v in logs.items()]
                self.call(f"logging epoch {epoch}", lambda: self.client.log_batch(self.run_id, metrics=metrics))
            if on_epoch is not None:
                on_epoch(epoch, total, logs)
        return hook

    def note(self, folder: Path) -> None:
        """Add the MLflow run's address to a complete run folder's manifest (a federation's: its child process
        wrote the folder), so evaluate logs to the same run."""
        record = self.record()
        if record is not None:
            manifest = artifacts.read_json(Path(folder) / artifacts.MANIFEST)
            artifacts.write_json(Path(folder) / artifacts.MANIFEST, {**manifest, "tracking": record})

    def _artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def best(self, metric: str, value: float, params: dict[str, Any]) -> None:
        """A tune study's outcome on its MLflow run: `best_METRIC`, and the best trial's values as `best.KEY`."""
        if self.client is None:
            return
        from mlflow.entities import Metric, Param

        batch = [Param(f"best.{k}", str(v)[:6000]) for k, v in params.items()]
        self.call("logging the best trial", lambda: self.client.log_batch(
            self.run_id, metrics=[Metric(f"best_{metric}", float(value), int(time.time() * 1000), 0)],
            params=batch[:BATCH]))

    def finish(self, folder: Path | None, status: str = "FINISHED", names: tuple[str, ...] = RUN_FILES) -> None:
        """Log the complete folder's files `names` (folder None: none) and end the MLflow run with `status`."""
        if self.client is None:
            return
        files = [Path(folder) / name for name in names] if folder is not None else []
        for path in (p for p in files if p.exists()):
            self.call(f"logging {path.name}", functools.partial(self._artifact, path))
        with contextlib.redirect_stdout(sys.stderr):  # MLflow prints the run's address: not on our stdout
            self.call("ending the run", lambda: self.client.set_terminated(self.run_id, status))


def start(cfg: Any, prep: Any, folder: Path, command: str, parent: str | None = None) -> Tracker | None:
    """A new MLflow run for `command` (train, federated, tune) writing `folder`, with the config as params and the
    tags (`parent`: the MLflow run it is nested under, a tune study's for its trials); None when tracking.mlflow is
    false."""
    t = cfg.tracking
    if t.mlflow is False:
        return None
    uri = t.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConfigError("tracking.mlflow: no tracking server given: set tracking.uri or MLFLOW_TRACKING_URI "
                          "(e.g. http://127.0.0.1:5000)")
    tracker = Tracker(uri, t.mlflow == "required", _client(uri))
    name = t.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    c = tracker.client
    experiment = tracker.call("finding the experiment", lambda: c.get_experiment_by_name(name))
    tracker.experiment_id = experiment.experiment_id if experiment is not None else tracker.call(
        "creating the experiment", lambda: c.create_experiment(name))
    tags = {"bigmodel.version": __version__, "bigmodel.command": command, "bigmodel.seed": str(cfg.seed),
            "bigmodel.data_sha256": str(prep.manifest.get("data", {}).get("sha256")),
            "bigmodel.prep_dir": str(prep.path.resolve()), "bigmodel.run_dir": str(Path(folder).resolve()),
            "mlflow.source.name": f"bigmodel {command}", **({"mlflow.parentRunId": parent} if parent else {})}
    run = tracker.call("starting a run", lambda: c.create_run(tracker.experiment_id, tags=tags,
                                                             run_name=Path(folder).resolve().name))
    if run is None:
        return tracker
    tracker.run_id = run.info.run_id
    from mlflow.entities import Param

    params = [Param(k, v[:6000]) for k, v in flatten(cfg.model_dump(mode="json")).items()]
    for at in range(0, len(params), BATCH):
        tracker.call("logging the config", functools.partial(c.log_batch, tracker.run_id,
                                                             params=params[at:at + BATCH]))
    tracker.started = True
    return tracker


def log_evaluation(manifest: dict[str, Any], doc: dict[str, Any], folder: Path, split: str) -> list[str]:
    """evaluate's metrics (split_metric) and bootstrap intervals (split_metric_ci_low / _high), and metrics.json,
    into the MLflow run that trained the run folder, if it was tracked; the warnings (nothing is required here: the
    metrics are in the run folder)."""
    where = (manifest.get("tracking") or {}).get("mlflow")
    if not where:
        return []
    try:
        tracker = Tracker(where["uri"], False, _client(where["uri"]), where["run_id"])
    except ConfigError as e:
        return [f"the metrics were not logged to MLflow: {e}"]
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    metrics = [Metric(f"{split}_{k}", float(v), stamp, 0) for k, v in doc["metrics"].items()
               if isinstance(v, int | float) and v == v]
    for k, ci in ((doc.get("bootstrap") or {}).get("intervals") or {}).items():
        if ci:
            metrics += [Metric(f"{split}_{k}_ci_low", ci[0], stamp, 0), Metric(f"{split}_{k}_ci_high", ci[1], stamp, 0)]
    c = tracker.client
    tracker.call("logging the metrics", lambda: c.log_batch(tracker.run_id, metrics=metrics))
    tracker.call("logging metrics.json", lambda: c.log_artifact(tracker.run_id, str(Path(folder) / artifacts.METRICS)))
    return tracker.warnings


# the run folder's files a registered model needs to load and predict (model.onnx where it was kept)
MODEL_FILES = (artifacts.MODEL, artifacts.ONNX, artifacts.SCHEMA, artifacts.CONFIG, artifacts.MANIFEST)


def register(run_dir: Path, manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """Log the run as an MLflow pyfunc model (mlflow_model.RunModel) into the MLflow run that trained it and register
    it as `name` (a new version); MLflow's model URI, the name and the version. An untracked run, or a server that
    refuses, is an error (the export folder is written already)."""
    import shutil
    import tempfile

    where = (manifest.get("tracking") or {}).get("mlflow")
    if not where:
        raise ConfigError(f"export --register: {run_dir} was not tracked; train it with --track (the registered "
                          f"model is logged into the MLflow run of its training)")
    _client(where["uri"])  # (the extra is installed; the retries bounded)
    import mlflow

    from .mlflow_model import RunModel

    try:
        mlflow.set_tracking_uri(where["uri"])
        with tempfile.TemporaryDirectory(prefix="bigmodel-register-") as tmp:
            for file in MODEL_FILES:
                if (Path(run_dir) / file).exists():
                    (Path(tmp) / "run").mkdir(exist_ok=True)
                    shutil.copy2(Path(run_dir) / file, Path(tmp) / "run" / file)
            with contextlib.redirect_stdout(sys.stderr), mlflow.start_run(run_id=where["run_id"]):
                info = mlflow.pyfunc.log_model(name="model", python_model=RunModel(),
                                               artifacts={"run": str(Path(tmp) / "run")}, registered_model_name=name,
                                               pip_requirements=[f"bigmodel[onnx]=={__version__}"])
    except Exception as e:  # noqa: BLE001  (MlflowException, requests' errors: the server's to fix)
        raise ConfigError(f"export --register: MLflow at {where['uri']}: {one_line(e)[:300]}") from None
    return {"model_uri": info.model_uri, "name": name, "version": info.registered_model_version,
            "run_id": where["run_id"]}
