"""`bigmodel experiment`: the whole lifecycle in one process — preprocess, train, evaluate, export (when a format is
asked), report — with one TensorFlow start-up, writing the folders the single stages write (DIR/prep, DIR/run,
DIR/export), so every later command works on them.

The one verb that composes the others: each stage is called through its own contract (`run(options, on_event)`),
with the config resolved as the stage would resolve it from the command line (config.resolve).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as configs
from . import evaluate, export, preprocess, report, train
from .config import Config

PREP, RUN, EXPORT = "prep", "run", "export"  # the folders under DIR


@dataclass(frozen=True)
class ExperimentOptions:
    """What `experiment` is asked to do."""

    data: Path  # a CSV or Parquet file
    out: Path  # DIR: DIR/prep, DIR/run, DIR/export are written
    config: Config  # resolved (config.resolve), as `preprocess` takes it; train reads it back from DIR/prep
    test: Path | None = None  # evaluate on this file instead of the test split
    format: str | None = None  # export in this format (export.FORMATS); None: no export
    gates: tuple[str, ...] = ()  # added to evaluate.gates


@dataclass(frozen=True)
class ExperimentResult:
    """Each stage's result (export: None when no format was asked)."""

    out: Path
    preprocess: preprocess.PreprocessResult
    train: train.TrainResult
    evaluate: evaluate.EvaluateResult
    export: export.ExportResult | None
    report: report.ReportResult

    @property
    def failed(self) -> list[str]:
        """The checks that failed (exit 1): gates, and an export whose parity check failed."""
        gates = [f"gate {g['gate']} (got {g['value']})" for g in self.evaluate.failed_gates]
        parity = [f"export: {self.export.mismatch}"] if self.export is not None and not self.export.passed else []
        return gates + parity

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "preprocess": self.preprocess.to_dict(), "train": self.train.to_dict(),
                "evaluate": self.evaluate.to_dict(), "export": None if self.export is None else self.export.to_dict(),
                "report": self.report.to_dict(), "failed": self.failed}


OnEvent = Callable[..., None]  # ("stage", name) before each stage; ("epoch", epoch, total, logs) while training


def run(options: ExperimentOptions, on_event: OnEvent | None = None) -> ExperimentResult:
    """The stages in order; each stage's errors stop the experiment as they stop the stage (the folders written
    before stay). A failed gate or parity check does not stop it: the result lists them (exit 1)."""

    def stage(name: str) -> None:
        if on_event is not None:
            on_event("stage", name)

    def epoch(e: int, total: int, logs: dict[str, float]) -> None:
        if on_event is not None:
            on_event("epoch", e, total, logs)

    out = Path(options.out)
    prep, run_dir = out / PREP, out / RUN
    stage("preprocess")
    prepared = preprocess.run(preprocess.PreprocessOptions(options.data, prep, options.config))
    stage("train")  # the prep folder's config, as `train DIR/prep` reads it: the same, with what preprocess applied
    trained = train.run(train.TrainOptions(prep, run_dir, configs.resolve(None, (), prep)), epoch)
    stage("evaluate")
    evaluated = evaluate.run(evaluate.EvaluateOptions(run_dir, options.test, gates=options.gates))
    exported = None
    if options.format is not None:
        stage("export")
        exported = export.run(export.ExportOptions(run_dir, out / EXPORT, options.format))
    stage("report")
    reported = report.run(report.ReportOptions(run_dir))
    return ExperimentResult(out, prepared, trained, evaluated, exported, reported)
