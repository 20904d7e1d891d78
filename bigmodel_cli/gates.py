"""Quality gates: `accuracy>=0.9`, `log_loss<=0.3`, checked against a metrics document."""

from __future__ import annotations

import operator
import re
from dataclasses import asdict, dataclass
from typing import Any

from .errors import ConfigError

OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_GATE = re.compile(r"^\s*([A-Za-z_]\w*)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Verdict:
    gate: str
    metric: str
    op: str
    threshold: float
    value: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# metric names (as Keras logs them, or as evaluate reports them) for which lower is better; the rest rise
_LOWER_WORDS = {"loss", "mae", "mse", "rmse", "mape", "msle", "hinge", "huber", "logcosh", "poisson", "kld", "epsilon"}
_LOWER_PARTS = ("crossentropy", "error", "log_cosh", "kl_divergence")


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of this metric is better (`val_mae`, `log_loss`: yes; `val_accuracy`, `auc`: no).
    The one place that knows: early stopping, the best epoch, multi-worker training and compare all ask here."""
    name = metric.lower().removeprefix("val_")
    return bool(set(name.split("_")) & _LOWER_WORDS) or any(part in name for part in _LOWER_PARTS)


def is_valid(text: str) -> bool:
    return bool(_GATE.match(text))


def parse(text: str, where: str = "--gate") -> tuple[str, str, float]:
    m = _GATE.match(text)
    if not m:
        raise ConfigError(f"{where} {text!r}: expected METRIC OP NUMBER with OP one of >=, <=, >, <, "
                          f"e.g. 'accuracy>=0.9'")
    return m.group(1), m.group(2), float(m.group(3))


def check(gates: list[str], metrics: dict[str, float | None], where: str = "--gate") -> list[Verdict]:
    """Each gate's verdict; a gate on a metric this task does not have is a usage error listing the valid ones."""
    verdicts = []
    for text in gates:
        metric, op, threshold = parse(text, where)
        if metric not in metrics:
            raise ConfigError(f"{where} {text!r}: no metric '{metric}' for this task; "
                              f"valid metrics: {', '.join(metrics)}")
        value = metrics[metric]
        passed = value is not None and OPS[op](value, threshold)
        verdicts.append(Verdict(text.strip(), metric, op, threshold, value, passed))
    return verdicts
