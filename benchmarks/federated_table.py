"""Centralized training vs federated variants on the penguins sample, for the README's federated table.

Every row trains the same Sequential with the same total number of epochs (rounds x local epochs) and is
scored by `bigmodel evaluate` on the same test split. Wall time is the whole CLI command, start-up included
(a simulation also starts Ray; a deployment a SuperLink, four SuperNodes and their app processes).
Run: `make federated-table` (about 6 minutes on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import save, show

ROOT = Path(__file__).resolve().parents[1]
ROUNDS, LOCAL, CLIENTS = 10, 2, 4
COMMON = ["--set", "train.optimizer.learning_rate=0.01", "--set", "train.early_stopping.enabled=false",
          "--set", "train.tensorboard=false"]
FED = ["--set", f"federated.clients={CLIENTS}", "--set", f"federated.rounds={ROUNDS}",
       "--set", f"federated.local_epochs={LOCAL}"]
ROWS = [
    ("centralized (train)", ["train"], ["--set", f"train.epochs={ROUNDS * LOCAL}"]),
    ("FedAvg, IID", ["federated"], FED),
    ("FedAvg, Dirichlet α=0.1", ["federated"], [*FED, "--set", "federated.partition=dirichlet",
                                                "--set", "federated.alpha=0.1"]),
    ("FedAvg + SecAgg+", ["federated"], [*FED, "--set", "federated.secure_aggregation=true"]),
    ("FedAvg + client DP, z=0.5", ["federated"], [*FED, "--set", "federated.privacy.noise_multiplier=0.5"]),
    ("FedAvg + client DP, z=2", ["federated"], [*FED, "--set", "federated.privacy.noise_multiplier=2"]),
    ("FedAvg, deployment (SuperLink + 4 SuperNodes)", ["federated", "serve"], FED),
]


def bm(*args: object) -> str:
    r = subprocess.run([sys.executable, "-m", "bigmodel_cli", *map(str, args)], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bigmodel {' '.join(map(str, args))} failed:\n{r.stderr[-2000:]}")
    return r.stdout


def deployment(prep: Path, out: Path, args: list[str]) -> None:
    """`federated serve` and one `federated join` per client (rows k::CLIENTS of the train split), all on
    this machine: what Flower's deployment runtime costs against its simulation engine."""
    import socket

    import pandas as pd

    train = pd.read_parquet(prep / "train.parquet")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    cmd = [sys.executable, "-m", "bigmodel_cli", "federated"]
    server = subprocess.Popen([*cmd, "serve", str(prep), "--out", str(out), "--address", address, *args],
                              stdout=subprocess.DEVNULL, stderr=(out.parent / "serve.log").open("w"))
    clients = []
    for k in range(CLIENTS):
        data = out.parent / f"client{k}.csv"
        train.iloc[k::CLIENTS].to_csv(data, index=False)
        clients.append(subprocess.Popen([*cmd, "join", str(prep), "--data", str(data), "--server", address,
                                         "--seed", str(k)], stdout=subprocess.DEVNULL,
                                        stderr=(out.parent / f"client{k}.log").open("w")))
    if server.wait() != 0 or any(c.wait() != 0 for c in clients):
        raise SystemExit(f"deployment failed: see the logs in {out.parent}")


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bigmodel-fed-"))
    prep = work / "prep"
    bm("preprocess", ROOT / "sample_data/penguins.csv", "--config", ROOT / "sample_data/penguins.yaml", "--out", prep)
    rows = []
    for i, (name, cmd, extra) in enumerate(ROWS):
        out = work / f"run{i}"
        t0 = time.perf_counter()
        if cmd[-1] == "serve":
            deployment(prep, out, [*COMMON, *extra])
        else:
            bm(*cmd, prep, "--out", out, *COMMON, *extra)
        seconds = time.perf_counter() - t0
        metrics = json.loads(bm("evaluate", out, "--json", "--no-plots"))["metrics"]
        privacy = json.loads((out / "manifest.json").read_text()).get("privacy") or {}
        rows.append({"setup": name, "command": " ".join(["bigmodel", *cmd, "PREP", *COMMON, *extra]),
                     "accuracy": round(metrics["accuracy"], 3), "f1_macro": round(metrics["macro_f1"], 3),
                     "epsilon": None if not privacy else round(privacy["epsilon"], 2), "seconds": round(seconds, 1)})
        print(f"{name}: accuracy {metrics['accuracy']:.3f}, {seconds:.1f} s", flush=True)
    show(f"penguins test split, {CLIENTS} clients x {ROUNDS} rounds x {LOCAL} local epochs",
         ["setup", "accuracy", "F1 macro", "ε (δ=1e-5)", "wall s"],
         [[r["setup"], r["accuracy"], r["f1_macro"], r["epsilon"] or "-", r["seconds"]] for r in rows])
    print(save("federated", {"rounds": ROUNDS, "local_epochs": LOCAL, "clients": CLIENTS, "rows": rows}))


if __name__ == "__main__":
    main()
