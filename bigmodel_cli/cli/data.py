"""`init` and `preprocess`: from a data file to a starter config, or to a prep folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from .. import remote
from ..console import err, out, table
from .app import ConfigOpt, DataLoc, JsonOpt, SetOpt, app, guard, out_option, render, resolve, staging


@app.command()
def init(
    ctx: typer.Context,
    data: DataLoc,
    target: Annotated[str, typer.Option("--target", "-t", help="The column to predict.", show_default=False)],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Where to write the config.")] = Path("bigmodel.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing config.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a commented starter config inferred from DATA (column kinds, task, defaults)."""
    with guard(ctx), staging() as staged:
        from .. import init as stage

        result = stage.run(stage.InitOptions(staged.read(data), target, out_path, resolve(None, None), force))
        render(result, as_json, lambda: out.print(
            table(f"{result.out}: task {result.task}", ["column", "kind"], [[c, k] for c, k in result.kinds.items()])))


@app.command()
def preprocess(
    ctx: typer.Context,
    data: DataLoc,
    out_dir: Annotated[str, out_option("The prep folder to write.")],
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="The column to predict (or data.target).")
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Clean DATA, split it train/val/test and fit the feature preprocessing on the train split."""
    with guard(ctx), staging() as staged:
        from .. import preprocess as stage

        cfg = resolve(config, sets, fixed={"data.target": target})
        result = stage.run(stage.PreprocessOptions(staged.read(data), staged.write(out_dir), cfg))
        staged.commit()
        render(result, as_json, lambda: _show_report(result))


def _show_report(result: Any) -> None:
    r = result.report
    rows = [[col, c["kind"], c["missing"], "" if c["unique"] is None else c["unique"],
             "" if c["imputed_with"] is None else c["imputed_with"]]
            for col, c in r["columns"].items()]
    out.print(table(f"{remote.name_of(result.out)}: {result.schema.task} on '{result.schema.target}'",
                    ["column", "kind", "missing", "unique", "imputed with"], rows))
    counts = [["rows in", r["rows_in"]], ["duplicates dropped", r["duplicates_dropped"]],
              ["missing target dropped", r["missing_target_dropped"]], ["rows out", r["rows_out"]],
              *[[f"{n} split", k] for n, k in r["splits"].items()]]
    out.print(table("rows", ["", "count"], counts))
    if r["class_balance"]:
        classes = list(next(iter(r["class_balance"].values())))
        out.print(table("class balance", ["split", *classes],
                        [[s, *b.values()] for s, b in r["class_balance"].items()]))
    for note in r["notes"]:
        err.print(f"note: {escape(note)}", soft_wrap=True)
