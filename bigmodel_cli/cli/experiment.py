"""`experiment`: the whole lifecycle in one process, for a first look or a one-line Makefile target."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from .. import remote
from ..console import err, out, table
from ..errors import GateFailed
from .app import (
    ConfigOpt,
    DataLoc,
    EpochProgress,
    ExportFormat,
    JsonOpt,
    SetOpt,
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
from .evaluation import show_metrics

STAGES = ("preprocess", "train", "evaluate", "export", "report")


@app.command()
def experiment(
    ctx: typer.Context,
    data_loc: DataLoc,
    out_loc: Annotated[str, out_option("DIR: writes DIR/prep, DIR/run (with report.html) and DIR/export.")],
    target: Annotated[str | None, typer.Option("--target", "-t", help="The column to predict (or data.target).",
                                               show_default=False)] = None,
    test_loc: Annotated[str | None, typer.Option(
        "--test", metavar="PATH|URL", help="Evaluate on this CSV/Parquet file (or URL) instead of the test split.",
        show_default=False)] = None,
    fmt: Annotated[ExportFormat | None, typer.Option(
        "--format", "-f", help="Export in this format too (savedmodel, keras, onnx, tflite); default: no export.",
        show_default=False)] = None,
    gate: Annotated[list[str] | None, typer.Option(
        "--gate", "-g", metavar="METRIC>=VALUE", help="Fail (exit 1, after everything is written) unless this holds "
        "(repeatable; adds to evaluate.gates).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    track: TrackOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Preprocess, train, evaluate, export and report in one process (one TensorFlow start-up).

    Writes the folders the single commands write (DIR/prep, DIR/run, DIR/export), so every later command works on
    them; --json prints one document with each stage's result."""
    with guard(ctx), staging() as staged:
        from .. import experiment as stage

        data, out_dir, test = staged.read(data_loc), staged.write(out_loc), staged.read_optional(test_loc)

        cfg = resolve(config, sets, fixed={"data.target": target}, track=track)
        progress = EpochProgress()
        asked = [s for s in STAGES if s != "export" or fmt is not None]

        def event(kind: str, *args: Any) -> None:
            if kind == "stage":
                progress.close()
                err.print(f"[{asked.index(args[0]) + 1}/{len(asked)}] {args[0]}", highlight=False)
            else:
                progress(*args)

        try:
            result = stage.run(stage.ExperimentOptions(data, out_dir, cfg, test, value(fmt), tuple(gate or ())),
                               event)
        finally:
            progress.close()

        def human() -> None:
            show_metrics(result.evaluate.doc)
            rows: list[list[Any]] = [
                ["prep folder", escape(remote.name_of(result.preprocess.out))],
                ["run folder", escape(remote.name_of(str(result.train.out)))],
                ["epochs run", result.train.epochs_run], ["report", escape(remote.name_of(str(result.report.out)))]]
            if result.export is not None:
                rows.insert(2, ["export folder", escape(remote.name_of(result.export.out)) if result.export.passed
                                else "not exported (parity)"])
            out.print(table(f"experiment {escape(remote.name_of(result.out))}", ["", ""], rows))

        warn((*result.train.warnings, *result.evaluate.warnings))
        staged.commit()
        render(result, as_json, human)
        if result.failed:
            raise GateFailed("; ".join(result.failed))

