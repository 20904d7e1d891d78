"""How long a federation trains: the rounds, the early-stopping patience in rounds, and the privacy budget.

The defaults mirror `train`'s: `federated.rounds: auto` gives the federation as many epochs of local training
as `train` would run (train.epochs / local_epochs rounds), and early stopping on the global model's validation
loss (train.early_stopping) stops it after `patience / local_epochs` rounds without improvement, keeping the
best round's global model. Under client-level DP the rounds are also capped by federated.privacy.max_epsilon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..config import AUTO_PATIENCE, Config, FederatedPrivacyConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class Budget:
    """The rounds to run at most (within the privacy budget), and the rounds without improvement that stop them
    (None: early stopping is off, the last round's model is kept)."""

    rounds: int
    asked: int  # before the privacy budget
    patience: int | None


def budget(cfg: Config, train_rows: int) -> Budget:
    """The federation's budget for a train split of `train_rows` rows (all clients' rows together)."""
    f, t = cfg.federated, cfg.train
    if t.optimizer.schedule != "constant":  # clients train a few local epochs a round: no curve over the run
        raise ConfigError("train.optimizer.schedule: a learning-rate schedule applies to `bigmodel train`, not to "
                          "federated rounds; set train.optimizer.schedule: constant")
    epochs, patience = t.budget(train_rows)
    if t.early_stopping.patience == "auto":  # measured for `train` (#28), not yet for federations: 10 epochs
        patience = AUTO_PATIENCE[0]
    asked = f.rounds if f.rounds != "auto" else math.ceil(epochs / f.local_epochs)
    rounds = affordable_rounds(asked, f.privacy) if f.privacy else asked
    if rounds == 0 and (p := f.privacy) is not None:
        raise ConfigError(f"federated.privacy.max_epsilon {p.max_epsilon}: one round already spends "
                          f"ε={epsilon(1, p):.3g}; raise max_epsilon or noise_multiplier")
    stop = max(1, math.ceil(patience / f.local_epochs)) if t.early_stopping.enabled else None
    return Budget(rounds, asked, stop)


def epsilon(rounds: int, p: FederatedPrivacyConfig) -> float:
    """Client-level ε at p.delta after `rounds` releases of the noised average (RDP accountant).

    Each round is a Gaussian mechanism on the sum of updates clipped to norm C with noise std z·C, so
    adding or removing one client's data changes it by at most C. No amplification by client sampling is
    claimed (Flower samples a fixed number of clients, not Poisson), so this is an upper bound."""
    import dp_accounting as dpa
    from dp_accounting import rdp

    accountant = rdp.RdpAccountant()
    accountant.compose(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(p.noise_multiplier), rounds))
    return float(accountant.get_epsilon(p.delta))


def affordable_rounds(rounds: int, p: FederatedPrivacyConfig) -> int:
    """How many of `rounds` fit in p.max_epsilon (all of them without a budget)."""
    if p.max_epsilon is None:
        return rounds
    return sum(1 for r in range(1, rounds + 1) if epsilon(r, p) <= p.max_epsilon)
