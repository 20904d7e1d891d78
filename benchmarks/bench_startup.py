"""Start-up and the lifecycle's cost in processes.

1. `bigmodel --help` and `--version` against `python -c "import tensorflow"` (best of 5 each).
2. The whole lifecycle on penguins (defaults, export to ONNX): the five commands as five processes (preprocess,
   train, evaluate, export, report: five TensorFlow start-ups but one) against one `bigmodel experiment`, in
   alternating pairs; medians of `--repeats` (5).

    python benchmarks/bench_startup.py [--repeats 5] [--skip-lifecycle]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import best_of, save, show  # noqa: E402

BIGMODEL = [sys.executable, "-m", "bigmodel_cli"]
PENGUINS = Path(__file__).resolve().parents[1] / "sample_data" / "penguins.csv"


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def stages(work: Path) -> list[list[str]]:
    return [[*BIGMODEL, "preprocess", str(PENGUINS), "--target", "species", "--out", str(work / "prep")],
            [*BIGMODEL, "train", str(work / "prep"), "--out", str(work / "run")],
            [*BIGMODEL, "evaluate", str(work / "run")],
            [*BIGMODEL, "export", str(work / "run"), "--format", "onnx", "--out", str(work / "export")],
            [*BIGMODEL, "report", str(work / "run")]]


def experiment(work: Path) -> list[list[str]]:
    return [[*BIGMODEL, "experiment", str(PENGUINS), "--target", "species", "--out", str(work), "--format", "onnx"]]


def timed(commands: list[list[str]]) -> float:
    t0 = time.perf_counter()
    for cmd in commands:
        run(cmd)
    return time.perf_counter() - t0


def lifecycle(repeats: int) -> dict[str, float]:
    """Medians of alternating pairs (five processes, then one experiment), each in a fresh folder."""
    times: dict[str, list[float]] = {"five commands": [], "bigmodel experiment": []}
    for _ in range(repeats):
        for name, make in (("five commands", stages), ("bigmodel experiment", experiment)):
            work = Path(tempfile.mkdtemp(prefix="bench_lifecycle_"))
            try:
                times[name].append(timed(make(work)))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-lifecycle", action="store_true")
    args = ap.parse_args()
    cases = {"bigmodel --help": [*BIGMODEL, "--help"], "bigmodel --version": [*BIGMODEL, "--version"],
             "python -c 'import tensorflow'": [sys.executable, "-c", "import tensorflow"]}
    times = {name: best_of(lambda c=cmd: run(c), repeat=5) for name, cmd in cases.items()}
    tf_time = times["python -c 'import tensorflow'"]
    show("start-up (best of 5, seconds)", ["command", "seconds", "vs import tensorflow"],
         [[k, v, v / tf_time] for k, v in times.items()])
    doc = {"seconds": {k: round(v, 3) for k, v in times.items()}, "target_seconds": 0.5}
    if not args.skip_lifecycle:
        life = lifecycle(args.repeats)
        ratio = life["bigmodel experiment"] / life["five commands"]
        show(f"the lifecycle on penguins, defaults, ONNX export (median of {args.repeats}, seconds)",
             ["how", "seconds", "vs five commands"], [[k, v, v / life["five commands"]] for k, v in life.items()])
        doc["lifecycle"] = {"repeats": args.repeats, "seconds": {k: round(v, 2) for k, v in life.items()},
                            "experiment_vs_five_commands": round(ratio, 3), "target_ratio": 0.5}
    print(f"wrote {save('startup', doc)}")


if __name__ == "__main__":
    main()
