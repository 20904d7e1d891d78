"""Serving: `bigmodel serve` (runtime tf, and runtime onnx) against the service a user would write instead
(benchmarks/serve_peer.py: Starlette + uvicorn calling the exported Keras model), each a real server process on
127.0.0.1, driven by the same bounded asyncio + httpx load loop in this process (which shares the 2 cores: the
figures are for the whole machine). Requests/s and p50/p99 latency with 1-row requests at 1, 8 and 32 concurrent
connections, and rows/s with 100-row requests at 8. Then overload (benchmarks/overload.py): 400 clients sending
8-row requests back to back and 100 slow-loris clients on 500 connections, with a /healthz prober and the
server's RSS sampled: what each server answered within a 10 s deadline, whether it cut the slow clients.

    python benchmarks/bench_serve.py [--seconds 5] [--overload-seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.common import save, show  # noqa: E402
from benchmarks.overload import overload  # noqa: E402

BIGMODEL = [sys.executable, "-m", "bigmodel_cli"]
WORK = ROOT / "build" / "bench_serve"
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare() -> tuple[Path, Path]:
    data = ROOT / "sample_data" / "penguins.csv"
    run, export = WORK / "run", WORK / "export"
    if not (export / "manifest.json").exists():
        for cmd in (["preprocess", str(data), "--target", "species", "--out", str(WORK / "prep")],
                    ["train", str(WORK / "prep"), "--out", str(run)],
                    ["export", str(run), "--format", "onnx", "--out", str(export)]):
            subprocess.run([*BIGMODEL, *cmd], check=True, capture_output=True, env=ENV)
    return run, export


def start(cmd: list[str], url: str) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    body = {"instances": INSTANCES[:1]}
    for _ in range(1200):
        try:
            r = httpx.post(url, json=body, timeout=30)
            if r.status_code == 200:
                return proc
            if r.status_code != 503:  # loading
                proc.kill()
                raise SystemExit(f"{cmd}: {r.status_code} {r.text[:500]}")
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{cmd} exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    raise SystemExit(f"{cmd}: not ready")


async def load(url: str, rows: int, concurrency: int, seconds: float) -> dict[str, float]:
    body = {"instances": (INSTANCES * (rows // len(INSTANCES) + 1))[:rows]}
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            r = await client.post(url, json=body)
            latencies.append(time.perf_counter() - t0)
            errors += r.status_code != 200

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        await client.post(url, json=body)  # warm the connection and the server
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        elapsed = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"requests_per_s": len(lat) / elapsed, "rows_per_s": len(lat) * rows / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--overload-seconds", type=float, default=30.0)
    args = ap.parse_args()
    run, export = prepare()
    servers = {
        "bigmodel serve (tf)": lambda p: [*BIGMODEL, "serve", str(run), "--port", str(p)],
        "bigmodel serve (onnx)": lambda p: [*BIGMODEL, "serve", str(export), "--runtime", "onnx", "--port", str(p)],
        "peer: Starlette + Keras model": lambda p: [sys.executable, str(ROOT / "benchmarks" / "serve_peer.py"),
                                                      str(export), str(p)],
    }
    scenarios = [(1, 1), (1, 8), (1, 32), (100, 8)]
    results: dict[str, dict[str, dict[str, float]]] = {}
    overloads: dict[str, dict] = {}
    body = json.dumps({"instances": INSTANCES[:8]}).encode()
    for name, cmd in servers.items():
        p = port()
        url = f"http://127.0.0.1:{p}/v1/models/model:predict"
        proc = start(cmd(p), url)
        try:
            results[name] = {f"{rows} row(s) x {c}": asyncio.run(load(url, rows, c, args.seconds))
                             for rows, c in scenarios}
            if "onnx" not in name:  # the same front for both runtimes: overload the tf one and the peer
                overloads[name] = asyncio.run(overload("127.0.0.1", p, body, proc.pid, healthy=400, slow=100,
                                                       seconds=args.overload_seconds)).to_dict()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                code: int | str = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # still working through what it queued: a server that cannot stop
                proc.kill()
                proc.wait()
                code = "killed (no exit 60 s after SIGTERM)"
            if name in overloads:
                overloads[name]["exit_code_after_sigterm"] = code
    rows = []
    for name, by in results.items():
        for scenario, r in by.items():
            peer = results["peer: Starlette + Keras model"][scenario]
            rows.append([name, scenario, r["requests_per_s"], r["rows_per_s"], r["p50_ms"], r["p99_ms"],
                         r["requests_per_s"] / peer["requests_per_s"], r["errors"]])
    show(f"serving (penguins, {args.seconds:g} s per scenario)",
         ["server", "rows x connections", "req/s", "rows/s", "p50 ms", "p99 ms", "req/s vs peer", "errors"], rows)
    show(f"overload ({args.overload_seconds:g} s; 400 clients + 100 slow loris; deadline 10 s)",
         ["server", "200", "503 (Retry-After)", "other", "late/dropped", "slowest s", "slow cut/left open",
          "slowest cut s", "healthz ok/failed", "RSS MB before/max", "exit"],
         [[name, o["ok"], f"{o['busy']} ({o['busy'] - o['busy_without_retry_after']})", sum(o["other"].values()),
           f"{o['late']}/{o['dropped']}", o["slowest_answer_s"], f"{o['slow_cut']}/{o['slow_left_open']}",
           o["slowest_cut_s"], f"{o['healthz_ok']}/{o['healthz_failed']}",
           f"{o['rss_before_mb']:.0f}/{o['rss_max_mb']:.0f}", o["exit_code_after_sigterm"]]
          for name, o in overloads.items()])
    print(f"wrote {save('serve', {'seconds_per_scenario': args.seconds, 'results': results, 'overload': overloads})}")


INSTANCES = [{c: (None if pd.isna(v) else v.item() if hasattr(v, "item") else v) for c, v in r.items()}
             for r in pd.read_csv(ROOT / "sample_data" / "penguins.csv").drop(columns="species").head(50)
             .to_dict(orient="records")]

if __name__ == "__main__":
    main()
