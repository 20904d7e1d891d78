"""`train` and `tune`: from a prep folder to a run folder, or to a study of many."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .. import remote
from ..console import err, out, table
from ..errors import BigModelError
from .app import (
    ConfigOpt,
    EpochProgress,
    JsonOpt,
    PrepDirArg,
    PrepLoc,
    ResumeOpt,
    SetOpt,
    Strategy,
    TrackOpt,
    app,
    guard,
    out_option,
    render,
    resolve,
    staging,
    value,
    warn,
)


@app.command()
def train(
    ctx: typer.Context,
    prep_loc: PrepLoc,
    out_loc: Annotated[str, out_option("The run folder to write.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    resume: ResumeOpt = False,
    strategy: Annotated[Strategy | None, typer.Option(
        "--strategy", help="default (one device) | mirrored (all GPUs of this host) | multi_worker (a cluster, by "
                           "TF_CONFIG); same as --set train.strategy=...", show_default=False)] = None,
    track: TrackOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Build the configured keras.Sequential and train it on PREP_DIR's train split.

    RUN_DIR's previous model is replaced only when the new one is complete. Every epoch is checkpointed,
    so an interrupted run (Ctrl-C, SIGTERM, a kill, a crash) continues with --resume.
    """
    with guard(ctx), staging() as staged:
        from .. import train as stage

        if resume and remote.is_url(out_loc):
            raise BigModelError(f"{out_loc}: --resume continues a local run folder; train into a local --out, "
                                f"or start afresh")
        prep_dir, out_dir = staged.read(prep_loc), staged.write(out_loc)
        cfg = resolve(config, sets, prep_dir, {"train.strategy": value(strategy)}, track=track)
        progress = EpochProgress()
        try:
            result = stage.run(stage.TrainOptions(prep_dir, out_dir, cfg, resume), progress)
        finally:
            progress.close()

        def human() -> None:
            rows = [["epochs run", result.epochs_run], ["best epoch", result.best_epoch],
                    *[[k, v] for k, v in result.final.items()], ["seconds", round(result.seconds, 1)]]
            where = (remote.name_of(result.out) if result.out is not None
                     else "(a worker: the chief writes the run folder)")
            out.print(table(f"trained {where}", ["", "value"], rows))

        warn(result.warnings)
        if result.tracking:
            err.print(f"MLflow run {result.tracking['mlflow']['run_id']} at {result.tracking['mlflow']['uri']}",
                      highlight=False, soft_wrap=True)
        staged.commit()
        render(result, as_json, human)


@app.command()
def tune(
    ctx: typer.Context,
    prep_dir: PrepDirArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The tune folder (the study lives there: run again "
                                                              "to continue it).", show_default=False)],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    trials: Annotated[int | None, typer.Option(help="Finished trials to reach (default: tune.trials).", min=1,
                                               show_default=False)] = None,
    timeout: Annotated[float | None, typer.Option(help="Stop starting trials after this many seconds.",
                                                  show_default=False)] = None,
    storage: Annotated[str | None, typer.Option(
        help="An Optuna storage URL shared by workers on several hosts (e.g. postgresql://...); "
             "default: OUT/study.db (SQLite).", show_default=False)] = None,
    workers: Annotated[int, typer.Option(help="Worker processes on this host sharing the study.", min=1)] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Tune hyperparameters on the validation split: an Optuna study over config paths (tune.space).

    TPE, pruning on each epoch's validation metric; writes OUT/trials.csv, best.yaml, best/ (the best trial's run
    folder) and plots. Run again on the same OUT to continue the study."""
    with guard(ctx):
        from .. import tune as stage

        def trial_line(t: dict[str, Any]) -> None:
            value = "" if t["value"] is None else f" {t['value']:.4g}"
            best = "" if t["best"] is None else f"; best {t['best']['value']:.4g} (trial {t['best']['number']})"
            params = ", ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else
                               f"{k.rsplit('.', 1)[-1]}={v}" for k, v in t["params"].items())
            err.print(f"trial {t['number']} {t['state'].lower()}{value} [{t['done']}/{t['of']}] ({params}){best}",
                      highlight=False)

        options = stage.TuneOptions(prep_dir, out_dir, resolve(config, sets, prep_dir), trials, timeout, storage,
                                    workers, source=str(config) if config else "config")
        result = stage.run(options, trial_line)

        def human() -> None:
            best = "" if result.best_value is None else f"{result.best_value:.5g}"
            rows: list[list[Any]] = [
                ["best value", best], ["best trial", result.best_trial],
                *[[k, v] for k, v in result.best_params.items()],
                *[[f"trials {k}", v] for k, v in result.counts.items()], ["seconds", round(result.seconds, 1)]]
            out.print(table(f"tuned {result.metric} ({result.direction}) in {result.out}", ["", "value"], rows))

        render(result, as_json, human)
