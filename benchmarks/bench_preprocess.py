"""Preprocess throughput and memory: `bigmodel preprocess` on a generated CSV (numeric + categorical +
missing values) against a bare parse of the same file by `pandas.read_csv` and by `pyarrow.csv.read_csv`;
each run in a fresh process, all interleaved `--repeats` times (medians quoted: the machine is shared), wall
and CPU seconds (all threads) measured in the child after its imports, peak RSS from getrusage of the child.
Two more parses show what the choices of #17 cost: with the `skipinitialspace` preprocess passes, and in
bounded chunks (all kept, as a batched path would keep them).

    python benchmarks/bench_preprocess.py [--rows 200000 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, show  # noqa: E402
from benchmarks.datasets import DATA, csv  # noqa: E402


def child(code: str) -> tuple[float, float, float]:
    """Seconds and CPU seconds (all threads; measured inside the child, after its imports) and peak RSS in MiB
    of a fresh Python."""
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport resource\n"
                          "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                         check=True, capture_output=True, text=True).stdout.split()
    return float(out[-3]), float(out[-2]), int(out[-1]) / 1024


def programs(data: Path, work: Path) -> dict[str, str]:
    timed = ("import time\nt, c = time.perf_counter(), time.process_time()\n{}\n"
             "print(time.perf_counter() - t, time.process_time() - c)")
    return {
        "pandas.read_csv": "import pandas as pd\n" + timed.format(f"pd.read_csv({str(data)!r})"),
        "pyarrow.csv.read_csv": "import pyarrow.csv as pc\n" + timed.format(f"pc.read_csv({str(data)!r})"),
        "bigmodel preprocess": (
            "from pathlib import Path\nfrom bigmodel_cli import preprocess\n"
            "from bigmodel_cli.config import load_config\ncfg = load_config(None, ['data.target=label'])\n"
            + timed.format(f"preprocess.run(preprocess.PreprocessOptions(Path({str(data)!r}), "
                         f"Path({str(work / 'prep')!r}), cfg))")),
        # what the parse would cost in the ways #17 weighs: the option preprocess passes, and bounded chunks
        # (every chunk kept, as a batched path would keep them, as Arrow)
        "pandas.read_csv(skipinitialspace=True)": "import pandas as pd\n" + timed.format(
            f"pd.read_csv({str(data)!r}, skipinitialspace=True)"),
        f"pandas.read_csv(chunksize={CHUNK}), chunks kept": "import pandas as pd\n" + timed.format(
            f"chunks = list(pd.read_csv({str(data)!r}, chunksize={CHUNK}))"),
    }


CHUNK = 131072


def measure(rows: int, repeats: int) -> dict:
    data = csv(rows, DATA)
    size_mib = os.path.getsize(data) / 2**20
    progs = programs(data, Path(tempfile.mkdtemp(prefix="bench_prep_")))
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in progs}
    for _ in range(repeats):  # interleaved, so that a slow spell of the machine hits all of them
        for name, code in progs.items():
            runs[name].append(child(code))
    med = {name: (statistics.median(t for t, _, _ in r), statistics.median(c for _, c, _ in r),
                  max(m for _, _, m in r)) for name, r in runs.items()}
    ours, pandas_s, arrow_s = med["bigmodel preprocess"][0], med["pandas.read_csv"][0], med["pyarrow.csv.read_csv"][0]
    show(f"preprocess: {rows} rows x 31 columns, CSV {size_mib:.0f} MiB (median of {repeats})",
         ["", "seconds", "CPU seconds", "rows/s", "peak RSS MiB"],
         [[n, t, c, rows / t, m] for n, (t, c, m) in med.items()])
    doc = {"rows": rows, "csv_mib": round(size_mib, 1), "repeats": repeats,
           "seconds": {n: round(t, 3) for n, (t, _, _) in med.items()},
           "cpu_seconds": {n: round(c, 3) for n, (_, c, _) in med.items()},
           "seconds_all": {n: [round(t, 3) for t, _, _ in r] for n, r in runs.items()},
           "peak_rss_mib": {n: round(m) for n, (_, _, m) in med.items()},
           "time_ratio": round(ours / pandas_s, 2), "time_ratio_pyarrow": round(ours / arrow_s, 2),
           "rss_over_csv_size": round(med["bigmodel preprocess"][2] / size_mib, 2),
           "targets": {"time_ratio": 2.0, "rss_over_csv_size": 3.0}}
    print(f"time {doc['time_ratio']}x pandas.read_csv (target <= 2), {doc['time_ratio_pyarrow']}x "
          f"pyarrow.csv.read_csv; peak RSS / CSV size {doc['rss_over_csv_size']} (target <= 3)")
    return doc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    results = [measure(rows, args.repeats) for rows in args.rows]
    print(f"wrote {save('preprocess', {'runs': results})}")


if __name__ == "__main__":
    main()
