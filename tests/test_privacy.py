"""Record-level differential privacy: DP-SGD training and its accounting."""

from __future__ import annotations

import json

import keras
import pytest

from bigmodel_cli.training.privacy import epsilon

from .conftest import bm, read_json

# TensorFlow Privacy's MNIST tutorial table (batch 256, 60,000 examples, delta 1e-5): noise, epochs, the published
# epsilon (its older RDP accountant), and dp-accounting 0.6's PLD value, a lower bound of a correct accounting.
MNIST = [(1.12, 60, 2.92, 2.31), (0.6, 30, 9.74, 7.69), (1.2, 10, 1.20, 0.79)]


@pytest.mark.parametrize(("noise", "epochs", "published", "pld"), MNIST)
def test_accountant_matches_the_published_table(noise, epochs, published, pld):
    eps = epsilon(rows=60_000, batch_size=256, epochs=epochs, noise_multiplier=noise, delta=1e-5)
    assert pld <= eps <= published, eps
    assert epsilon(60_000, 256, epochs, 0.0, 1e-5) is None


DP = ["--set", "train.epochs=20", "--set", "train.optimizer.name=sgd", "--set", "train.optimizer.learning_rate=0.2",
      "--set", "train.early_stopping.enabled=false", "--set", "train.tensorboard=false", "--set", "train.batch_size=32"]


def dp_run(prep, out, noise: float, *extra: str) -> dict:
    bm("train", prep, "--out", out, *DP, "--set", f"train.privacy={{noise_multiplier: {noise}, l2_norm_clip: 1.0}}",
       *extra)
    return json.loads(bm("evaluate", out, "--json", "--no-plots").stdout)


def test_dp_sgd_reports_epsilon_and_noise_degrades_accuracy(penguins_prep, tmp_path):
    clipped = dp_run(penguins_prep, tmp_path / "clip", 0.0)
    noisy = dp_run(penguins_prep, tmp_path / "noisy", 30.0)
    assert clipped["privacy"]["epsilon"] is None
    eps = noisy["privacy"]["epsilon"]
    assert 0 < eps < 1 and noisy["privacy"]["delta"] == 1e-5
    assert read_json(tmp_path / "noisy" / "manifest.json")["privacy"]["epsilon"] == eps
    # the noise is really applied: same seed, same clipping, much worse model
    n, c = noisy["metrics"], clipped["metrics"]
    assert n["accuracy"] < c["accuracy"] - 0.05 and n["log_loss"] > 3 * c["log_loss"], (n, c)
    assert c["accuracy"] > 0.75
    # a DP model is an ordinary Sequential for loading (safe_mode), predicting and exporting
    model = keras.saving.load_model(tmp_path / "noisy" / "model.keras", safe_mode=True)
    assert isinstance(model, keras.Sequential) and model.noise_multiplier == 30.0
    bm("export", tmp_path / "noisy", "--format", "keras", "--out", tmp_path / "export")


def test_microbatches_and_config_checks(cancer_prep, tmp_path):
    doc = dp_run(cancer_prep, tmp_path / "micro", 1.0, "--set", "train.privacy.microbatches=8", "--set",
                 "train.epochs=2")
    assert doc["privacy"]["epsilon"] > 0
    dp_run(cancer_prep, tmp_path / "per_example", 1.0, "--set", "train.epochs=2")
    dp_run(cancer_prep, tmp_path / "again", 1.0, "--set", "train.epochs=2")
    from bigmodel_cli.folders import load_network

    # the noise does not follow the (recorded) seed: the same command draws other noise, other weights
    first, again = (load_network(tmp_path / r / "model.keras").get_weights() for r in ("per_example", "again"))
    assert max(float(abs(a - b).max()) for a, b in zip(first, again, strict=True)) > 1e-4

    assert load_network(tmp_path / "micro" / "model.keras").microbatches == 8  # saved, and loaded back
    import pandas as pd

    micro, per_example = (pd.read_csv(tmp_path / r / "history.csv") for r in ("micro", "per_example"))
    assert not micro["loss"].equals(per_example["loss"])  # 8 microbatches clip other gradients than 32
    r = bm("train", cancer_prep, "--out", tmp_path / "bad", "--set", "train.privacy={microbatches: 5}", code=2)
    assert "microbatches (5) must divide batch_size (128)" in r.stderr
    r = bm("train", cancer_prep, "--out", tmp_path / "bad", "--set", "train.privacy={}", "--set",
           "train.class_weight=balanced", code=2)
    assert "class_weight cannot be combined with privacy" in r.stderr


@pytest.mark.parametrize("loss", ["BinaryCrossentropy", "binary_crossentropy", "bce"])
def test_dp_sgd_clips_per_example_whatever_the_loss_is_called(cancer_prep, tmp_path, loss):
    """A loss named by class is a batch-reducing Loss object: DP-SGD must still clip one gradient per example.
    Per example, every name trains the very same weights; clipping the batch's one gradient would not."""
    from bigmodel_cli.folders import load_network
    from bigmodel_cli.keras_env import import_keras, tensorflow
    from bigmodel_cli.training.privacy import per_example_loss

    import_keras()
    tf = tensorflow()
    y, p = tf.constant([[1.0], [0.0], [1.0]]), tf.constant([[0.9], [0.2], [0.3]])
    resolved = keras.losses.get(loss)
    assert tuple(per_example_loss(resolved, y, p).shape) == (3,)
    run = tmp_path / loss
    bm("train", cancer_prep, "--out", run, *DP, "--set", "train.epochs=2", "--set", f"train.loss={loss}",
       "--set", "train.privacy={noise_multiplier: 0.0, l2_norm_clip: 0.01}")
    reference = tmp_path.parent / "dp_reference_binary_crossentropy"
    if not reference.exists():
        bm("train", cancer_prep, "--out", reference, *DP, "--set", "train.epochs=2", "--set",
           "train.loss=binary_crossentropy", "--set", "train.privacy={noise_multiplier: 0.0, l2_norm_clip: 0.01}")
    got, want = load_network(run / "model.keras").get_weights(), load_network(reference / "model.keras").get_weights()
    assert all(abs(a - b).max() < 1e-6 for a, b in zip(got, want, strict=True)), loss
