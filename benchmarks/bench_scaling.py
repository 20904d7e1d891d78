"""Scaling: preprocess + one training epoch at 10k, 100k and 1M rows; the exponent of a log-log fit of time
against rows (1.0 = linear).

    python benchmarks/bench_scaling.py [--rows 10000 100000 1000000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, show  # noqa: E402
from benchmarks.datasets import csv  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    args = ap.parse_args()
    from bigmodel_cli import preprocess, train
    from bigmodel_cli.config import load_config
    from bigmodel_cli.keras_env import import_keras

    import_keras()
    work = Path(tempfile.mkdtemp(prefix="bench_scaling_"))
    results = []
    for n in args.rows:
        data = csv(n)
        t0 = time.perf_counter()
        preprocess.run(preprocess.PreprocessOptions(data, work / f"prep{n}", load_config(None, ["data.target=label"])))
        t1 = time.perf_counter()
        cfg = load_config(work / f"prep{n}" / "config.yaml", ["train.epochs=1", "train.early_stopping.enabled=false"])
        train.run(train.TrainOptions(work / f"prep{n}", work / f"run{n}", cfg))
        t2 = time.perf_counter()
        results.append({"rows": n, "seconds_preprocess": round(t1 - t0, 3), "seconds_train_1_epoch": round(t2 - t1, 3),
                        "seconds_total": round(t2 - t0, 3)})
    rows = np.array([r["rows"] for r in results], dtype=float)
    total = np.array([r["seconds_total"] for r in results])
    exponent = float(np.polyfit(np.log(rows), np.log(total), 1)[0])
    # the exponent over the two largest sizes, where fixed costs (imports, model building) no longer dominate
    tail = float(np.log(total[-1] / total[-2]) / np.log(rows[-1] / rows[-2])) if len(rows) > 1 else float("nan")
    show("scaling: preprocess + 1 epoch (seconds)", ["rows", "preprocess", "train 1 epoch", "total"],
         [[r["rows"], r["seconds_preprocess"], r["seconds_train_1_epoch"], r["seconds_total"]] for r in results])
    print(f"log-log exponent: {exponent:.2f} over all sizes, {tail:.2f} over the two largest (1.0 = linear)")
    doc = {"runs": results, "exponent": round(exponent, 3), "exponent_largest": round(tail, 3)}
    print(f"wrote {save('scaling', doc)}")


if __name__ == "__main__":
    main()
