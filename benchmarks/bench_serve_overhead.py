"""What /metrics and the drift window cost `bigmodel serve`: this checkout's server against the same server at an
earlier git revision (BEFORE, default d23d83f: no /metrics, no drift window), and the hand-written peer
(benchmarks/serve_peer.py), on the same export folder (onnx runtime; it holds reference.json, so the drift window
is on), alternating, requests/s with 1-row and 100-row requests at 8 (or --connections) connections.

    python benchmarks/bench_serve_overhead.py [--before REV] [--repeats 2] [--seconds 5] [--connections 8,32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import bench_serve as b  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="d23d83f")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", default="8", help="concurrent connections, e.g. 8,32")
    args = ap.parse_args()
    run, export = b.prepare()
    assert (export / "reference.json").exists(), "the export has no reference.json: the drift window would be off"
    with tempfile.TemporaryDirectory() as old:
        subprocess.run(f"git -C {ROOT} archive {args.before} | tar -x -C {old}", shell=True, check=True)
        serve = [sys.executable, "-m", "bigmodel_cli", "serve", str(export), "--runtime", "onnx", "--port"]
        servers = {f"bigmodel serve at {args.before}": (serve, old), "bigmodel serve (metrics + drift)": (serve, ROOT),
                   "peer: Starlette + Keras model": ([sys.executable, str(ROOT / "benchmarks" / "serve_peer.py"),
                                                      str(export)], ROOT)}
        found: dict[str, dict[str, list[float]]] = {}
        for _ in range(args.repeats):
            for name, (cmd, code) in servers.items():
                p = b.port()
                url = f"http://127.0.0.1:{p}/v1/models/model:predict"
                b.ENV["PYTHONPATH"] = str(code)
                proc = b.start([*cmd, str(p)], url)
                try:
                    for n in map(int, args.connections.split(",")):
                        for rows in (1, 100):
                            r = asyncio.run(b.load(url, rows, n, args.seconds))
                            found.setdefault(name, {}).setdefault(f"{rows} row(s) x {n}", []).append(
                                round(r["requests_per_s"], 1))
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(timeout=60)
        b.ENV.pop("PYTHONPATH", None)
    print(json.dumps(found, indent=1))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
