"""The `bigmodel` command line: parse, call one stage's run(), render the result.

Heavy imports (pandas, TensorFlow) happen inside the commands, so `bigmodel --help` stays fast.
Exit codes: 0 ok, 1 a gate failed, 2 bad input or usage, 3 internal error (a bug), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from . import __version__, artifacts
from .console import emit_json, err, out, table
from .errors import BigModelError, GateFailed, Terminated

app = typer.Typer(
    name="bigmodel",
    help="From a table of data to a trained, evaluated, exported Keras model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    add_completion=False,
)


@dataclass(frozen=True)
class Options:
    """The global options, handed to every command through Typer's context."""

    debug: bool = False
    verbose: bool = False


def _verbose(ctx: typer.Context) -> bool:
    return bool(ctx.obj and ctx.obj.verbose)


# Options shared by several commands, defined once.
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", exists=True, dir_okay=False, help="YAML config file (every key has a default)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a config key, e.g. train.epochs=20 (repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")]
UnsafeOpt = Annotated[bool, typer.Option(
    "--unsafe-load", help="Load a model that contains code (e.g. a Lambda layer). Only for files you trust.")]
PrepDirArg = Annotated[Path, typer.Argument(help="A prep folder written by `bigmodel preprocess`.",
                                            show_default=False)]
RunOutOpt = Annotated[Path, typer.Option("--out", "-o", help="The run folder to write.", show_default=False)]
RunDirArg = Annotated[Path, typer.Argument(help="A run folder written by `bigmodel train`.", show_default=False)]


def _version(value: bool) -> None:
    if value:
        out.print(f"bigmodel {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what each stage does (stderr).")] = False,
) -> None:
    """From a table of data to a trained, evaluated, exported Keras model.

    Stages chain through folders: preprocess DATA -> PREP_DIR, train PREP_DIR -> RUN_DIR,
    evaluate / export / predict RUN_DIR.
    """
    ctx.obj = Options(debug=debug, verbose=verbose)
    if verbose:
        from rich.logging import RichHandler

        logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=err)])


@contextlib.contextmanager
def guard(ctx: typer.Context) -> Iterator[None]:
    """The one place where exceptions become exit codes."""
    debug = bool(ctx.obj and ctx.obj.debug)
    previous = _on_sigterm()
    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except BigModelError as e:
        if debug:
            err.print_exception()
        err.print(f"[red]error:[/red] {escape(' '.join(str(e).split()))}", soft_wrap=True)  # always one line
        raise typer.Exit(e.exit_code) from None
    except GateFailed as e:
        err.print(f"[red]failed:[/red] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(GateFailed.exit_code) from None
    except KeyboardInterrupt as e:
        code = e.exit_code if isinstance(e, Terminated) else 130
        name = "SIGTERM" if code == 143 else "SIGINT"
        err.print(f"interrupted ({name}); finished artifacts are kept", soft_wrap=True)
        raise typer.Exit(code) from None
    except Exception:  # a bug: keep the traceback, exit 3 so CI can tell it from bad input
        err.print_exception()
        err.print("[red]internal error[/red]: this is a bug in bigmodel; please report it with the traceback above.")
        raise typer.Exit(3) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _on_sigterm() -> Any:
    """Turn SIGTERM into `Terminated` (main thread only); return the previous handler."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def _one_of(value: str | None, allowed: tuple[str, ...], flag: str) -> None:
    if value is not None and value not in allowed:
        raise BigModelError(f"{flag} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got '{value}'")


def _config(config: Path | None, sets: list[str] | None, **fixed: Any) -> Any:
    from .config import load_config

    # an option's text is taken as written (as a JSON string, which YAML reads back whole): `--target on` names
    # the column 'on', not YAML's true
    overrides = [*(sets or []), *(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in fixed.items()
                                  if v is not None)]
    return load_config(config, overrides)


def _render(result: Any, as_json: bool, human: Any) -> None:
    if as_json:
        emit_json(result.to_dict())
    else:
        human()


@app.command()
def init(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="CSV (.csv, .csv.gz) or Parquet file.", show_default=False)],
    target: Annotated[str, typer.Option("--target", "-t", help="The column to predict.", show_default=False)],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Where to write the config.")] = Path("bigmodel.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing config.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a commented starter config inferred from DATA (column kinds, task, defaults)."""
    with guard(ctx):
        from . import init as stage
        from .config import Config

        result = stage.run(data, target, out_path, Config(), force=force)
        _render(result, as_json, lambda: out.print(
            table(f"{result.out}: task {result.task}", ["column", "kind"], [[c, k] for c, k in result.kinds.items()])))


@app.command()
def preprocess(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="CSV (.csv, .csv.gz) or Parquet file.", show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The prep folder to write.", show_default=False)],
    target: Annotated[
        str | None, typer.Option("--target", "-t", help="The column to predict (or data.target).")
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Clean DATA, split it train/val/test and fit the feature preprocessing on the train split."""
    with guard(ctx):
        from . import preprocess as stage

        cfg = _config(config, sets, **{"data.target": target})
        result = stage.run(data, out_dir, cfg)
        _render(result, as_json, lambda: _show_report(result))


def _show_report(result: Any) -> None:
    r = result.report
    rows = [[col, c["kind"], c["missing"], "" if c["unique"] is None else c["unique"],
             "" if c["imputed_with"] is None else c["imputed_with"]]
            for col, c in r["columns"].items()]
    out.print(table(f"{result.out}: {result.schema.task} on '{result.schema.target}'",
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


class _EpochProgress:
    """Per-epoch progress on stderr: a live bar on a terminal, a line every few epochs elsewhere."""

    def __init__(self, unit: str = "epoch") -> None:
        self.progress: Any = None
        self.task: Any = None
        self.unit = unit

    def __call__(self, epoch: int, total: int, logs: dict[str, float]) -> None:
        shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items())
        if err.is_terminal:
            if self.progress is None:
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

                self.progress = Progress(TextColumn(self.unit), MofNCompleteColumn(), BarColumn(),
                                         TextColumn("{task.description}"), console=err, transient=True)
                self.progress.start()
                self.task = self.progress.add_task("", total=total)
            self.progress.update(self.task, completed=epoch, total=total, description=shown)
        elif epoch == 1 or epoch % max(1, total // 10) == 0:
            err.print(f"{self.unit} {epoch}/{total}  {shown}", soft_wrap=True, highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@app.command()
def train(
    ctx: typer.Context,
    prep_dir: PrepDirArg,
    out_dir: RunOutOpt,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run from RUN_DIR/checkpoint (its last complete epoch).")] = False,
    strategy: Annotated[str | None, typer.Option(
        "--strategy", help="default | mirrored (all GPUs of this host) | multi_worker (a cluster, by TF_CONFIG); "
                     "same as --set train.strategy=...")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the configured keras.Sequential and train it on PREP_DIR's train split.

    RUN_DIR's previous model is replaced only when the new one is complete. Every epoch is checkpointed,
    so an interrupted run (Ctrl-C, SIGTERM, a kill, a crash) continues with --resume.
    """
    with guard(ctx):
        from . import train as stage
        from .folders import resolve_config

        cfg = resolve_config(prep_dir, config, [*(sets or []), *([f"train.strategy={strategy}"] if strategy
                                                                        else [])])
        progress = _EpochProgress()
        try:
            result = stage.run(prep_dir, out_dir, cfg, on_epoch=progress, resume=resume)
        finally:
            progress.close()

        def human() -> None:
            rows = [["epochs run", result.epochs_run], ["best epoch", result.best_epoch],
                    *[[k, v] for k, v in result.final.items()], ["seconds", round(result.seconds, 1)]]
            where = result.out if result.out is not None else "(a worker: the chief writes the run folder)"
            out.print(table(f"trained {where}", ["", "value"], rows))

        _render(result, as_json, human)


@app.command()
def evaluate(
    ctx: typer.Context,
    run_dir: RunDirArg,
    data: Annotated[Path | None, typer.Option(
        "--data", "-d", help="A prep folder or a raw CSV/Parquet file (default: the run's own prep folder).")] = None,
    split: Annotated[str | None, typer.Option(
        "--split", help="train | val | test, for a prep folder (default: evaluate.split, test).")] = None,
    gate: Annotated[list[str] | None, typer.Option(
        "--gate", "-g", metavar="METRIC>=VALUE", help="Fail (exit 1) unless this holds, e.g. 'accuracy>=0.9' "
        "(repeatable; adds to evaluate.gates).")] = None,
    bootstrap: Annotated[int | None, typer.Option(
        "--bootstrap", min=0, max=100_000, metavar="N",
        help="Add 95% bootstrap intervals from N resamples (e.g. 1000).")] = None,
    plots: Annotated[bool | None, typer.Option(
        "--plots/--no-plots", help="Write PNG plots to RUN_DIR/eval/ (default: evaluate.plots).")] = None,
    unsafe: UnsafeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Metrics of RUN_DIR's model; writes RUN_DIR/metrics.json. Exit 1 if a gate fails."""
    with guard(ctx):
        from . import evaluate as stage

        _one_of(split, ("train", "val", "test"), "--split")
        result = stage.run(run_dir, data, split, unsafe, gates=gate, bootstrap=bootstrap, plots=plots)
        _render(result, as_json, lambda: _show_metrics(result.doc))
        if result.failed_gates:
            raise GateFailed(f"{len(result.failed_gates)} gate(s) failed: "
                             + ", ".join(f"{g['gate']} (got {_value(g['value'])})" for g in result.failed_gates))


def _value(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _interval(iv: list[float] | None) -> str:
    return "n/a" if iv is None else f"[{iv[0]:.4f}, {iv[1]:.4f}]"


def _show_metrics(doc: dict[str, Any]) -> None:
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
                        [[g["gate"], g["threshold"], _value(g["value"]), "pass" if g["passed"] else "FAIL"]
                         for g in doc["gates"]]))
    for col, n in doc.get("unseen_categories", {}).items():
        err.print(f"note: {n} value(s) of '{escape(col)}' were not seen in training (out-of-vocabulary)")
    if doc.get("ignored_columns"):
        err.print(f"warning: ignored extra column(s): {escape(', '.join(doc['ignored_columns']))}")


@app.command()
def export(
    ctx: typer.Context,
    run_dir: RunDirArg,
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The export folder to write.", show_default=False)],
    fmt: Annotated[str | None, typer.Option(
        "--format", "-f", help="savedmodel (SavedModel + .keras) | keras | onnx (model.onnx + .keras) | tflite "
                               "(model.tflite + .keras) (default: export.format).")] = None,
    unsafe: UnsafeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export RUN_DIR's model with its preprocessing inside; checks parity with `bigmodel predict`."""
    with guard(ctx):
        from . import export as stage

        _one_of(fmt, stage.FORMATS, "--format")
        result = stage.run(run_dir, out_dir, fmt, unsafe)

        def human() -> None:
            rows = [[f, ""] for f in result.files] + [
                [f"parity {k} (max diff, {result.rows_checked} rows)", f"{v:.2e}"]
                for k, v in result.max_abs_diff.items()]
            out.print(table(f"exported {result.out}" if result.passed else f"not exported: {result.out}",
                            ["file", ""], rows))

        _render(result, as_json, human)
        if not result.passed:
            raise GateFailed(str(result.mismatch))


@app.command()
def predict(
    ctx: typer.Context,
    run_dir: RunDirArg,
    data: Annotated[Path, typer.Argument(help="CSV (.csv, .csv.gz) or Parquet file.", show_default=False)],
    out_path: Annotated[Path, typer.Option(
        "--out", "-o", help="Predictions file: .csv, .csv.gz or .parquet.", show_default=False)],
    unsafe: UnsafeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Batch predictions for DATA: id columns, class probabilities and label (or the value)."""
    with guard(ctx):
        from . import predict as stage

        result = stage.run(run_dir, data, out_path, unsafe)

        def human() -> None:
            out.print(f"wrote {result.rows} predictions to {escape(str(result.out))}", highlight=False)
            for col, n in result.unseen_categories.items():
                err.print(f"note: {n} value(s) of '{escape(col)}' were not seen in training (out-of-vocabulary)")
            if result.ignored_columns:
                err.print(f"warning: ignored extra column(s): {escape(', '.join(result.ignored_columns))}")

        _render(result, as_json, human)


@app.command()
def explain(
    ctx: typer.Context,
    run_dir: RunDirArg,
    data: Annotated[Path | None, typer.Option(
        help="Rows to explain: a CSV/Parquet file with the target, or a prep folder (default: the run's).",
        show_default=False)] = None,
    split: Annotated[str, typer.Option(help="The prep folder's split: train | val | test.")] = "val",
    rows: Annotated[int, typer.Option(help="A seeded sample of this many rows (the cost grows with it).",
                                      min=2)] = 300,
    row_ids: Annotated[list[str] | None, typer.Option(
        "--row-ids", help="Explain these rows instead: values of the id column (or row numbers); repeatable.",
        show_default=False)] = None,
    repeats: Annotated[int, typer.Option(help="Shuffles per column for permutation importance.", min=1,
                                         max=1000)] = 5,
    steps: Annotated[int, typer.Option(help="Integrated-gradients steps (more: a smaller completeness error).",
                                       min=4, max=4096)] = 64,
    unsafe: UnsafeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Which raw columns the model relies on: permutation importance and integrated gradients.

    Writes RUN_DIR/explain/: importance.json, importance.png, attributions.csv."""
    with guard(ctx):
        from . import explain as stage

        _one_of(split, ("train", "val", "test"), "--split")
        result = stage.run(run_dir, data, split, rows, row_ids, repeats, steps, unsafe)

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

        _render(result, as_json, human)


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
        from . import tune as stage

        def trial_line(t: dict[str, Any]) -> None:
            value = "" if t["value"] is None else f" {t['value']:.4g}"
            best = "" if t["best"] is None else f"; best {t['best']['value']:.4g} (trial {t['best']['number']})"
            params = ", ".join(f"{k.rsplit('.', 1)[-1]}={v:.3g}" if isinstance(v, float) else
                               f"{k.rsplit('.', 1)[-1]}={v}" for k, v in t["params"].items())
            err.print(f"trial {t['number']} {t['state'].lower()}{value} [{t['done']}/{t['of']}] ({params}){best}",
                      highlight=False)

        result = stage.run(prep_dir, out_dir, config, sets or [], trials, timeout, storage, trial_line, workers)

        def human() -> None:
            rows: list[list[Any]] = [["best value", "" if result.best_value is None else f"{result.best_value:.5g}"],
                    ["best trial", result.best_trial], *[[k, v] for k, v in result.best_params.items()],
                    *[[f"trials {k}", v] for k, v in result.counts.items()], ["seconds", round(result.seconds, 1)]]
            out.print(table(f"tuned {result.metric} ({result.direction}) in {result.out}", ["", "value"], rows))

        _render(result, as_json, human)


@app.command("serve")
def serve_command(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(
        help="A run folder (bigmodel train) or export folder (bigmodel export).", show_default=False)],
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs --token-file "
                                           "or --insecure-no-auth.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (TF Serving's REST port by default).", min=0,
                                      max=65535)] = 8501,
    model_name: Annotated[str, typer.Option(help="NAME in /v1/models/NAME:predict.")] = "model",
    runtime: Annotated[str, typer.Option(help="tf (run or export folder) | onnx | tflite (an export folder with "
                                              "model.onnx / model.tflite: no TensorFlow in the request loop).")] = "tf",
    token_file: Annotated[Path | None, typer.Option(
        help="A file holding a bearer token: every request must send 'Authorization: Bearer TOKEN'.",
        show_default=False)] = None,
    insecure_no_auth: Annotated[bool, typer.Option(
        "--insecure-no-auth", help="Serve a non-loopback --host without authentication.")] = False,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM), with --tls-key: HTTPS.",
                                                  show_default=False)] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).", show_default=False)] = None,
    max_body_mb: Annotated[float, typer.Option(help="Larger request bodies get 413.", min=0.001)] = 10.0,
    max_concurrency: Annotated[int, typer.Option(help="Predictions computed at once.", min=1)] = 4,
    max_queue: Annotated[int, typer.Option(
        help="Predict requests that may wait beyond --max-concurrency; more get 503 with Retry-After.", min=0)] = 60,
    client_timeout: Annotated[float, typer.Option(
        help="Seconds a client has to send a request's headers, and again its body (slower: closed, or 408).",
        min=0.1)] = 10.0,
    unsafe: UnsafeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Real-time predictions over HTTP, with TensorFlow Serving's REST API.

    POST /v1/models/NAME:predict, GET /v1/models/NAME, /healthz, /readyz. Stops on SIGTERM / Ctrl-C after the
    requests in flight. Under overload: a full queue answers 503 with Retry-After at once, slow clients are cut
    off after --client-timeout, and /healthz and /readyz skip the queue."""
    with guard(ctx):
        from . import serve as stage

        _one_of(runtime, stage.RUNTIMES, "--runtime")
        if (tls_cert is None) != (tls_key is None):
            raise BigModelError("--tls-cert and --tls-key go together")

        def event(what: str, detail: str) -> None:
            if what == "listening":
                err.print(f"listening on {escape(detail)} (runtime {runtime}); loading the model", highlight=False)
            else:
                err.print(f"ready: POST {escape(detail)}", highlight=False)

        result = stage.run(folder, host, port, model_name, runtime, token_file, insecure_no_auth,
                           (tls_cert, tls_key) if tls_cert and tls_key else None,
                           stage.Limits(int(max_body_mb * 2**20), max_concurrency, max_queue, client_timeout),
                           _verbose(ctx), unsafe, event)
        busy = f", {result.refused} refused as busy (503)" if result.refused else ""
        err.print(f"stopped ({result.stopped_by or 'shut down'}) after {result.predictions} prediction request(s)"
                  f"{busy}", highlight=False)
        if as_json:
            emit_json(result.to_dict())


class _RunByDefault(TyperGroup):
    """`bigmodel federated PREP_DIR ...` means `bigmodel federated run PREP_DIR ...`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


federated_app = typer.Typer(
    cls=_RunByDefault, no_args_is_help=True, rich_markup_mode="markdown",
    help="Federated training on Flower: FedAvg, SecAgg+, client-level DP; simulated or deployed.")
app.add_typer(federated_app, name="federated")


def _federate(prep_dir: Path, config: Path | None, overrides: list[str], as_json: bool, start: Any) -> None:
    """Resolve the config, run `start(cfg, progress)` with a progress line per round, print the run.
    A privacy budget that stopped training early still wrote a run: it is printed too, then exit 1."""
    from .folders import resolve_config

    cfg = resolve_config(prep_dir, config, overrides)
    with contextlib.closing(_EpochProgress("round")) as progress:
        result = start(cfg, progress)

    def human() -> None:
        rows = [["rounds", result.rounds], ["kept round", result.kept_round],
                *[[k, v] for k, v in result.final.items()], ["seconds", round(result.seconds, 1)]]
        out.print(table(f"federated {result.out}", ["", "value"], rows))

    _render(result, as_json, human)
    if result.budget_stop:
        raise GateFailed(result.budget_stop)


@federated_app.command("run")
def federated_run(
    ctx: typer.Context,
    prep_dir: PrepDirArg,
    out_dir: RunOutOpt,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run from RUN_DIR/checkpoint (its last complete round).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Simulate clients on one machine (Flower's simulation engine); writes a run folder.

    The `federated` config section sets clients, rounds (auto: train.epochs / local_epochs, ended by early
    stopping on the global model's validation loss, the best round kept), local_epochs, fraction_fit,
    min_clients, the partition (iid | dirichlet with alpha | by_column with column), secure_aggregation and
    privacy (client-level DP with max_epsilon: exit 1 when the budget stops training early). Every round is
    checkpointed, so an interrupted run continues with --resume. `bigmodel federated PREP_DIR` is this command.
    """
    def start(cfg: Any, progress: Any) -> Any:
        from .federated import simulation as stage

        return stage.simulate(prep_dir, out_dir, cfg, progress, _verbose(ctx), resume)

    with guard(ctx):
        _federate(prep_dir, config, sets or [], as_json, start)


AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="HOST:PORT to listen on; default: federated.address.")]
TlsCaOpt = Annotated[Path | None, typer.Option(
    "--tls-ca", exists=True, dir_okay=False, show_default=False,
    help="TLS: the CA certificate (PEM) that signed the server's certificate. Without TLS options: no TLS.")]


@federated_app.command()
def serve(
    ctx: typer.Context,
    prep_dir: PrepDirArg,
    out_dir: RunOutOpt,
    address: AddressOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_cert: Annotated[Path | None, typer.Option(
        "--tls-cert", exists=True, dir_okay=False, show_default=False,
        help="TLS: the server's certificate (PEM), naming the hosts clients connect to and 127.0.0.1.")] = None,
    tls_key: Annotated[Path | None, typer.Option(
        "--tls-key", exists=True, dir_okay=False, show_default=False,
        help="TLS: the server's private key (PEM).")] = None,
    authorized_keys: Annotated[Path | None, typer.Option(
        "--authorized-keys", exists=True, dir_okay=False, show_default=False,
        help="Admit only clients whose public key is in this file (one per line; `federated keygen`'s .pub "
             "files concatenated). Needs TLS.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run from RUN_DIR/checkpoint (its last complete round).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The server of a deployment: a Flower SuperLink at --address; waits for clients, runs the rounds, writes
    the run folder.

    It starts Flower's SuperLink on 127.0.0.1 and, at --address, a front that passes on only what clients send
    (Flower's fleet API; its control API stays local), with TLS by the --tls-* options; --authorized-keys admits
    only registered clients. It submits bigmodel's Flower App, waits for `federated.clients` clients
    (`bigmodel federated join`), evaluates the global model on PREP_DIR's validation split after every round
    and sends the config (model, local_epochs, batch size) to the clients. secure_aggregation and privacy work as
    in simulation.
    """
    def start(cfg: Any, progress: Any) -> Any:
        from .federated import deploy as stage

        return stage.serve(prep_dir, out_dir, cfg, address or cfg.federated.address, progress,
                           stage.server_tls(tls_ca, tls_cert, tls_key), _verbose(ctx), authorized_keys, resume)

    with guard(ctx):
        _federate(prep_dir, config, [*(sets or []), "federated.engine=deployment"], as_json, start)


@federated_app.command()
def join(
    ctx: typer.Context,
    prep_dir: PrepDirArg,
    data: Annotated[Path, typer.Option("--data", "-d", help="This client's own rows (CSV or Parquet), with the "
                                       "target column.", show_default=False)],
    server: Annotated[str, typer.Option("--server", help="The server's HOST:PORT.", show_default=False)],
    seed: Annotated[int, typer.Option("--seed", help="This client's seed.")] = 0,
    wait: Annotated[float, typer.Option("--wait", help="Give up after retrying to reach the server this many "
                                        "seconds.")] = 600.0,
    tls_ca: TlsCaOpt = None,
    key: Annotated[Path | None, typer.Option(
        "--key", exists=True, dir_okay=False, show_default=False,
        help="This client's private key (`federated keygen`'s .key), for a server with --authorized-keys.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """A client of a deployment: a Flower SuperNode; trains on its own rows, sends only model weights.

    DATA is encoded with PREP_DIR's fitted preprocessing (the prep folder the server uses); the client trains in
    each round the server asks for and returns when the server is done (exit 2 if the server is unreachable
    for a minute).
    """
    with guard(ctx):
        from .federated import deploy as stage

        result = stage.join(prep_dir, data, server, seed, wait, tls_ca, _verbose(ctx), key)
        _render(result, as_json, lambda: out.print(
            f"federation finished; trained in {result.rounds} round(s) on {result.rows} local rows", highlight=False))


@federated_app.command()
def keygen(
    ctx: typer.Context,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Write OUT.key (private) and OUT.pub (public).",
                                           show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Make a client's key pair: OUT.key stays with the client (`join --key`), OUT.pub goes to the server's
    --authorized-keys file. EC P-384 in OpenSSH format, as Flower's SuperNode authentication expects."""
    with guard(ctx):
        from .federated import auth as stage

        result = stage.keygen(out_path)
        _render(result, as_json, lambda: out.print(
            f"wrote {escape(str(result.private))} (keep it on the client) and {escape(str(result.public))} (add it "
            f"to the server's --authorized-keys)", highlight=False))


@app.command()
def compare(
    ctx: typer.Context,
    runs: Annotated[list[Path], typer.Argument(help="Two or more evaluated run folders; the first is the baseline.",
                                               show_default=False)],
    fail_on: Annotated[list[str] | None, typer.Option(
        "--fail-on-regression", metavar="METRIC:TOLERANCE",
        help="Exit 1 if a run is worse than the first by more than TOLERANCE, e.g. accuracy:0.01 (repeatable).",
    )] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table | markdown | json.")] = "table",
    as_json: JsonOpt = False,
) -> None:
    """Metrics side by side with deltas against the first run, config differences and data fingerprints."""
    with guard(ctx):
        from . import compare as stage

        _one_of(fmt, ("table", "markdown", "json"), "--format")
        result = stage.run(runs, fail_on)
        doc = result.doc
        if as_json or fmt == "json":
            emit_json(doc)
        elif fmt == "markdown":
            out.file.write(stage.markdown(doc))
        else:
            names = [Path(r).name for r in doc["runs"]]
            out.print(table("metrics (delta against the first run)", ["metric", *names], stage.rows(doc)))
            if doc["config_diff"]:
                out.print(table("config differences", ["key", *names],
                                [[k, *map(str, v)] for k, v in doc["config_diff"].items()]))
        for w in doc["warnings"]:
            err.print(f"warning: {escape(w)}", soft_wrap=True)
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
    as_json: JsonOpt = False,
) -> None:
    """One self-contained HTML page: data report, config, training, metrics, plots, gates, manifest."""
    with guard(ctx):
        from . import report as stage

        result = stage.run(run_dir, out_path)
        _render(result, as_json, lambda: out.print(f"wrote {escape(str(result.out))}", highlight=False))


def main() -> None:
    app()
