"""Start-up: `bigmodel --help` and `--version` against `python -c "import tensorflow"` (best of 5 each).

    python benchmarks/bench_startup.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import best_of, save, show  # noqa: E402

BIGMODEL = [sys.executable, "-m", "bigmodel_cli"]


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def main() -> None:
    cases = {"bigmodel --help": [*BIGMODEL, "--help"], "bigmodel --version": [*BIGMODEL, "--version"],
             "python -c 'import tensorflow'": [sys.executable, "-c", "import tensorflow"]}
    times = {name: best_of(lambda c=cmd: run(c), repeat=5) for name, cmd in cases.items()}
    tf_time = times["python -c 'import tensorflow'"]
    show("start-up (best of 5, seconds)", ["command", "seconds", "vs import tensorflow"],
         [[k, v, v / tf_time] for k, v in times.items()])
    print(f"wrote {save('startup', {'seconds': {k: round(v, 3) for k, v in times.items()}, 'target_seconds': 0.5})}")


if __name__ == "__main__":
    main()
