"""Centralized training vs federated variants on the classification samples (the table of docs/federated.md).

Every row runs with bigmodel's defaults: `bigmodel train` as it comes, and `bigmodel federated` with no setting
but `federated.clients=4` (rounds auto = train.epochs / local_epochs, early stopping on the global validation
loss, the best round kept), plus the one setting a variant names. All are scored by `bigmodel evaluate` on
the same test split. Wall time is the whole CLI command, start-up included (a simulation also starts Ray; a
deployment a SuperLink, its front, four SuperNodes and their app processes). It also times the deployment's
front (auth.py): the same request to the fleet API through it and straight to the SuperLink.
Run: `make federated-table` (about 15 minutes on 2 cores).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import save, show

ROOT = Path(__file__).resolve().parents[1]
CLIENTS = 4
COMMON = ["--set", "train.tensorboard=false"]
FED = ["--set", f"federated.clients={CLIENTS}"]
DATA = {"penguins": ("penguins.csv", "penguins.yaml"), "breast cancer": ("breast_cancer.csv", "breast_cancer.yaml")}
ROWS = [  # (data set, setup, command, extra settings)
    *[(d, "centralized (train)", ["train"], []) for d in DATA],
    *[(d, "FedAvg, IID", ["federated"], FED) for d in DATA],
    ("penguins", "FedAvg, Dirichlet α=0.1", ["federated"], [*FED, "--set", "federated.partition=dirichlet",
                                                            "--set", "federated.alpha=0.1"]),
    ("penguins", "FedAvg + SecAgg+", ["federated"], [*FED, "--set", "federated.secure_aggregation=true"]),
    ("penguins", "FedAvg + client DP, z=0.5", ["federated"], [*FED, "--set", "federated.privacy.noise_multiplier=0.5"]),
    ("penguins", "FedAvg + client DP, z=2", ["federated"], [*FED, "--set", "federated.privacy.noise_multiplier=2"]),
    *[(d, "FedAvg, deployment (serve + 4 × join)", ["federated", "serve"], FED) for d in DATA],
]


def bm(*args: object) -> str:
    r = subprocess.run([sys.executable, "-m", "bigmodel_cli", *map(str, args)], capture_output=True, text=True)
    if r.returncode not in (0, 1):  # 1: a privacy budget stopped the rounds early (the run is written)
        raise SystemExit(f"bigmodel {' '.join(map(str, args))} failed:\n{r.stderr[-2000:]}")
    return r.stdout


def _free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def deployment(prep: Path, out: Path, args: list[str]) -> None:
    """`federated serve` and one `federated join` per client (rows k::CLIENTS of the train split), all on
    this machine: what Flower's deployment runtime costs against its simulation engine."""
    import pandas as pd

    train = pd.read_parquet(prep / "train.parquet")
    address = _free_address()
    cmd = [sys.executable, "-m", "bigmodel_cli", "federated"]
    server = subprocess.Popen([*cmd, "serve", str(prep), "--out", str(out), "--address", address, *args],
                              stdout=subprocess.DEVNULL, stderr=(out.parent / f"{out.name}.serve.log").open("w"))
    clients = []
    for k in range(CLIENTS):
        data = out.parent / f"{out.name}.client{k}.csv"
        train.iloc[k::CLIENTS].to_csv(data, index=False)
        clients.append(subprocess.Popen([*cmd, "join", str(prep), "--data", str(data), "--server", address,
                                         "--seed", str(k)], stdout=subprocess.DEVNULL,
                                        stderr=(out.parent / f"{out.name}.client{k}.log").open("w")))
    if server.wait() != 0 or any(c.wait() != 0 for c in clients):
        raise SystemExit(f"deployment failed: see the logs in {out.parent}")


def front_cost(prep: Path, work: Path, requests: int = 300) -> dict[str, float]:
    """Median time of one POST to the fleet API (pull-messages from an unknown node: Flower answers at once)
    through the front and straight to the SuperLink on loopback, while `federated serve` waits for clients."""
    import statistics

    import httpx

    address = _free_address()
    server = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", "federated", "serve", str(prep), "--out",
                               str(work / "front"), "--address", address, *FED], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        inner = None
        for _ in range(600):  # the SuperLink's own port, from its command line
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    args = cmdline.read_bytes().decode(errors="replace").split("\0")
                    environ = (cmdline.parent / "environ").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                if any(a.endswith("flower-superlink") for a in args[:2]) and str(work / "front") in environ:
                    inner = f"127.0.0.1:{args[args.index('--port') + 1]}"
            if inner:
                break
            time.sleep(0.1)
        times: dict[str, float] = {}
        for name, where in (("front", address), ("superlink", inner)):
            with httpx.Client(base_url=f"http://{where}") as web:
                for _ in range(200):  # until it answers
                    try:
                        web.post("/v1/fleet/pull-messages", headers={"Content-Type": "application/protobuf"})
                        break
                    except httpx.TransportError:
                        time.sleep(0.2)
                samples = []
                for _ in range(requests):
                    t0 = time.perf_counter()
                    web.post("/v1/fleet/pull-messages", headers={"Content-Type": "application/protobuf"})
                    samples.append(time.perf_counter() - t0)
                times[name] = round(statistics.median(samples) * 1000, 3)
        return times
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bigmodel-fed-"))
    preps = {}
    for name, (csv, yaml) in DATA.items():
        preps[name] = work / f"prep-{name.replace(' ', '_')}"
        bm("preprocess", ROOT / "sample_data" / csv, "--config", ROOT / "sample_data" / yaml, "--out", preps[name])
    rows = []
    for i, (data, name, cmd, extra) in enumerate(ROWS):
        out = work / f"run{i}"
        t0 = time.perf_counter()
        if cmd[-1] == "serve":
            deployment(preps[data], out, [*COMMON, *extra])
        else:
            bm(*cmd, preps[data], "--out", out, *COMMON, *extra)
        seconds = time.perf_counter() - t0
        metrics = json.loads(bm("evaluate", out, "--json", "--no-plots"))["metrics"]
        manifest = json.loads((out / "manifest.json").read_text())
        privacy = manifest.get("privacy") or {}
        fed = manifest.get("federated") or {}
        rows.append({"data": data, "setup": name, "command": " ".join(["bigmodel", *cmd, "PREP", *COMMON, *extra]),
                     "accuracy": round(metrics["accuracy"], 3),
                     "f1": round(metrics.get("macro_f1", metrics.get("f1")), 3),
                     "rounds": fed.get("rounds"), "kept_round": fed.get("kept_round"),
                     "epochs": manifest["epochs_run"], "epsilon": None if not privacy else round(privacy["epsilon"], 2),
                     "seconds": round(seconds, 1)})
        print(f"{data}, {name}: accuracy {metrics['accuracy']:.3f}, {seconds:.1f} s", flush=True)
    front = front_cost(preps["penguins"], work)
    show(f"test split, defaults, {CLIENTS} clients", ["data", "setup", "accuracy", "F1 (macro)", "rounds (kept)",
                                                      "ε (δ=1e-5)", "wall s"],
         [[r["data"], r["setup"], r["accuracy"], r["f1"],
           f"{r['rounds']} ({r['kept_round']})" if r["rounds"] else f"{r['epochs']} epochs", r["epsilon"] or "-",
           r["seconds"]] for r in rows])
    print(f"one fleet request: {front['front']} ms through the front, {front['superlink']} ms to the SuperLink")
    print(save("federated", {"clients": CLIENTS, "rows": rows, "front_ms_per_request": front}))


if __name__ == "__main__":
    main()
