"""Quick ablations for `benchmarks/quality.py`'s tables: bigmodel's CLI (preprocess, train, predict) driven in ONE
process (one TensorFlow start-up instead of three per run), on the same seeded split and with the same metric code,
for several seeds; one JSON line per (table, seed). Its metrics equal the whole-process runs' (checked on
breast_cancer at seed 42: 0.9825 both); its times do not include start-up, so use `make bench-quality` for costs.

    python benchmarks/quality_sweep.py --tables hpc_jobs,concrete --seeds 42,1,2 --set model.ensemble=4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.quality import metrics, split  # noqa: E402
from benchmarks.quality_tables import TABLES  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tables", required=True, help="comma-separated table names")
    ap.add_argument("--seeds", default="42", help="comma-separated seeds (42 is bigmodel's default)")
    ap.add_argument("--set", action="append", default=[], dest="sets", metavar="K=V", help="a config override")
    ap.add_argument("--label", default="sweep", help="a name printed in each line")
    args = ap.parse_args()
    from typer.testing import CliRunner

    from bigmodel_cli.cli import app

    wanted = args.tables.split(",")
    for t in [t for t in TABLES if t.name in wanted]:
        train_csv, test_csv, train, test = split(t)
        classes = [] if t.task == "regression" else sorted(train[t.target].astype(str).unique())
        for seed in [int(s) for s in args.seeds.split(",")]:
            with tempfile.TemporaryDirectory(prefix=f"sweep_{t.name}_") as tmp:
                work, t0 = Path(tmp), time.perf_counter()
                sets = [a for s in [*args.sets, f"seed={seed}"] for a in ("--set", s)]
                for stage in (["preprocess", str(train_csv), "--target", t.target, "--out", str(work / "prep"), *sets],
                              ["train", str(work / "prep"), "--out", str(work / "run")],
                              ["predict", str(work / "run"), str(test_csv), "--out", str(work / "p.csv")]):
                    r = CliRunner().invoke(app, stage)
                    if r.exit_code:
                        raise SystemExit(f"bigmodel {' '.join(stage)}: exit {r.exit_code}\n{r.stderr}")
                out = pd.read_csv(work / "p.csv")
                pred = out[f"predicted_{t.target}"].to_numpy("float64") if t.task == "regression" else \
                    out[[f"prob_{c}" for c in classes]].to_numpy("float64")
                manifest = json.loads((work / "run" / "manifest.json").read_text())
                print(json.dumps({"label": args.label, "table": t.name, "seed": seed,
                                  **metrics(t, test[t.target], pred, classes),
                                  "seconds": round(time.perf_counter() - t0, 1), "epochs": manifest["epochs_run"],
                                  "best_epoch": manifest["best_epoch"]}), flush=True)


if __name__ == "__main__":
    main()
