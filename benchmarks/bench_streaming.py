"""Data larger than memory: `bigmodel preprocess` and one epoch of `bigmodel train` on a generated 5M-row CSV
(24 numeric + 6 categorical columns, missing values) with `data.streaming: auto` (the file is over 512 MiB,
so it streams), each in a fresh process under `/usr/bin/time -v`, and the in-memory preprocess of the same file
(`data.streaming=false`) for the time per row. Targets: peak RSS under 2 GiB (preprocess: 1 GiB), the streamed
preprocess within 1.3x the in-memory one's time.

    python benchmarks/bench_streaming.py [--rows 5000000]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, show  # noqa: E402
from benchmarks.datasets import DATA, binary_table  # noqa: E402

BIGMODEL = [sys.executable, "-m", "bigmodel_cli"]


def big_csv(rows: int, chunk: int = 1_000_000) -> Path:
    """Written 1M rows at a time (each with its own seed), so generating it needs little memory too."""
    DATA.mkdir(exist_ok=True)
    path = DATA / f"binary_{rows}_chunked.csv"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        for i, start in enumerate(range(0, rows, chunk)):
            binary_table(min(chunk, rows - start), seed=i).to_csv(tmp, index=False, float_format="%.5g",
                                                                 mode="a" if i else "w", header=not i)
        tmp.rename(path)
    return path


def timed(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of a command, from GNU time -v."""
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{r.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    return seconds, rss_kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5_000_000)
    args = ap.parse_args()
    t0 = time.perf_counter()
    data = big_csv(args.rows)
    size_mib = data.stat().st_size / 2**20
    print(f"{data}: {size_mib:.0f} MiB ({time.perf_counter() - t0:.0f} s to make or find)", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    try:
        prep_s, prep_rss = timed([*BIGMODEL, "preprocess", str(data), "--target", "label", "--out", str(work / "prep")])
        # the in-memory path on the same file, for the time per row (it holds the whole table: ~5x the CSV)
        whole_s, whole_rss = timed([*BIGMODEL, "preprocess", str(data), "--target", "label", "--out",
                                    str(work / "whole"), "--set", "data.streaming=false"])
        shutil.rmtree(work / "whole")
        train_s, train_rss = timed([*BIGMODEL, "train", str(work / "prep"), "--out", str(work / "run"),
                                    "--set", "train.epochs=1", "--set", "train.tensorboard=false"])
        import json

        manifest = json.loads((work / "prep" / "manifest.json").read_text())
        import pandas as pd

        last = pd.read_csv(work / "run" / "history.csv").iloc[-1]
        train_rows = json.loads((work / "prep" / "report.json").read_text())["splits"]["train"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    limit = 2048
    rows = [["preprocess (streaming)", round(prep_s, 1), round(prep_rss), round(prep_rss / size_mib, 2),
             "yes" if prep_rss < limit else "NO"],
            ["preprocess (in memory, data.streaming=false)", round(whole_s, 1), round(whole_rss),
             round(whole_rss / size_mib, 2), "-"],
            ["train, 1 epoch", round(train_s, 1), round(train_rss), round(train_rss / size_mib, 2),
             "yes" if train_rss < limit else "NO"]]
    print(f"streaming preprocess: {prep_s / whole_s:.2f}x the in-memory path's time on the same file "
          f"(target <= 1.3), peak RSS {prep_rss:.0f} MiB (target < 1024)")
    show(f"{args.rows:,} rows, CSV {size_mib:.0f} MiB; target peak RSS < {limit} MiB",
         ["stage", "seconds", "peak RSS MiB", "RSS / CSV size", "met"], rows)
    print(save("streaming", {
        "rows": args.rows, "csv_mib": round(size_mib, 1), "streamed": "streaming" in manifest,
        "preprocess": {"seconds": round(prep_s, 1), "peak_rss_mib": round(prep_rss)},
        "preprocess_in_memory": {"seconds": round(whole_s, 1), "peak_rss_mib": round(whole_rss)},
        "streaming_time_per_row_over_in_memory": round(prep_s / whole_s, 2),
        "train_one_epoch": {"seconds": round(train_s, 1), "peak_rss_mib": round(train_rss),
                            "rows_per_second": round(train_rows / train_s)},
        "final_val_accuracy": round(float(last["val_accuracy"]), 4),
        "target_peak_rss_mib": limit, "met": max(prep_rss, train_rss) < limit}))


if __name__ == "__main__":
    main()
