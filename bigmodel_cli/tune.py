"""`bigmodel tune`: hyperparameters by an Optuna study, each trial bigmodel's own training on the prep folder.

Each trial is the training core's `run` (what `bigmodel train` runs) with the sampled config paths applied (so DP-SGD,
class weights, the run folder format all keep working); its epochs report the monitored validation metric to
Optuna (`trial.report`), and the pruner (median, or successive halving) stops a trial that is behind — KerasTuner
drives `fit` itself and cannot, Ludwig's Optuna executor never reports, so its pruner does nothing. TPE, seeded.
Selection on the validation split only: the test split is not read. The study lives in TUNE_DIR/study.db (SQLite):
`tune` again on the same folder continues it; a trial whose process died (no heartbeat for
tune.stale_after_seconds) is marked failed and retried.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import artifacts
from .config import Config, apply_override
from .errors import ConfigError, DataError, one_line
from .gates import lower_is_better

STUDY, TRIALS_CSV, BEST_CONFIG = artifacts.STUDY, artifacts.TRIALS_CSV, artifacts.BEST_CONFIG
MLFLOW_PARENT = "mlflow_run_id"  # the study's user attribute: its MLflow run (tracking on), for the trials to nest
BEST_RUN = artifacts.BEST_RUN


def default_space(cfg: Config) -> dict[str, dict[str, Any]]:
    """What is worth tuning on a small MLP: the learning rate, the first layer's width, the batch size."""
    space: dict[str, dict[str, Any]] = {"train.optimizer.learning_rate": {"float": [1e-4, 1e-2], "log": True}}
    if cfg.model.layers and "units" in cfg.model.layers[0]:
        space["model.layers.0.units"] = {"int": [16, 256], "log": True}
    space["train.batch_size"] = {"choice": [16, 32, 64, 128]}
    return space


def _override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"  # JSON is YAML: apply_override parses it back exactly


def check_space(space: dict[str, dict[str, Any]], base: dict[str, Any], source: str) -> None:
    """Every key a config path the config accepts at both ends of its range (or every choice), before any trial."""
    for key, spec in space.items():
        where = f"{source}: tune.space.{key}"
        if not isinstance(spec, dict) or len({"float", "int", "choice"} & set(spec)) != 1:
            raise ConfigError(f"{where}: give one of float: [lo, hi], int: [lo, hi] or choice: [values]")
        unknown = set(spec) - {"float", "int", "choice", "log", "step"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: float, int, choice, "
                              f"log, step")
        if "choice" in spec:
            values = spec["choice"]
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: choice needs a non-empty list")
        else:
            kind = "float" if "float" in spec else "int"
            bounds = spec[kind]
            if (not isinstance(bounds, list) or len(bounds) != 2
                    or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)):
                raise ConfigError(f"{where}: {kind} needs [low, high] numbers")
            if kind == "int" and not all(float(b).is_integer() for b in bounds):
                raise ConfigError(f"{where}: int bounds must be whole numbers")
            if not bounds[0] < bounds[1]:
                raise ConfigError(f"{where}: low {bounds[0]} must be below high {bounds[1]}")
            if spec.get("log") and bounds[0] <= 0:
                raise ConfigError(f"{where}: log: true needs a positive low bound")
            values = bounds
            step = spec.get("step")
            if step is not None:
                if spec.get("log"):
                    raise ConfigError(f"{where}: step and log: true do not go together")
                if not isinstance(step, int | float) or isinstance(step, bool) or step <= 0 or \
                        (kind == "int" and not float(step).is_integer()):
                    raise ConfigError(f"{where}: step must be a positive {'whole ' if kind == 'int' else ''}number")
        for v in values:
            raw = json.loads(json.dumps(base))
            try:
                apply_override(raw, _override(key, v))
                Config.model_validate(raw)
            except ConfigError as e:
                raise ConfigError(f"{where}: {str(e).split(': ', 1)[-1]}") from None
            except Exception as e:  # noqa: BLE001  (pydantic's ValidationError: the config rejects the value)
                first = str(e).strip().splitlines()
                raise ConfigError(f"{where}: the config rejects {v!r}: "
                                  f"{first[-1].strip() if first else type(e).__name__}") from None


def _current(space: dict[str, dict[str, Any]], base: dict[str, Any]) -> dict[str, Any] | None:
    """The config's own values of the space's keys, if each lies in its range (or among its choices)."""
    values = {}
    for key, spec in space.items():
        node: Any = base
        for part in key.split("."):
            node = node[int(part)] if isinstance(node, list) else node.get(part)
            if node is None:
                return None
        if "choice" in spec:
            if node not in spec["choice"]:
                return None
        else:
            lo, hi = spec.get("float") or spec["int"]
            if not isinstance(node, int | float) or not lo <= node <= hi:
                return None
        values[key] = node
    return values


def _suggest(trial: Any, key: str, spec: dict[str, Any]) -> Any:
    if "choice" in spec:
        return trial.suggest_categorical(key, spec["choice"])
    if "float" in spec:
        lo, hi = spec["float"]
        return trial.suggest_float(key, float(lo), float(hi), log=bool(spec.get("log")), step=spec.get("step"))
    lo, hi = spec["int"]
    return trial.suggest_int(key, int(lo), int(hi), log=bool(spec.get("log")), step=int(spec.get("step", 1)))


@dataclass(frozen=True)
class TuneResult:
    out: Path
    metric: str
    direction: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    counts: dict[str, int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "metric": self.metric, "direction": self.direction,
                "best_value": self.best_value, "best_params": self.best_params, "best_trial": self.best_trial,
                "trials": self.counts, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class TuneOptions:
    """What `tune` is asked to do."""

    prep: Path  # the prep folder
    out: Path  # the tune folder (the study lives there)
    config: Config  # resolved (config.resolve): the base of every trial, with its tune section
    trials: int | None = None  # finished trials to reach; None: tune.trials
    timeout: float | None = None  # stop starting trials after this many seconds
    storage: str | None = None  # an Optuna storage URL; None: OUT/study.db (SQLite)
    workers: int = 1  # processes on this host sharing the study
    worker: int = 0  # > 0: a helper started by `workers` (it writes no outputs)
    source: str = "config"  # the config's name in messages


@dataclass(frozen=True)
class _Study:
    """A tune run's settings, from the options and the config."""

    options: TuneOptions
    space: dict[str, dict[str, Any]]
    trials: int
    direction: Literal["minimize", "maximize"]
    url: str

    @property
    def metric(self) -> str:
        return self.options.config.tune.metric


def run(options: TuneOptions, on_event: Callable[[dict[str, Any]], None] | None = None) -> TuneResult:
    """Run the study until it has `trials` finished (complete or pruned) trials, or `timeout` seconds pass;
    `on_event` hears every finished trial. `workers` > 1: that many processes on this host share the study (the
    others are this module's helper entry point, `python -m bigmodel_cli.tune JOB`)."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("tune needs Optuna: pip install 'bigmodel[tune]'") from None
    t0 = time.perf_counter()
    plan = _plan(options)
    out = Path(options.out)
    artifacts.Folder(out, "tune").prepare()
    study = _open(plan)
    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = plan.trials - len(study.get_trials(deepcopy=False, states=counted))
    tracker = None if options.worker else _track(plan, study)
    helpers = _helpers(plan, options.workers - 1) if remaining > 1 else []
    ok = False
    try:
        _work(plan, study, on_event)
        ok = True
    except BaseException as e:
        if tracker is not None:
            tracker.finish(None, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    finally:
        if not ok:  # interrupted or failed: the helpers stop too
            for p in helpers:
                p.terminate()
        for i, p in enumerate(helpers):
            if p.wait() != 0 and ok:  # (when this one failed too, its own error is the one to tell)
                log = out / artifacts.WORKER_LOG.format(i + 1)
                last = log.read_text(encoding="utf-8").strip().splitlines()[-1:] if log.exists() else []
                raise DataError(f"{out}: tune worker {i + 1} failed (exit {p.returncode}): "
                                f"{last[0] if last else 'no message'} (see {log})")
    if options.worker:  # a helper: the process that started it writes the outputs, once
        return TuneResult(out, plan.metric, plan.direction, None, {}, None, {}, time.perf_counter() - t0)
    result = _write(study, plan, time.perf_counter() - t0)
    if tracker is not None:
        if result.best_value is not None:
            tracker.best(plan.metric, result.best_value, result.best_params)
        tracker.finish(out, names=(TRIALS_CSV, BEST_CONFIG, artifacts.MANIFEST))
        tracker.check()
    return result


def _track(plan: _Study, study: Any) -> Any:
    """With tracking on: the study's MLflow run (its trials are nested under it, in every worker), else None."""
    from . import tracking
    from .folders import open_prep

    tracker = tracking.start(plan.options.config, open_prep(plan.options.prep), Path(plan.options.out), "tune")
    if tracker is not None and tracker.run_id is not None:
        study.set_user_attr(MLFLOW_PARENT, tracker.run_id)
    return tracker


def _plan(options: TuneOptions) -> _Study:
    """The space, the trial count, the direction and the storage, checked before the study is opened."""
    from .folders import open_prep

    cfg = options.config
    tc = cfg.tune
    space = tc.space or default_space(cfg)
    check_space(space, cfg.model_dump(mode="json"), options.source)
    direction = tc.direction if tc.direction != "auto" else ("minimize" if lower_is_better(tc.metric) else "maximize")
    if not tc.metric.startswith("val_"):
        raise ConfigError(f"tune.metric: '{tc.metric}' is not a validation metric (val_loss, val_accuracy, ...): "
                          f"trials are compared on the validation split only")
    logged = ["val_loss", "val_accuracy" if open_prep(options.prep).schema.is_classification else "val_mae"]
    if tc.metric not in logged:  # what train's history holds: known before any trial runs
        raise ConfigError(f"tune.metric: '{tc.metric}' is not logged for this task; choose one of {', '.join(logged)}")
    url = options.storage or f"sqlite:///{(Path(options.out) / STUDY).resolve()}"
    return _Study(options, space, options.trials or tc.trials, direction, url)


def _open(plan: _Study) -> Any:
    """The study (created, or continued), seeded by the trials already there and by worker, with the config as
    given queued as a trial of a new study (so the best is never worse than it)."""
    import warnings

    import optuna

    options, tc = plan.options, plan.options.config.tune
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial's traceback: ours is one line
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # a trial whose process died stops beating: after grace_period it is marked failed and a copy is re-queued
    pruner = {"median": optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3),
              "halving": optuna.pruners.SuccessiveHalvingPruner(),
              "none": optuna.pruners.NopPruner()}[tc.pruner]
    try:  # a URL whose driver is not installed, or whose database cannot be reached: one line naming it
        store = optuna.storages.RDBStorage(
            plan.url, heartbeat_interval=tc.heartbeat_seconds,
            grace_period=max(tc.stale_after_seconds, tc.heartbeat_seconds + 1),
            engine_kwargs={"connect_args": {"timeout": 60}} if plan.url.startswith("sqlite") else {},
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
        study = optuna.create_study(study_name="bigmodel", storage=store, load_if_exists=True,
                                    direction=plan.direction, pruner=pruner)
    except Exception as e:  # noqa: BLE001
        if options.storage is None:
            raise
        shown = re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", options.storage)  # never a password on the screen
        raise ConfigError(f"--storage {shown}: cannot open the study there: {one_line(e)}") from e
    # seeded, and by the trials already there: a continued study draws new points, not the first ones again
    # (and by worker: helpers started by --workers draw their own points)
    seed = options.config.seed + len(study.get_trials(deepcopy=False)) + 7919 * options.worker
    study.sampler = optuna.samplers.TPESampler(seed=seed)
    if study.user_attrs.get("space") not in (None, plan.space) or \
            study.user_attrs.get("metric") not in (None, plan.metric):
        raise ConfigError(f"{options.out}: the study there tunes another space or metric; use a new --out, or the "
                          f"same tune section")
    start = _current(plan.space, options.config.model_dump(mode="json"))
    kept = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    if start is not None and not any(t.params == start for t in study.get_trials(deepcopy=False, states=kept)):
        study.enqueue_trial(start)
    study.set_user_attr("space", plan.space)
    study.set_user_attr("metric", plan.metric)
    return study


def _objective(plan: _Study, gate: _Gate) -> Callable[[Any], float]:
    """One trial: the sampled config paths applied to the config, trained by the training core with every
    epoch's validation metric reported to the pruner."""
    import optuna

    from .config import with_overrides
    from .training import core

    options = plan.options

    def objective(trial: Any) -> float:
        gate.release()  # this trial is RUNNING in the study now: other workers count it
        params = {k: _suggest(trial, k, spec) for k, spec in plan.space.items()}
        trial_cfg = with_overrides(options.config, [_override(k, v) for k, v in params.items()], options.source)
        started = time.perf_counter()

        def report(epoch: int, total: int, logs: dict[str, float]) -> None:
            if plan.metric not in logs:  # the refit's epochs (refit_*): not for comparing trials
                return
            trial.report(logs[plan.metric], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        run_dir = Path(options.out) / "trials" / f"{trial.number:04d}"
        parent = trial.study.user_attrs.get(MLFLOW_PARENT)  # tracking: the study's MLflow run, the trial's nested
        try:
            result = core.run(core.TrainOptions(options.prep, run_dir, trial_cfg, portable=False,
                                                tracking_parent=parent), report)
        except BaseException:  # pruned, failed or interrupted: its folder is of no use
            shutil.rmtree(run_dir, ignore_errors=True)
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
            raise
        value = result.final.get(plan.metric)
        if value is None:
            raise ConfigError(f"tune.metric: '{plan.metric}' is not logged; choose one of {', '.join(result.final)}")
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 3))
        trial.set_user_attr("run_dir", str(run_dir))
        return float(value)

    return objective


def _work(plan: _Study, study: Any, on_event: Callable[[dict[str, Any]], None] | None) -> None:
    """This worker's trials, one at a time, each started under a lock held until it is RUNNING in the study, so
    that the workers on this host stop at exactly `trials` finished trials (a died trial is re-queued as WAITING
    by the heartbeat callback and picked up first)."""
    import optuna

    counted = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    running = (*counted, optuna.trial.TrialState.RUNNING)
    n, timeout = plan.trials, plan.options.timeout

    def finished(study: Any, trial: Any) -> None:
        if on_event is not None:
            done = study.get_trials(deepcopy=False, states=counted)
            try:
                best = study.best_trial
            except ValueError:
                best = None
            on_event({"number": trial.number, "state": trial.state.name, "value": trial.value,
                      "params": trial.params, "done": len(done), "of": n,
                      "best": None if best is None else {"number": best.number, "value": best.value}})

    gate = _Gate(Path(plan.options.out) / ".ask.lock")
    objective = _objective(plan, gate)
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        try:
            gate.acquire()
            optuna.storages.fail_stale_trials(study)  # a died trial: failed, and a copy queued (WAITING)
            if len(study.get_trials(deepcopy=False, states=counted)) >= n:
                break
            wait = len(study.get_trials(deepcopy=False, states=running)) >= n  # finished + running
            if not wait:
                study.optimize(objective, n_trials=1, catch=(), callbacks=[finished])
        finally:
            gate.release()
        if wait:  # the last trials are running elsewhere (or died: then they go stale and come back)
            time.sleep(min(1.0, plan.options.config.tune.heartbeat_seconds))


class _Gate:
    """An flock on a file in the tune folder, released by whoever gets there first (the trial, or the loop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:

        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _helpers(plan: _Study, count: int) -> list[Any]:
    """`count` more worker processes on the same study (each stops when the study has n finished trials)."""
    import subprocess
    import sys

    o = plan.options
    procs = []
    for i in range(max(0, count)):
        job = {"prep": str(o.prep), "out": str(o.out), "config": o.config.to_yaml(), "trials": plan.trials,
               "timeout": o.timeout, "storage": plan.url, "worker": i + 1, "source": o.source}
        # the entry point below, not the CLI; its stderr to a file, not a pipe: a pipe could fill
        with open(Path(o.out) / artifacts.WORKER_LOG.format(i + 1), "w", encoding="utf-8") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", __name__, json.dumps(job)],
                                          stdout=subprocess.DEVNULL, stderr=log, text=True))
    return procs


def _write(study: Any, plan: _Study, seconds: float) -> TuneResult:
    """trials.csv, best.yaml, best/ and the plots, from the study as it stands."""
    import optuna
    import pandas as pd

    o, out, metric, direction = plan.options, Path(plan.options.out), plan.metric, plan.direction

    trials = study.get_trials(deepcopy=False)
    rows = [{"number": t.number, "state": t.state.name, "value": t.value,
             **{f"param:{k}": v for k, v in t.params.items()},
             "epochs_run": t.user_attrs.get("epochs_run", len(t.intermediate_values) or None),
             "seconds": t.user_attrs.get("seconds")} for t in trials]
    with artifacts.atomic_path(out / TRIALS_CSV) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
    counts = {k: v for k, v in counts.items() if v}
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        return TuneResult(out, metric, direction, None, {}, None, counts, seconds)
    best = study.best_trial
    from .config import with_overrides

    cfg = with_overrides(o.config, [_override(k, v) for k, v in best.params.items()], o.source)
    artifacts.write_text(out / BEST_CONFIG, cfg.to_yaml())
    source = Path(best.user_attrs.get("run_dir", ""))
    if source.is_dir():
        with artifacts.atomic_dir(out / BEST_RUN) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
    _plots(study, out, len(complete))
    artifacts.Folder(out, "tune").finish({
        "prep_dir": str(Path(o.prep).resolve()), "metric": metric, "direction": direction, "trials": counts,
        "best": {"number": best.number, "value": best.value, "params": best.params}, "created": artifacts.now()})
    return TuneResult(out, metric, direction, float(best.value), dict(best.params), best.number, counts, seconds)


def _plots(study: Any, out: Path, complete: int) -> None:
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.exceptions import ExperimentalWarning
    from optuna.visualization import matplotlib as ov

    warnings.filterwarnings("ignore", category=ExperimentalWarning)

    plots: list[tuple[str, Callable[..., Any]]] = [(artifacts.PLOT_HISTORY, ov.plot_optimization_history)]
    if complete >= 2 and len(study.best_params) >= 1:
        plots.append((artifacts.PLOT_IMPORTANCES, ov.plot_param_importances))
    for name, plot in plots:
        try:
            ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. importances of a parameter never varied
            continue
        fig: Any = ax.figure  # (a Figure: optuna draws on a plain one)
        fig.set_size_inches(7, 4)
        fig.tight_layout()
        with artifacts.atomic_path(out / name) as tmp:
            fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)


def _helper(job: dict[str, Any]) -> int:
    """A helper process started by `--workers`: trials of the same study until it has enough; a user error is
    one line on stderr (the worker's log, which the process that started it quotes) and exit 2."""
    import signal
    import sys

    from .errors import BigModelError

    def stop(signum: int, frame: Any) -> None:  # the starting process stops its helpers with SIGTERM
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        import yaml

        from .config import validate

        config = validate(yaml.safe_load(job["config"]), job["source"])
        run(TuneOptions(Path(job["prep"]), Path(job["out"]), config, job["trials"], job["timeout"], job["storage"],
                        worker=job["worker"], source=job["source"]))
    except BigModelError as e:
        sys.stderr.write(f"error: {' '.join(str(e).split())}\n")
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_helper(json.loads(sys.argv[1])))
