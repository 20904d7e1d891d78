"""The run folder a federation ends with: the one `train` writes (so evaluate, export, predict and compare accept it),
with the best round's global model and the federation's own record in the manifest."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import artifacts, tracking
from ..errors import DataError
from ..folders import open_prep, write_run
from ..training.rules import decision_threshold
from .budget import epsilon

if TYPE_CHECKING:
    from .server import Federation


@dataclass(frozen=True)
class FederatedResult:
    """A federated run: the run folder, the rounds run, the round whose global model was kept, its metrics.
    `budget_stop` says why fewer rounds than asked were run when the privacy budget stopped them (exit 1)."""

    out: Path
    rounds: int
    kept_round: int
    final: dict[str, float]
    seconds: float
    budget_stop: str | None = None
    tracking: dict[str, Any] | None = None  # the MLflow run logged to (tracking.mlflow)
    warnings: tuple[str, ...] = ()  # e.g. a tracking server that stopped answering

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "rounds": self.rounds, "kept_round": self.kept_round, "final": self.final,
                "seconds": round(self.seconds, 3), "budget_stop": self.budget_stop, "tracking": self.tracking,
                "warnings": list(self.warnings)}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FederatedResult:
        return cls(Path(doc["out"]), doc["rounds"], doc["kept_round"], doc["final"], doc["seconds"],
                   doc.get("budget_stop"))


def write(fed: Federation, extra: dict[str, Any]) -> FederatedResult:
    """Write the run folder with the best round's global model (the last round's without early stopping),
    its decision threshold picked on the validation split as `train` does; remove the checkpoint."""
    done, stopper = fed.progress, fed.stopper
    if done.weights is None:
        raise DataError("federated: no round finished, so there is no global model (see the log above)")
    early = stopper.patience is not None and done.best_weights is not None
    kept = stopper.best_round if early else len(done.history)
    fed.model.set_weights(done.best_weights if early else done.weights)
    hist = pd.DataFrame(done.history)
    hist.insert(0, "epoch", np.arange(1, len(hist) + 1))  # epoch = round
    seconds = time.perf_counter() - fed.t0
    f, p = fed.cfg.federated, fed.cfg.federated.privacy
    privacy = None if p is None else {  # every round's average was released, so ε is that of all rounds run
        "level": "client", "epsilon": float(hist["epsilon"].iloc[-1]), "delta": p.delta,
        "noise_multiplier": p.noise_multiplier, "clipping": p.clipping, "clipping_norm": p.clipping_norm,
        "max_epsilon": p.max_epsilon, "accountant": "dp-accounting RDP, no sampling amplification"}
    threshold = decision_threshold(fed.cfg, fed.schema, fed.model, fed.x_val, fed.y_val)
    final = write_run(fed.folder, fed.prep, fed.cfg, fed.model, hist, kept, {
        "started": fed.started, "seconds": round(seconds, 3), "epochs_run": len(hist), "best_epoch": kept,
        "threshold": threshold, "privacy": privacy, "resumed": done.resumed,
        "federated": {"engine": f.engine, "rounds": len(hist), "rounds_asked": fed.budget.asked,
                      "kept_round": kept, "stopped_early": fed.stopped, "patience": fed.budget.patience,
                      "secure_aggregation": f.secure_aggregation, "strategy": f.strategy,
                      "aggregation": f.aggregation, "rejected_updates": int(hist["rejected"].sum())
                      if "rejected" in hist else 0,
                      **({"attack": f.attack.model_dump()} if f.attack is not None else {}), **extra}})
    shutil.rmtree(fed.checkpoint_dir, ignore_errors=True)
    shutil.rmtree(artifacts.previous_dir(fed.checkpoint_dir), ignore_errors=True)
    stop = None
    if len(hist) < fed.budget.asked and not fed.stopped and p is not None and p.max_epsilon is not None:
        stop = (f"federated.privacy.max_epsilon {p.max_epsilon}: stopped after {len(hist)} of {fed.budget.asked} "
                f"rounds (ε={final['epsilon']:.3g}); round {len(hist) + 1} would spend "
                f"ε={epsilon(len(hist) + 1, p):.3g}")
    return FederatedResult(fed.folder.path, len(hist), kept, final, seconds, stop)




def tracked(cfg: Any, prep: Path, out: Path, on_round: Any,
            rounds: Callable[[Any], FederatedResult]) -> FederatedResult:
    """`rounds(hook)` (a federation another process runs, reporting each round to `hook`), under MLflow tracking
    when tracking.mlflow is on: each round's global metrics logged as an epoch's, then the run folder's files, its
    manifest's MLflow entry (so evaluate logs to the same run) and the run's status. Required tracking that failed
    during the rounds: exit 2 once the run folder is complete."""
    tracker = tracking.start(cfg, open_prep(Path(prep)), Path(out), "federated")
    try:
        result = rounds(tracker.epochs(on_round) if tracker else on_round)
    except BaseException as e:
        if tracker is not None:
            tracker.finish(None, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    if tracker is None:
        return result
    tracker.note(result.out)
    tracker.finish(result.out)
    tracker.check()
    return dataclasses.replace(result, tracking=tracker.record(), warnings=tuple(tracker.warnings))
