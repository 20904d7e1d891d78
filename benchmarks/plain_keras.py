"""The training script a user would write instead of bigmodel: the peer of `make bench-quality`.

    python benchmarks/plain_keras.py TRAIN.csv TEST.csv TARGET TASK OUT.npz [--epochs 50] [--no-early-stopping]
                                     [--seed 0]

Standard-scaled features (median-imputed numbers, one-hot strings via pandas), Dense(64, relu), Adam 1e-3,
early stopping on the last 10 % of the rows (patience 10, best weights), at most 50 epochs, batch 32, raw
target units for regression. Writes the test predictions (probabilities, or values) to OUT.npz.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
t0 = time.perf_counter()
ap = argparse.ArgumentParser()
ap.add_argument("train"), ap.add_argument("test"), ap.add_argument("target"), ap.add_argument("task")
ap.add_argument("out"), ap.add_argument("--epochs", type=int, default=50)
ap.add_argument("--no-early-stopping", action="store_true")
ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

keras.utils.set_random_seed(a.seed)
df, test = pd.read_csv(a.train), pd.read_csv(a.test)
y, _ = df.pop(a.target), test.pop(a.target)
X = pd.get_dummies(df, dtype="float32")
Xt = pd.get_dummies(test, dtype="float32").reindex(columns=X.columns, fill_value=0)
X, Xt = X.fillna(X.median()), Xt.fillna(X.median())
mu, sd = X.mean(), X.std().replace(0, 1).fillna(1)
X, Xt = ((X - mu) / sd).to_numpy("float32"), ((Xt - mu) / sd).to_numpy("float32")
if a.task == "regression":
    out, act, loss, yy = 1, "linear", "mse", y.to_numpy("float32")
else:
    classes = sorted(y.astype(str).unique())
    yy = y.astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
    out, act, loss = len(classes), "softmax", "sparse_categorical_crossentropy"
model = keras.Sequential([keras.Input((X.shape[1],)), keras.layers.Dense(64, activation="relu"),
                          keras.layers.Dense(out, activation=act)])
model.compile(keras.optimizers.Adam(1e-3), loss)
stop = [] if a.no_early_stopping else [keras.callbacks.EarlyStopping(patience=10, restore_best_weights=True)]
h = model.fit(X, yy, validation_split=0.1, epochs=a.epochs, batch_size=32, callbacks=stop, verbose=0)
pred = model.predict(Xt, verbose=0)
np.savez(a.out, pred=pred[:, 0] if a.task == "regression" else pred, epochs=len(h.history["loss"]),
         seconds=time.perf_counter() - t0)
