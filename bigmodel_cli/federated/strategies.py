"""The server's strategy: Flower's, by name (`federated.strategy`, `federated.aggregation`), behind a guard that
checks every client's update before anything aggregates it.

- strategy fedavg / fedprox: the weighted mean (FedProx's proximal term is the client's: client.py), or, with
  `aggregation`, a robust one: Flower's FedMedian, FedTrimmedAvg, Krum.
- fedavgm (server momentum), fedadam / fedyogi / fedadagrad (adaptive server optimisers): Flower's, over the
  weighted mean.
- `Guard`: an update with NaN or inf, or whose arrays do not have the global model's shapes, is dropped with a
  one-line warning naming the client's node; the round goes on with the others. An aggregate that is not finite
  (under SecAgg+, where the server sees only the masked sum) is dropped too: the global model stays as it was.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import FederatedConfig

SERVER_LR = {"fedavgm": 1.0, "fedadam": 0.01, "fedyogi": 0.01, "fedadagrad": 0.01}  # server_learning_rate: None


def build(f: FederatedConfig, common: dict[str, Any]) -> Any:
    """Flower's strategy for the config, with `common` (fractions, callbacks, initial parameters)."""
    from flwr.common import parameters_to_ndarrays
    from flwr.server import strategy as fs

    lr = f.server_learning_rate or SERVER_LR.get(f.strategy, 1.0)
    inner: Any
    if f.aggregation == "median":
        inner = fs.FedMedian(**common)
    elif f.aggregation == "trimmed_mean":
        inner = fs.FedTrimmedAvg(**common, beta=f.trim)
    elif f.aggregation == "krum":
        inner = fs.Krum(**common, num_malicious_clients=f.malicious)
    elif f.strategy == "fedavgm":
        inner = fs.FedAvgM(**common, server_learning_rate=lr, server_momentum=f.server_momentum)
        # Flower sets the momentum in round 1 and asserts it later: a resumed run (or a round 1 whose updates were
        # all dropped) starts with none, so start it at zero, which round 1 replaces as Flower does
        start = parameters_to_ndarrays(common["initial_parameters"])
        inner.momentum_vector = [np.zeros_like(w) for w in start]
    elif f.strategy in ("fedadam", "fedyogi"):
        inner = (fs.FedAdam if f.strategy == "fedadam" else fs.FedYogi)(
            **common, eta=lr, beta_1=0.9, beta_2=0.99, tau=1e-3)
    elif f.strategy == "fedadagrad":
        inner = fs.FedAdagrad(**common, eta=lr, tau=1e-3)
    else:  # fedavg, fedprox (the server side of FedProx is FedAvg's)
        inner = fs.FedAvg(**common)
    return inner


def problem(arrays: list[np.ndarray], shapes: list[tuple[int, ...]]) -> str | None:
    """Why an update cannot be aggregated (wrong shapes, NaN or inf), or None."""
    if len(arrays) != len(shapes):
        return f"{len(arrays)} arrays, the model has {len(shapes)}"
    for i, (a, shape) in enumerate(zip(arrays, shapes, strict=True)):
        if tuple(a.shape) != tuple(shape):
            return f"array {i} has shape {tuple(a.shape)}, the model's is {tuple(shape)}"
    for i, a in enumerate(arrays):
        if np.issubdtype(a.dtype, np.number) and not np.isfinite(a).all():
            return f"array {i} holds NaN or inf"
    return None


SERVER_STATE = ("current_weights", "m_t", "v_t", "momentum_vector")  # FedOpt's and FedAvgM's, replaced each round


def _innermost(strategy: Any) -> Any:
    while hasattr(strategy, "strategy"):  # (Flower's DP wrappers hold the strategy they wrap)
        strategy = strategy.strategy
    return strategy


def guarded(inner: Any, shapes: list[tuple[int, ...]], on_reject: Any, secure: bool = False) -> Any:
    """`inner` (a Flower strategy) behind the update checks (see the module's doc). `secure`: under SecAgg+, where
    the results hold the unmasked sum, not one client's update: only the aggregate is checked."""
    from flwr.common import parameters_to_ndarrays
    from flwr.server.strategy import Strategy

    class Guard(Strategy):  # type: ignore[misc]
        def __init__(self) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:  # (e.g. the DP wrapper's clipping_norm)
            if "inner" not in self.__dict__:
                raise AttributeError(name)
            return getattr(self.__dict__["inner"], name)

        def initialize_parameters(self, client_manager: Any) -> Any:
            return self.inner.initialize_parameters(client_manager)

        def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            return self.inner.configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> Any:
            kept = []
            for proxy, res in results:
                why = None if secure else problem(parameters_to_ndarrays(res.parameters), shapes)
                if why is None:
                    kept.append((proxy, res))
                else:
                    on_reject(server_round, str(getattr(proxy, "node_id", getattr(proxy, "cid", "?"))), why)
            if not kept:
                return None, {}
            base = _innermost(self.inner)
            before = {k: getattr(base, k) for k in SERVER_STATE if hasattr(base, k)}
            parameters, metrics = self.inner.aggregate_fit(server_round, kept, failures)
            if parameters is not None and problem(parameters_to_ndarrays(parameters), shapes) is not None:
                for k, v in before.items():  # the server optimiser's state as it was: the next round starts clean
                    setattr(base, k, v)
                on_reject(server_round, "aggregate", "the aggregate holds NaN or inf; the global model is kept")
                return None, metrics
            return parameters, metrics

        def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
            return self.inner.configure_evaluate(server_round, parameters, client_manager)

        def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]) -> Any:
            return self.inner.aggregate_evaluate(server_round, results, failures)

        def evaluate(self, server_round: int, parameters: Any) -> Any:
            return self.inner.evaluate(server_round, parameters)

    return Guard()
