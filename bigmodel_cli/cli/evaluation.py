"""`evaluate`, `explain`, `compare` and `report`: what a run folder's model is worth, and why."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from .. import artifacts
from ..console import emit_json, out, table
from ..errors import GateFailed
from .app import (
    CompareFormat,
    DataLoc,
    DriftOpt,
    JsonOpt,
    RowProgress,
    RunDirArg,
    RunLoc,
    Split,
    UnsafeOpt,
    app,
    guard,
    notes,
    out_option,
    render,
    slow_path,
    staging,
    value,
    warn,
)


@app.command()
def evaluate(
    ctx: typer.Context,
    run_loc: RunLoc,
    data_loc: Annotated[str | None, typer.Option(
        "--data", "-d", metavar="PATH|URL", help="A prep folder or a raw CSV/Parquet file (default: the run's own "
        "prep folder); or its URL.")] = None,
    split: Annotated[Split | None, typer.Option(
        "--split", help="For a prep folder (default: evaluate.split, test).", show_default=False)] = None,
    gate: Annotated[list[str] | None, typer.Option(
        "--gate", "-g", metavar="METRIC>=VALUE", help="Fail (exit 1) unless this holds, e.g. 'accuracy>=0.9' "
        "(repeatable; adds to evaluate.gates).")] = None,
    bootstrap: Annotated[int | None, typer.Option(
        "--bootstrap", min=0, max=100_000, metavar="N",
        help="Add 95% bootstrap intervals from N resamples (e.g. 1000).")] = None,
    plots: Annotated[bool | None, typer.Option(
        "--plots/--no-plots", help="Write PNG plots to RUN_DIR/eval/ (default: evaluate.plots).")] = None,
    out_loc: Annotated[str | None, out_option(
        "Write metrics.json and eval/ into this folder instead of RUN_DIR (a pipeline stage's own output, e.g. for "
        "DVC).")] = None,
    check_drift: DriftOpt = False,
    unsafe: UnsafeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Metrics of RUN_DIR's model; writes RUN_DIR/metrics.json (or OUT/metrics.json). Exit 1 if a gate fails (or,
    with --drift, a column drifted)."""
    with guard(ctx), staging() as staged:
        from .. import evaluate as stage

        # a run at a URL is read, and (without --out) written back with its new metrics
        run_dir = staged.read(run_loc) if out_loc is not None else staged.update(run_loc)
        data = staged.read_optional(data_loc)
        out_dir = None if out_loc is None else staged.write(out_loc)

        with contextlib.closing(RowProgress("evaluate")) as progress:
            result = stage.run(stage.EvaluateOptions(run_dir, data, value(split), tuple(gate or ()), bootstrap,
                                                     plots, unsafe, out_dir, check_drift), progress)
        slow_path(result.doc.get("why_tensorflow"))
        warn(result.warnings)
        staged.commit()

        def human() -> None:
            show_metrics(result.doc)
            if "drift" in result.doc:
                show_drift(result.doc["drift"], result.doc["data"]["source"])

        render(result, as_json, human)
        failed = [f"{len(result.failed_gates)} gate(s) failed: "
                  + ", ".join(f"{g['gate']} (got {_number(g['value'])})" for g in result.failed_gates)
                  ] if result.failed_gates else []
        if result.drifted:
            failed.append(drifted(result.drifted))
        if failed:
            raise GateFailed("; ".join(failed))


def _number(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _interval(iv: list[float] | None) -> str:
    return "n/a" if iv is None else f"[{iv[0]:.4f}, {iv[1]:.4f}]"


def show_metrics(doc: dict[str, Any]) -> None:
    d = doc["data"]
    title = f"{doc['task']} on '{doc['target']}': {d['split'] or d['source']} ({d['rows']} rows)"
    ci = (doc.get("bootstrap") or {}).get("intervals")
    rows = [[k, "n/a" if v is None else v, *([_interval(ci.get(k))] if ci else [])] for k, v in doc["metrics"].items()]
    out.print(table(title, ["metric", "value", *(["95% interval"] if ci else [])], rows))
    if "per_class" in doc:
        out.print(table("per class", ["class", "precision", "recall", "f1", "support"],
                        [[c, *v.values()] for c, v in doc["per_class"].items()]))
        cm = doc["confusion_matrix"]
        out.print(table("confusion matrix (rows: true, columns: predicted)", ["", *cm["labels"]],
                        [[label, *row] for label, row in zip(cm["labels"], cm["matrix"], strict=True)]))
    if doc.get("gates"):
        out.print(table("gates", ["gate", "threshold", "value", "verdict"],
                        [[g["gate"], g["threshold"], _number(g["value"]), "pass" if g["passed"] else "FAIL"]
                         for g in doc["gates"]]))
    notes(doc.get("unseen_categories", {}), doc.get("ignored_columns") or [])


@app.command()
def drift(
    ctx: typer.Context,
    run_loc: RunLoc,
    data_loc: DataLoc,
    psi: Annotated[float | None, typer.Option(
        "--psi", min=0, help="A column drifts when its population stability index is above this (default: drift.psi, "
        "0.2).", show_default=False)] = None,
    missing: Annotated[float | None, typer.Option(
        "--missing", min=0, max=1, help="... or its missing rate changed by more than this (default: drift.missing, "
        "0.1).", show_default=False)] = None,
    out_of_range: Annotated[float | None, typer.Option(
        "--out-of-range", min=0, max=1, help="... or more than this share of its numbers is outside the training "
        "range (default: drift.out_of_range, 0.05).", show_default=False)] = None,
    out_loc: Annotated[str | None, out_option("Also write the result as OUT/drift.json (for report --drift, or a "
                                              "pipeline stage).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare DATA with the train split RUN_DIR's model learned from, column by column (PSI, Jensen-Shannon
    distance, missing rate, out-of-range share). Exit 1 if a column drifted: a CI gate for the next batch."""
    with guard(ctx), staging() as staged:
        from .. import drift as stage

        result = stage.run(stage.DriftOptions(staged.read(run_loc), staged.read(data_loc), psi, missing,
                                              out_of_range, None if out_loc is None else staged.write(out_loc)))

        def human() -> None:
            show_drift(result.doc, result.doc["data"])

        staged.commit()
        render(result, as_json, human)
        if result.drifted:
            raise GateFailed(drifted(result.drifted))


def drifted(columns: list[str]) -> str:
    return f"{len(columns)} column(s) drifted: {', '.join(columns)}"


def show_drift(doc: dict[str, Any], data: str) -> None:
    """A drift comparison (`drift`, or the section of `evaluate` / `predict --drift`) as a table."""
    rows = [[name, c["kind"], f"{c['psi']:.3f}", f"{c['js']:.3f}",
             f"{c['missing']['reference']:.1%} -> {c['missing']['data']:.1%}",
             f"{c['out_of_range']:.1%}" if "out_of_range" in c else "",
             "DRIFT: " + "; ".join(c["why"]) if c["drift"] else "ok"] for name, c in doc["columns"].items()]
    out.print(table(f"{escape(data)} ({doc['rows']} rows) vs the train split ({doc['reference_rows']} rows)",
                    ["column", "kind", "psi", "js", "missing", "out of range", "verdict"], rows))


@app.command()
def explain(
    ctx: typer.Context,
    run_dir: RunDirArg,
    data: Annotated[Path | None, typer.Option(
        help="Rows to explain: a CSV/Parquet file with the target, or a prep folder (default: the run's).",
        show_default=False)] = None,
    split: Annotated[Split, typer.Option(help="The prep folder's split.")] = Split.val,
    rows: Annotated[int, typer.Option(help="A seeded sample of this many rows (the cost grows with it).",
                                      min=2)] = 300,
    row_ids: Annotated[list[str] | None, typer.Option(
        "--row-ids", help="Explain these rows instead: values of the id column (or row numbers); repeatable.",
        show_default=False)] = None,
    repeats: Annotated[int, typer.Option(help="Shuffles per column for permutation importance.", min=1,
                                         max=1000)] = 5,
    steps: Annotated[int, typer.Option(help="Integrated-gradients steps (more: a smaller completeness error).",
                                       min=4, max=4096)] = 64,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", "-o", help="Write into this folder instead of RUN_DIR/explain (a pipeline stage's own output).",
        show_default=False)] = None,
    unsafe: UnsafeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Which raw columns the model relies on: permutation importance and integrated gradients.

    Writes RUN_DIR/explain/ (or OUT/): importance.json, importance.png, attributions.csv."""
    with guard(ctx):
        from .. import explain as stage

        result = stage.run(stage.ExplainOptions(run_dir, data, split.value, rows, tuple(row_ids or ()), repeats,
                                                steps, unsafe, out_dir))

        def human() -> None:
            doc = result.doc
            score = doc["score"]
            head = ["column", "kind", f"{score} drop" if score != "rmse" else "RMSE rise", "±",
                    "log loss rise" if score != "rmse" else ""]
            body = [[r["column"], r["kind"], f"{r['importance']:.4f}", f"{r['std']:.4f}",
                     f"{r['loss_increase']:.4f}" if score != "rmse" else ""] for r in doc["importance"]]
            out.print(table(f"permutation importance ({doc['rows']} rows of the {doc['source']}, "
                            f"{doc['repeats']} repeats)", head, body))
            ig = doc["integrated_gradients"]
            out.print(f"integrated gradients ({ig['steps']} steps): completeness error max "
                      f"{ig['completeness_abs_max']:.2e} (relative: median {ig['completeness_rel_median']:.1e}, "
                      f"max {ig['completeness_rel_max']:.1e}); "
                      f"per-row attributions in {escape(str(result.out / artifacts.ATTRIBUTIONS))}", highlight=False)

        render(result, as_json, human)


@app.command()
def compare(
    ctx: typer.Context,
    runs: Annotated[list[Path], typer.Argument(help="Two or more evaluated run folders (or `evaluate --out` "
                                               "folders); the first is the baseline.",
                                               show_default=False)],
    fail_on: Annotated[list[str] | None, typer.Option(
        "--fail-on-regression", metavar="METRIC:TOLERANCE",
        help="Exit 1 if a run is worse than the first by more than TOLERANCE, e.g. accuracy:0.01 (repeatable).",
    )] = None,
    fmt: Annotated[CompareFormat, typer.Option("--format", "-f", help="How to print the comparison.")] = (
        CompareFormat.table),
    as_json: JsonOpt = False,
) -> None:
    """Metrics side by side with deltas against the first run, config differences and data fingerprints."""
    with guard(ctx):
        from .. import compare as stage

        result = stage.run(stage.CompareOptions(tuple(runs), tuple(fail_on or ())))
        doc = result.doc
        if as_json or fmt is CompareFormat.json:
            emit_json(doc)
        elif fmt is CompareFormat.markdown:
            out.file.write(stage.markdown(doc))
        else:
            names = [Path(r).name for r in doc["runs"]]
            out.print(table("metrics (delta against the first run)", ["metric", *names], stage.rows(doc)))
            if doc["config_diff"]:
                out.print(table("config differences", ["key", *names],
                                [[k, *map(str, v)] for k, v in doc["config_diff"].items()]))
        warn(doc["warnings"])
        if result.regressions:
            raise GateFailed("regression: " + ", ".join(
                f"{Path(r['run']).name} {r['metric']} {r['delta']:+.4f} (tolerance {r['tolerance']})"
                for r in result.regressions))


@app.command()
def report(
    ctx: typer.Context,
    run_dir: RunDirArg,
    out_path: Annotated[Path | None, typer.Option(
        "--out", "-o", help="The HTML file to write (default: RUN_DIR/report.html).")] = None,
    evaluation: Annotated[Path | None, typer.Option(
        "--evaluation", help="The metrics from this `evaluate --out` folder (default: RUN_DIR).",
        show_default=False)] = None,
    explanation: Annotated[Path | None, typer.Option(
        "--explanation", help="The explanation from this `explain --out` folder (default: RUN_DIR/explain).",
        show_default=False)] = None,
    drift_dir: Annotated[Path | None, typer.Option(
        "--drift", help="The drift check from this `drift --out` folder (default: RUN_DIR's drift.json, if any).",
        show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """One self-contained HTML page: data report, config, training, metrics, plots, explanation, drift, gates,
    manifest."""
    with guard(ctx):
        from .. import report as stage

        result = stage.run(stage.ReportOptions(run_dir, out_path, evaluation, explanation, drift_dir))
        render(result, as_json, lambda: out.print(f"wrote {escape(str(result.out))}", highlight=False))
