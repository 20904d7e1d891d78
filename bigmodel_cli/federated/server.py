"""The server side of `bigmodel federated`: the round loop over the global model, with early stopping; its
checkpoint is checkpoint.py's, the run folder it ends with run_folder.py's.

Each client trains the model for `local_epochs` on its own rows and returns its weights with its example
count; Flower's FedAvg strategy averages them weighted by count (θ = Σ n_k θ_k / Σ n_k). The global model is
evaluated on the validation split after every round and, as in `train`, early stopping on its validation loss
ends the rounds and keeps the best round's model (budget.py). After every round the server's state goes to
RUN_DIR/checkpoint/, so an interrupted run continues with --resume. The run folder is the one `train` writes,
so evaluate, export, predict and compare accept it.

Options, all Flower's own: `secure_aggregation` runs the SecAgg+ workflow (clients mask their updates, the
server only ever sees the masked sum); `privacy` wraps the strategy in Flower's client-level DP wrappers
(each update clipped to an L2 norm, fixed or adaptive, and Gaussian noise added to the average), with ε after
each round from dp-accounting's RDP accountant.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import artifacts, interrupts, portable
from ..config import Config
from ..errors import ConfigError
from ..folders import Prep, open_prep
from ..training.rules import Stopper
from . import checkpoint
from .budget import Budget, budget, epsilon
from .checkpoint import Progress


def need_flwr() -> None:
    """Fail with the install hint when Flower (the `federated` extra) is missing; imports nothing."""
    import importlib.util

    if importlib.util.find_spec("flwr") is None:
        raise ConfigError("bigmodel federated needs Flower: pip install 'bigmodel[federated]'")


def flwr() -> Any:
    """Flower, imported after Keras (with TensorFlow's start-up logs silenced, before Flower and Ray may import it)."""
    from ..keras_env import import_keras

    need_flwr()
    import_keras()
    import flwr as module

    return module


@dataclass
class Federation:
    """The server side: the prep folder's validation split, the global model, the strategy, the history.
    Made by `Federation.open`, which reads the prep folder (and, resuming, the checkpoint) and builds the model."""

    prep: Prep
    folder: artifacts.Folder
    cfg: Config
    encoder: Any
    model: Any
    x_val: np.ndarray
    y_val: np.ndarray
    budget: Budget
    stopper: Stopper
    started: str
    t0: float
    on_round: Any = None  # (round, rounds, metrics) after each round, for progress
    on_warning: Any = None  # (message): an update dropped by the guard
    progress: Progress = field(default_factory=Progress)  # the rounds so far: what the checkpoint holds
    cancel: threading.Event = field(default_factory=threading.Event)  # set: the rounds stop (an interrupt)
    _strategy: Any = None
    _round: dict[str, float] = field(default_factory=dict)

    @property
    def schema(self) -> Any:
        return self.prep.schema

    @property
    def first_round(self) -> int:
        return len(self.progress.history) + 1

    @property
    def stopped(self) -> bool:
        return self.stopper.stopped

    @classmethod
    def open(cls, prep: Path, out: Path, cfg: Config, on_round: Any = None, verbose: bool = False,
             resume: bool = False) -> Federation:
        from .. import features, model
        from ..keras_env import import_keras

        flwr()
        if not verbose:  # Flower logs every message at INFO (and deprecations at WARNING); one line per round instead
            logging.getLogger("flwr").setLevel(logging.ERROR)
        prepared = open_prep(Path(prep))
        portable.why_not(cfg, prepared.schema)  # train.portable: true that cannot be kept: say so before any round
        folder = artifacts.Folder(Path(out), "run")
        folder.prepare()
        import_keras(cfg.seed)
        started, t0 = artifacts.now(), time.perf_counter()
        encoder = features.preprocessing_model(prepared.schema)
        x_val, y_val = encode(encoder, prepared.schema, prepared.split("val"), "the val split")
        if len(y_val) == 0:
            raise ConfigError("federated: the server evaluates the global model on the validation split, and the "
                              "prep folder has none; preprocess with data.split.val > 0")
        net = model.build(cfg, prepared.schema, x_val.shape[1])
        if cfg.federated.privacy is not None:
            # Flower's DP wrappers draw the noise from NumPy's global generator, which import_keras seeded with
            # cfg.seed, a number every client is sent: noise that anyone could regenerate and subtract protects
            # nothing. So it is drawn from the OS's entropy (a DP run is not reproducible bit for bit)
            np.random.seed(secrets.randbits(32))
        es = cfg.train.early_stopping
        plan = budget(cfg, prepared.split_rows("train"))
        fed = cls(prepared, folder, cfg, encoder, net, x_val, y_val, plan, Stopper(es.monitor, plan.patience,
                  es.min_delta), started, t0, on_round)
        if resume:
            fed.progress = checkpoint.load(fed.checkpoint_dir, cfg, prepared, len(net.get_weights()), fed.stopper)
        return fed

    def encode(self, df: pd.DataFrame, source: str) -> tuple[np.ndarray, np.ndarray]:
        return encode(self.encoder, self.schema, df, source)

    def strategy(self, n_clients: int) -> Any:
        """Flower's strategy by `federated.strategy` / `aggregation` (strategies.py), in Flower's DP wrapper when
        `federated.privacy` is set, behind the guard that drops NaN / mis-shaped updates."""
        from flwr.common import ndarrays_to_parameters
        from flwr.server import strategy as fs

        from . import strategies

        f = self.cfg.federated
        sampled = max(1, min(n_clients, int(f.fraction_fit * n_clients)), min(f.min_clients, n_clients))
        config_yaml = self.cfg.to_yaml()
        weights = self.progress.weights
        start = weights if weights is not None else self.model.get_weights()
        base = strategies.build(f, dict(
            fraction_fit=f.fraction_fit, fraction_evaluate=0.0, min_fit_clients=sampled,
            min_evaluate_clients=0, min_available_clients=max(sampled, min(f.min_clients, n_clients)),
            evaluate_fn=self._evaluate, on_fit_config_fn=lambda r: {"config": config_yaml, "round": r},
            fit_metrics_aggregation_fn=self._fit_metrics, initial_parameters=ndarrays_to_parameters(start)))
        shapes = [tuple(w.shape) for w in self.model.get_weights()]
        p = f.privacy
        if p is None:
            return strategies.guarded(base, shapes, self._reject, f.secure_aggregation)
        client_side = f.secure_aggregation  # the server sees only the masked sum: clients must clip
        if p.clipping == "fixed":
            fixed = (fs.DifferentialPrivacyClientSideFixedClipping if client_side
                     else fs.DifferentialPrivacyServerSideFixedClipping)
            return strategies.guarded(fixed(base, noise_multiplier=p.noise_multiplier, clipping_norm=p.clipping_norm,
                                            num_sampled_clients=sampled), shapes, self._reject,
                                      f.secure_aggregation)
        adaptive = (fs.DifferentialPrivacyClientSideAdaptiveClipping if client_side
                    else fs.DifferentialPrivacyServerSideAdaptiveClipping)
        return strategies.guarded(adaptive(base, noise_multiplier=p.noise_multiplier, num_sampled_clients=sampled,
                                           initial_clipping_norm=self.progress.clipping_norm or p.clipping_norm,
                                           target_clipped_quantile=p.target_quantile), shapes, self._reject,
                                  f.secure_aggregation)

    def _reject(self, server_round: int, node: str, why: str) -> None:
        """An update the guard dropped: counted in the round's history row, and a warning line."""
        self._round["rejected"] = self._round.get("rejected", 0) + 1
        message = (f"federated round {server_round}: {why}" if node == "aggregate" else
                   f"federated round {server_round}: dropped the update of node {node}: {why}")
        logging.getLogger("bigmodel").warning(message)
        if self.on_warning is not None:
            self.on_warning(message)

    def run_rounds(self, grid: Any, context: Any, n_clients: int, max_weight: float) -> None:
        """The server's main on Flower's Grid: the rounds (through the SecAgg+ workflow when asked) until the
        budget is spent or early stopping ends them. Flower's DefaultWorkflow runs a fixed number of rounds;
        this is its loop with a stop, starting after the checkpoint's last round when resuming."""
        from flwr.app import ConfigRecord
        from flwr.server import LegacyContext, ServerConfig
        from flwr.server.compat.app_utils import start_update_client_manager_thread
        from flwr.server.workflow import SecAggPlusWorkflow
        from flwr.server.workflow import default_workflows as flow
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key

        if self.cfg.federated.secure_aggregation and n_clients < 3:
            raise ConfigError(f"federated.secure_aggregation needs 3 or more clients, got {n_clients}")
        grid = CancellableGrid(grid, self.cancel)
        fit = (SecAggPlusWorkflow(num_shares=n_clients, reconstruction_threshold=max(2, n_clients - 1),
                                  max_weight=max_weight)
               if self.cfg.federated.secure_aggregation else flow.default_fit_workflow)
        self._strategy = self.strategy(n_clients)
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=self.budget.rounds),
                               strategy=self._strategy)
        thread, stop_thread, clients_ready = start_update_client_manager_thread(grid, legacy.client_manager)
        try:
            clients_ready.wait()
            flow.default_init_params_workflow(grid, legacy)
            state = ConfigRecord()
            state[Key.START_TIME] = time.perf_counter()
            legacy.state.config_records[MAIN_CONFIGS_RECORD] = state
            for server_round in range(self.first_round, self.budget.rounds + 1):
                if self.stopped:
                    break
                interrupts.check()  # a Ctrl-C / SIGTERM whose exception was swallowed in the last round
                state[Key.CURRENT_ROUND] = server_round
                fit(grid, legacy)
                flow.default_centralized_evaluation_workflow(grid, legacy)
        finally:
            stop_thread.set()
            thread.join()

    def _fit_metrics(self, results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        rows = sum(int(m.get("rows", 0)) for _, m in results)
        self._round.update({"clients": len(results), "train_loss": float(
            sum(float(m["train_loss"]) * int(m.get("rows", 1)) for _, m in results) / max(rows, 1))})
        return {}

    def _evaluate(self, server_round: int, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        self.model.set_weights(parameters)
        values = self.model.evaluate(self.x_val, self.y_val, verbose=0, return_dict=True)
        if server_round > 0:
            row = {"loss": self._round.get("train_loss", float("nan")),
                   **{f"val_{k}": float(v) for k, v in values.items()},
                   "clients": self._round.get("clients", 0), "rejected": self._round.get("rejected", 0)}
            if self.cfg.federated.privacy is not None:
                row["epsilon"] = epsilon(server_round, self.cfg.federated.privacy)
            self.progress.history.append(row)
            self.progress.weights = parameters
            if self.stopper.patience is not None:
                if self.stopper.monitor not in row:
                    raise ConfigError(f"train.early_stopping.monitor: '{self.stopper.monitor}' is not logged; "
                                      f"choose one of {', '.join(k for k in row if k not in ('clients', 'rejected'))}")
                if self.stopper.update(server_round, row[self.stopper.monitor]):
                    self.progress.best_weights = parameters
            if self.cfg.federated.privacy:
                self.progress.clipping_norm = getattr(self._strategy, "clipping_norm", None)
            checkpoint.save(self.checkpoint_dir, self.progress, self.stopper, self.cfg, self.prep)
            if self.on_round is not None:
                self.on_round(server_round, self.budget.rounds,
                              {k: v for k, v in row.items() if k not in ("clients", "rejected")})
            self._round = {}
        return float(values["loss"]), {}

    @property
    def checkpoint_dir(self) -> Path:
        return self.folder / artifacts.CHECKPOINT

class Cancelled(RuntimeError):
    """The rounds were stopped from outside (Ctrl-C in the process that runs them)."""


class CancellableGrid:
    """Flower's Grid whose send_and_receive gives up when `cancel` is set: Flower's own waits for the replies
    with no way to stop, so a simulation interrupted while clients train would hang at exit, waiting for the
    ServerApp thread. Everything else is the wrapped grid's."""

    def __init__(self, grid: Any, cancel: threading.Event) -> None:
        self._grid, self._cancel = grid, cancel

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        waiting = set(self._grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Any] = []
        while waiting and (end is None or time.monotonic() < end):
            if self._cancel.is_set():
                raise Cancelled("federated: the rounds were interrupted")
            got = list(self._grid.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if waiting:
                time.sleep(0.1)
        return replies


def encode(encoder: Any, schema: Any, df: pd.DataFrame, source: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's rows through the fitted preprocessing, and their labels."""
    from .. import features

    return features.apply(encoder, features.to_inputs(df, schema, source)), schema.labels(df, source)

