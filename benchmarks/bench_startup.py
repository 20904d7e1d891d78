"""Start-up and the lifecycle's cost in processes.

1. `bigmodel --help` and `--version` against `python -c "import tensorflow"` (best of 5 each).
2. The whole lifecycle on penguins (defaults, export to ONNX): the five commands as five processes (preprocess,
   train, evaluate, export, report: five TensorFlow start-ups but one) against one `bigmodel experiment`, in
   alternating pairs; medians of `--repeats` (5).
3. Inference as a user runs it, on penguins (344 rows) and on 100,000 rows drawn from it: `bigmodel predict` and
   `bigmodel evaluate --no-plots` of a run trained with the defaults, against the same work by scikit-learn's
   HistGradientBoosting in a fresh process (load the fitted model with joblib, read the CSV, predict, write the
   CSV; for evaluate, accuracy and macro-F1 instead of the file), alternating; medians of `--repeats`.

    python benchmarks/bench_startup.py [--repeats 5] [--skip-lifecycle] [--skip-inference]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import best_of, save, show  # noqa: E402

BIGMODEL = [sys.executable, "-m", "bigmodel_cli"]
PENGUINS = Path(__file__).resolve().parents[1] / "sample_data" / "penguins.csv"
RESULTS = Path(__file__).resolve().parent / "results"


def run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def stages(work: Path) -> list[list[str]]:
    return [[*BIGMODEL, "preprocess", str(PENGUINS), "--target", "species", "--out", str(work / "prep")],
            [*BIGMODEL, "train", str(work / "prep"), "--out", str(work / "run")],
            [*BIGMODEL, "evaluate", str(work / "run")],
            [*BIGMODEL, "export", str(work / "run"), "--format", "onnx", "--out", str(work / "export")],
            [*BIGMODEL, "report", str(work / "run")]]


def experiment(work: Path) -> list[list[str]]:
    return [[*BIGMODEL, "experiment", str(PENGUINS), "--target", "species", "--out", str(work), "--format", "onnx"]]


def timed(commands: list[list[str]]) -> float:
    t0 = time.perf_counter()
    for cmd in commands:
        run(cmd)
    return time.perf_counter() - t0


def lifecycle(repeats: int) -> dict[str, float]:
    """Medians of alternating pairs (five processes, then one experiment), each in a fresh folder."""
    times: dict[str, list[float]] = {"five commands": [], "bigmodel experiment": []}
    for _ in range(repeats):
        for name, make in (("five commands", stages), ("bigmodel experiment", experiment)):
            work = Path(tempfile.mkdtemp(prefix="bench_lifecycle_"))
            try:
                times[name].append(timed(make(work)))
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return {k: statistics.median(v) for k, v in times.items()}


HGB_FIT = """
import sys, joblib, pandas as pd
from sklearn.compose import make_column_transformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OrdinalEncoder
df = pd.read_csv(sys.argv[1])
X, y = df.drop(columns=["species"]), df["species"]
cats = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
enc = make_column_transformer((OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1,
                                              encoded_missing_value=-1), cats), remainder="passthrough")
model = make_pipeline(enc, HistGradientBoostingClassifier(random_state=0)).fit(X, y)
joblib.dump(model, sys.argv[2])
"""
HGB_PREDICT = """
import sys, joblib, numpy as np, pandas as pd
model = joblib.load(sys.argv[1])
df = pd.read_csv(sys.argv[2])
probs = model.predict_proba(df.drop(columns=["species"]))
out = pd.DataFrame(probs, columns=[f"prob_{c}" for c in model.classes_])
out["predicted_species"] = model.classes_[probs.argmax(axis=1)]
out.to_csv(sys.argv[3], index=False)
"""
HGB_EVALUATE = """
import sys, json, joblib, pandas as pd
from sklearn.metrics import accuracy_score, f1_score
model = joblib.load(sys.argv[1])
df = pd.read_csv(sys.argv[2])
pred = model.predict(df.drop(columns=["species"]))
print(json.dumps({"accuracy": accuracy_score(df["species"], pred), "macro_f1": f1_score(df["species"], pred,
                                                                                        average="macro")}))
"""


def inference(repeats: int) -> dict[str, dict[str, float]]:
    """Medians of bigmodel's predict / evaluate against HistGradientBoosting's in a fresh process, on penguins and
    on 100,000 rows drawn from it (a run and a model fitted once, on penguins)."""
    import pandas as pd

    work = Path(tempfile.mkdtemp(prefix="bench_inference_"))
    try:
        run([*BIGMODEL, "preprocess", str(PENGUINS), "--target", "species", "--out", str(work / "prep")])
        run([*BIGMODEL, "train", str(work / "prep"), "--out", str(work / "run")])
        run([sys.executable, "-c", HGB_FIT, str(PENGUINS), str(work / "hgb.joblib")])
        big = work / "rows100k.csv"
        pd.read_csv(PENGUINS).sample(100_000, replace=True, random_state=0).to_csv(big, index=False)
        out: dict[str, dict[str, float]] = {}
        for label, data in (("penguins (344 rows)", PENGUINS), ("100,000 rows", big)):
            cases = {
                "bigmodel predict": [*BIGMODEL, "predict", str(work / "run"), str(data), "--out", str(work / "p.csv")],
                "HistGB predict (fresh process)": [sys.executable, "-c", HGB_PREDICT, str(work / "hgb.joblib"),
                                                   str(data), str(work / "q.csv")],
                "bigmodel evaluate --no-plots": [*BIGMODEL, "evaluate", str(work / "run"), "--data", str(data),
                                                 "--no-plots"],
                "HistGB evaluate (fresh process)": [sys.executable, "-c", HGB_EVALUATE, str(work / "hgb.joblib"),
                                                    str(data)]}
            times: dict[str, list[float]] = {k: [] for k in cases}
            for _ in range(repeats):
                for name, cmd in cases.items():
                    times[name].append(timed([cmd]))
            out[label] = {k: statistics.median(v) for k, v in times.items()}
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-lifecycle", action="store_true")
    ap.add_argument("--skip-inference", action="store_true")
    args = ap.parse_args()
    cases = {"bigmodel --help": [*BIGMODEL, "--help"], "bigmodel --version": [*BIGMODEL, "--version"],
             "python -c 'import tensorflow'": [sys.executable, "-c", "import tensorflow"]}
    times = {name: best_of(lambda c=cmd: run(c), repeat=5) for name, cmd in cases.items()}
    tf_time = times["python -c 'import tensorflow'"]
    show("start-up (best of 5, seconds)", ["command", "seconds", "vs import tensorflow"],
         [[k, v, v / tf_time] for k, v in times.items()])
    previous = RESULTS / "startup.json"  # the sections skipped this time are kept from the last run
    doc = json.loads(previous.read_text()) if previous.exists() else {}
    doc.update({"seconds": {k: round(v, 3) for k, v in times.items()}, "target_seconds": 0.5})
    if not args.skip_lifecycle:
        life = lifecycle(args.repeats)
        ratio = life["bigmodel experiment"] / life["five commands"]
        show(f"the lifecycle on penguins, defaults, ONNX export (median of {args.repeats}, seconds)",
             ["how", "seconds", "vs five commands"], [[k, v, v / life["five commands"]] for k, v in life.items()])
        doc["lifecycle"] = {"repeats": args.repeats, "seconds": {k: round(v, 2) for k, v in life.items()},
                            "experiment_vs_five_commands": round(ratio, 3), "target_ratio": 0.5}
    if not args.skip_inference:
        inf = inference(args.repeats)
        for label, t in inf.items():
            show(f"inference on {label}, defaults (median of {args.repeats}, seconds, whole processes)",
                 ["command", "seconds", "vs HistGB's"],
                 [[k, v, v / t[k.replace("bigmodel", "HistGB").replace(" --no-plots", "") + " (fresh process)"]]
                  for k, v in t.items() if k.startswith("bigmodel")] + [[k, v, 1.0] for k, v in t.items()
                                                                        if k.startswith("HistGB")])
        doc["inference"] = {"repeats": args.repeats,
                            "seconds": {label: {k: round(v, 3) for k, v in t.items()} for label, t in inf.items()}}
    print(f"wrote {save('startup', doc)}")


if __name__ == "__main__":
    main()
