"""Training throughput: `bigmodel train` against the plain Keras script a user would write — the same
Sequential (Dense 64 relu, Dense 1 sigmoid), Adam, the same batch size and epochs, model.fit on in-memory
NumPy arrays of the same encoded rows, with the same validation data. Both run in this process, one after
the other, so the ratio is robust to the machine's speed.

    python benchmarks/bench_train.py [--rows 200000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import save, show  # noqa: E402
from benchmarks.datasets import csv  # noqa: E402


def plain_keras(x, y, xv, yv, batch: int, epochs: int, seed: int) -> float:
    import keras

    keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(64, activation="relu"),
                              keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=batch, epochs=epochs, validation_data=(xv, yv), verbose=0)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--spe", type=int, nargs="*", default=[1, 64], help="steps_per_execution values to try")
    args = ap.parse_args()

    from bigmodel_cli import features, folders, preprocess, train
    from bigmodel_cli.config import load_config
    from bigmodel_cli.keras_env import import_keras
    from bigmodel_cli.schema import Schema

    import_keras()
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    data = csv(args.rows)
    prep = work / "prep"
    preprocess.run(preprocess.PreprocessOptions(data, prep, load_config(None, ["data.target=label"])))
    schema = Schema.load(prep)
    encoder = features.preprocessing_model(schema)
    splits = {n: folders.open_prep(prep).split(n) for n in ("train", "val")}
    x = {n: features.apply(encoder, features.to_inputs(df, schema, n)) for n, df in splits.items()}
    y = {n: schema.labels(df, n) for n, df in splits.items()}
    n_train = len(y["train"])

    rows, results = [], []
    for batch in (32, 256):
        base = plain_keras(x["train"], y["train"], x["val"], y["val"], batch, args.epochs, 42)
        for spe in args.spe:
            cfg = load_config(prep / "config.yaml", [f"train.batch_size={batch}", f"train.epochs={args.epochs}",
                                                      "train.early_stopping.enabled=false",
                                                      f"train.steps_per_execution={spe}"])
            t0 = time.perf_counter()
            # everything: encoding, fit, checkpoints, artifacts
            train.run(train.TrainOptions(prep, work / f"run_{batch}_{spe}", cfg))
            ours = time.perf_counter() - t0
            ratio = base / ours
            rows.append([batch, spe, n_train * args.epochs / ours, n_train * args.epochs / base, ratio])
            results.append({"batch_size": batch, "steps_per_execution": spe, "seconds_bigmodel": round(ours, 3),
                            "seconds_plain_keras": round(base, 3), "samples_per_s_bigmodel": round(n_train *
                            args.epochs / ours), "samples_per_s_plain_keras": round(n_train * args.epochs / base),
                            "ratio": round(ratio, 3)})
    show(f"training throughput: {args.rows} rows x 30 columns, {n_train} train rows, {args.epochs} epochs",
         ["batch", "steps/exec", "bigmodel samples/s", "plain Keras samples/s", "ratio (>1: bigmodel faster)"], rows)
    print(f"wrote {save('train', {'rows': args.rows, 'train_rows': n_train, 'epochs': args.epochs, 'runs': results})}")


if __name__ == "__main__":
    main()
