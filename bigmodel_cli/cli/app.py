"""The face's frame: the Typer app, the global options, the one guard that turns exceptions into exit codes, the
options several commands share (defined once), the choices `--help` and completion list, and the renderers'
helpers. Exit codes: 0 ok, 1 a check failed, 2 bad input or usage, 3 internal error (a bug), 130 interrupted.

Nothing here imports pandas or TensorFlow: the commands import their stage inside, so `bigmodel --help` stays fast.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from .. import __version__, interrupts, remote
from ..console import emit_json, err, out
from ..errors import BigModelError, GateFailed, Terminated

app = typer.Typer(
    name="bigmodel",
    help="From a table of data to a trained, evaluated, exported Keras model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


@dataclass(frozen=True)
class Options:
    """The global options, handed to every command through Typer's context."""

    debug: bool = False
    verbose: bool = False


def verbose(ctx: typer.Context) -> bool:
    return bool(ctx.obj and ctx.obj.verbose)


# Choices, as Enums so that --help and shell completion list them (tests/test_house.py checks each against the
# stage's own tuple: export.FORMATS, serve.RUNTIMES, the config's train.strategy).
class Split(StrEnum):
    train = "train"
    val = "val"
    test = "test"


class ExportFormat(StrEnum):
    savedmodel = "savedmodel"
    keras = "keras"
    onnx = "onnx"
    tflite = "tflite"


class Runtime(StrEnum):
    tf = "tf"
    onnx = "onnx"
    tflite = "tflite"


class Strategy(StrEnum):
    default = "default"
    mirrored = "mirrored"
    multi_worker = "multi_worker"


class CompareFormat(StrEnum):
    table = "table"
    markdown = "markdown"
    json = "json"


def value(choice: Enum | None) -> str | None:
    """An Enum option's string (None when not given)."""
    return None if choice is None else str(choice.value)


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
DriftOpt = Annotated[bool, typer.Option(
    "--drift", help="Also compare the rows with the train split, as `bigmodel drift` does (a drift section in the "
    "result); exit 1 if a column drifted, after everything is written.")]
ResumeOpt = Annotated[bool, typer.Option(
    "--resume", help="Continue an interrupted run from RUN_DIR/checkpoint (its last complete epoch, or round).")]
TrackOpt = Annotated[bool, typer.Option(
    "--track", help="Log the run to an MLflow tracking server (tracking.uri or MLFLOW_TRACKING_URI); same as --set "
                    "tracking.mlflow=true (a config's `required` stays required: a server that is down is then an "
                    "error, else a warning).")]
PrepDirArg = Annotated[Path, typer.Argument(help="A prep folder written by `bigmodel preprocess`.",
                                            show_default=False)]
RunOutOpt = Annotated[Path, typer.Option("--out", "-o", help="The run folder to write.", show_default=False)]
RunDirArg = Annotated[Path, typer.Argument(help="A run folder written by `bigmodel train`.", show_default=False)]
DataArg = Annotated[Path, typer.Argument(help="CSV (.csv, .csv.gz) or Parquet file.", show_default=False)]
# the stages of the lifecycle also take URLs (docs/remote.md): str, as a Path would fold s3://b into s3:/b
_URL = " A URL works too: s3://, gs://, az:// (the cloud extra), https:// (reading)."
DataLoc = Annotated[str, typer.Argument(metavar="DATA", help="CSV (.csv, .csv.gz) or Parquet file." + _URL,
                                        show_default=False)]
PrepLoc = Annotated[str, typer.Argument(metavar="PREP_DIR", help="A prep folder written by `bigmodel preprocess`."
                                        + _URL, show_default=False)]
RunLoc = Annotated[str, typer.Argument(metavar="RUN_DIR", help="A run folder written by `bigmodel train`." + _URL,
                                       show_default=False)]


def staging() -> remote.Staging:
    """A command's URL locations as local files: its outputs uploaded on success or a failed gate (whole)."""
    return remote.Staging(complete=(GateFailed,))


def out_option(what: str) -> Any:
    """The --out option of a stage whose output may be a URL (written locally, then uploaded)."""
    return typer.Option("--out", "-o", metavar="PATH|URL", help=f"{what} A URL (s3://, gs://, az://) is written "
                        "locally, then uploaded aside and copied into place.", show_default=False)


def _version(show: bool) -> None:
    if show:
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
    restore = interrupts.install()
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
        restore()


def resolve(config: Path | None, sets: list[str] | None, prep: Path | None = None,
            fixed: dict[str, Any] | None = None, track: bool = False) -> Any:
    """The config from --config and --set (over PREP's, where the command reads a prep folder), plus options that
    stand for config keys (`--target` for data.target): `config.resolve`, the one resolver of every verb.
    `track` (--track): tracking.mlflow on, unless the config has it on already (`required` stays required)."""
    from .. import config as configs

    # an option's text is taken as written (as a JSON string, which YAML reads back whole): `--target on` names
    # the column 'on', not YAML's true
    overrides = [*(sets or []), *(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in (fixed or {}).items()
                                  if v is not None)]
    cfg = configs.resolve(config, overrides, prep)
    if track and cfg.tracking.mlflow is False:
        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"mlflow": True})})
    return cfg


def render(result: Any, as_json: bool, human: Callable[[], None]) -> None:
    """The result on stdout: one JSON document with --json, else `human()`'s tables."""
    if as_json:
        emit_json(remote.public(result.to_dict()))
    else:
        human()


class EpochProgress:
    """Per-epoch (or per-round) progress on stderr: a live bar on a terminal, a line every few epochs elsewhere."""

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


class RowProgress:
    """predict's, evaluate's and export's progress on stderr, on large files only (more rows than one model call
    takes, folders.SLICE_ROWS; a small file prints nothing): rows done and rows/s, a live line on a terminal, else
    a line at most every EVERY seconds and the last one; export's steps as lines."""

    EVERY = 5.0

    def __init__(self, verb: str) -> None:
        import time

        self.verb, self.clock = verb, time.monotonic
        self.t0 = self.shown = self.clock()
        self.status: Any = None
        self.last, self.printed = "", True

    def __call__(self, what: str, *args: Any) -> None:
        from ..folders import SLICE_ROWS

        if what == "step":
            text, rows = args
            if rows > SLICE_ROWS:
                self._line(f"{self.verb}: {text} ({rows:,} rows)", force=True)
            return
        done, total = args
        if (total or done) <= SLICE_ROWS and not self.last:
            return
        rate = done / max(self.clock() - self.t0, 1e-9)
        of = f" of {total:,}" if total else ""
        self._line(f"{self.verb}: {done:,}{of} rows, {rate:,.0f} rows/s", force=total is not None and done >= total)

    def _line(self, text: str, force: bool = False) -> None:
        self.last, self.printed = text, False
        if err.is_terminal:
            if self.status is None:
                self.status = err.status(text)
                self.status.start()
            self.status.update(text)
        elif force or self.clock() - self.shown >= self.EVERY:
            err.print(text, soft_wrap=True, highlight=False)
            self.shown, self.printed = self.clock(), True

    def close(self) -> None:
        if self.status is not None:
            self.status.stop()
        if not self.printed:  # the final count
            err.print(self.last, soft_wrap=True, highlight=False)
            self.printed = True


def slow_path(why: str | None) -> None:
    """The one-line note when a run's portable graph could not be used and TensorFlow was started instead."""
    if why:
        err.print(f"note: using TensorFlow (a slower start): {escape(why)}", soft_wrap=True, highlight=False)


def warn(warnings: Iterable[str]) -> None:
    """A stage's warnings on stderr, one line each."""
    for w in warnings:
        err.print(f"warning: {escape(w)}", soft_wrap=True)


def notes(unseen: dict[str, int], ignored: list[str]) -> None:
    """evaluate's and predict's notes on stderr: values outside the training vocabulary, extra columns."""
    for col, n in unseen.items():
        err.print(f"note: {n} value(s) of '{escape(col)}' were not seen in training (out-of-vocabulary)")
    if ignored:
        err.print(f"warning: ignored extra column(s): {escape(', '.join(ignored))}")
