"""Preprocess throughput and memory: `bigmodel preprocess` on a generated CSV (numeric + categorical +
missing values) against `pandas.read_csv` of the same file alone; each in a fresh process, peak RSS from
getrusage of the child.

    python benchmarks/bench_preprocess.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, show  # noqa: E402
from benchmarks.datasets import DATA, csv  # noqa: E402


def child(code: str) -> tuple[float, float]:
    """Seconds (measured inside the child, after its imports) and peak RSS in MiB of a fresh Python."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return float(out.strip().splitlines()[-1]), max(rss, before) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_prep_"))
    t0 = time.perf_counter()
    data = csv(args.rows, DATA)
    print(f"generated {data} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    size_mib = os.path.getsize(data) / 2**20
    parse, parse_rss = child(f"import time, pandas as pd\nt=time.perf_counter()\npd.read_csv({str(data)!r})\n"
                             f"print(time.perf_counter()-t)")
    ours, ours_rss = child(
        "import time\nfrom pathlib import Path\nfrom bigmodel_cli import preprocess\n"
        "from bigmodel_cli.config import load_config\ncfg = load_config(None, ['data.target=label'])\n"
        f"t=time.perf_counter()\npreprocess.run(Path({str(data)!r}), Path({str(work / 'prep')!r}), cfg)\n"
        "print(time.perf_counter()-t)")
    rows = [["pandas.read_csv", parse, args.rows / parse, parse_rss],
            ["bigmodel preprocess", ours, args.rows / ours, ours_rss]]
    show(f"preprocess: {args.rows} rows x 31 columns, CSV {size_mib:.0f} MiB", ["", "seconds", "rows/s",
                                                                                 "peak RSS MiB"], rows)
    doc = {"rows": args.rows, "csv_mib": round(size_mib, 1), "seconds_read_csv": round(parse, 3),
           "seconds_preprocess": round(ours, 3), "time_ratio": round(ours / parse, 2),
           "peak_rss_mib_read_csv": round(parse_rss), "peak_rss_mib_preprocess": round(ours_rss),
           "rss_over_csv_size": round(ours_rss / size_mib, 2), "targets": {"time_ratio": 2.0, "rss_over_csv_size": 3.0}}
    print(f"time ratio {doc['time_ratio']} (target <= 2), peak RSS / CSV size {doc['rss_over_csv_size']} (target <= 3)")
    print(f"wrote {save('preprocess', doc)}")


if __name__ == "__main__":
    main()
