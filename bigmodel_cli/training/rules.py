"""The rules every trainer follows — `train` (one device or mirrored), multi-worker, `tune`'s trials and
`federated`'s rounds: which metric early stopping watches and when it improves, what `--resume` may change, the
config's hash, class weights, the binary decision threshold and the learning-rate schedule."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import Config, flatten
from ..errors import ConfigError
from ..gates import lower_is_better
from ..schema import Schema


def config_sha256(cfg: Config) -> str:
    """The resolved config's hash, as a checkpoint records it (a resume compares it)."""
    return hashlib.sha256(cfg.to_yaml().encode()).hexdigest()


def improved(monitor: str, value: float, best: float | None, min_delta: float) -> bool:
    """Early stopping's rule, as Keras' EarlyStopping applies it: better than the best so far by more than
    min_delta, in the direction the monitor is better (`gates.lower_is_better`)."""
    sign = 1.0 if lower_is_better(monitor) else -1.0
    return best is None or sign * (value - best) < -min_delta


@dataclass
class Stopper:
    """Early stopping over epochs or rounds by `improved` (for the trainers that run their own loop: multi-worker
    and federated; `train` uses Keras' EarlyStopping, which follows the same rule); its state goes into their
    checkpoints."""

    monitor: str
    patience: int | None  # None: off, the last epoch or round is kept
    min_delta: float
    best: float | None = None
    best_round: int = 0  # 1-based; 0: none yet
    wait: int = 0

    def update(self, at: int, value: float) -> bool:
        """Record epoch or round `at`'s value; True if it is the best so far."""
        if improved(self.monitor, value, self.best, self.min_delta):
            self.best, self.best_round, self.wait = value, at, 0
            return True
        self.wait += 1
        return False

    @property
    def stopped(self) -> bool:
        return self.patience is not None and self.wait >= self.patience


# what --resume accepts changed: the stopping budget and how training is logged, never the model, data or optimiser
RESUMABLE = ("train.epochs", "train.early_stopping.patience", "train.checkpoint_seconds", "train.tensorboard")


def resume_changes(progress: Any, cfg: Config, sha256: str, allowed: tuple[str, ...] = RESUMABLE) -> list[str]:
    """The config keys that differ from the interrupted run's, other than `allowed` ones (a checkpoint of an older
    version, without its config, can only say that something differs)."""
    if not progress.config:
        return [] if progress.config_sha256 == sha256 else ["(the config)"]
    old, new = flatten(progress.config), flatten(cfg.model_dump(mode="json"))
    # a key the interrupted run's version did not have: it ran as that key's default does
    default = flatten(Config().model_dump(mode="json"))
    return sorted(k for k in old.keys() | new.keys()
                  if old.get(k, default.get(k)) != new.get(k) and k not in allowed)


def monitored(cfg: Config, has_val: bool) -> str:
    """The metric early stopping watches: train.early_stopping.monitor (its train twin without a val split)."""
    es = cfg.train.early_stopping
    return es.monitor if has_val else es.monitor.removeprefix("val_")


def class_weights(cfg: Config, schema: Schema, y: np.ndarray) -> dict[int, float] | None:
    cw = cfg.train.class_weight
    if cw == "none" or not schema.is_classification:
        return None
    if cw == "balanced":
        from sklearn.utils.class_weight import compute_class_weight

        present = np.unique(y)
        w = compute_class_weight("balanced", classes=present, y=y)
        return {int(c): float(v) for c, v in zip(present, w, strict=True)}
    unknown = sorted(set(cw) - set(schema.classes))
    if unknown:
        raise ConfigError(f"train.class_weight: unknown class(es) {', '.join(unknown)}; "
                          f"classes are {', '.join(schema.classes)}")
    return {i: float(cw.get(c, 1.0)) for i, c in enumerate(schema.classes)}


def decision_threshold(cfg: Config, schema: Schema, net: Any, x_val: np.ndarray, y_val: np.ndarray) -> float | None:
    """Binary tasks: the probability above which the positive class is predicted. `auto` picks, among the
    validation scores, the threshold that maximises evaluate.threshold_metric on the validation split."""
    if schema.task != "binary":
        return None
    if cfg.evaluate.threshold != "auto":
        return float(cfg.evaluate.threshold)
    if len(y_val) == 0:
        raise ConfigError("evaluate.threshold: 'auto' needs a validation split (data.split.val > 0)")
    from sklearn import metrics

    score = {"f1": metrics.f1_score, "accuracy": metrics.accuracy_score, "mcc": metrics.matthews_corrcoef,
             "balanced_accuracy": metrics.balanced_accuracy_score}[cfg.evaluate.threshold_metric]
    p = np.asarray(net.predict(x_val, verbose=0))[:, 0]
    candidates = np.unique(np.quantile(p, np.linspace(0, 1, 201)))
    values = [score(y_val, (p >= c).astype(int)) for c in candidates]
    return float(candidates[int(np.argmax(values))])


def schedule(cfg: Config, epochs: int) -> Any:
    """train.optimizer.schedule as a Keras callback that sets each epoch's learning rate from the epoch's index
    alone (so a resumed run and a refit follow the same curve), or None for a constant rate. cosine: from
    learning_rate at the first epoch down to learning_rate / 2 * (1 + cos(pi (E-1) / E)) at the last of E."""
    opt = cfg.train.optimizer
    if opt.schedule == "constant":
        return None
    import math

    from ..keras_env import import_keras

    base = opt.learning_rate
    return import_keras().callbacks.LearningRateScheduler(
        lambda epoch, lr: base * 0.5 * (1 + math.cos(math.pi * min(epoch, epochs) / epochs)))
