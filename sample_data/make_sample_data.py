"""Re-create the sample data sets from what installed packages ship (no downloads).

    python sample_data/make_sample_data.py   # needs the dev extra (palmerpenguins) and scikit-learn
"""

from __future__ import annotations

import shutil
from pathlib import Path

import palmerpenguins
from sklearn.datasets import load_breast_cancer

HERE = Path(__file__).parent


def main() -> None:
    shutil.copyfile(Path(palmerpenguins.__file__).parent / "data" / "penguins.csv", HERE / "penguins.csv")
    bc = load_breast_cancer(as_frame=True)
    df = bc.frame.rename(columns=lambda c: c.replace(" ", "_"))
    df["diagnosis"] = df.pop("target").map({0: "malignant", 1: "benign"})
    df.insert(0, "patient_id", range(1, len(df) + 1))
    df.to_csv(HERE / "breast_cancer.csv", index=False, float_format="%.6g")


if __name__ == "__main__":
    main()
