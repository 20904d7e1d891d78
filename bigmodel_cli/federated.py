"""`bigmodel federated`: FedAvg of the configured Sequential over clients, on Flower.

Each client trains the model for `local_epochs` on its own rows and returns its weights with its example
count; Flower's FedAvg strategy averages them weighted by count (θ = Σ n_k θ_k / Σ n_k). The global model
is evaluated on the validation split after every round; the run folder is the same as `train` writes, so
evaluate, export, predict and compare accept it.

Two engines, one server (`Federation`) and one client (`KerasClient`):
- simulation (`bigmodel federated PREP_DIR`): Flower's simulation engine (Ray) runs K clients, each on a
  partition of the train split (iid, Dirichlet label skew, or one client per value of a column);
- deployment (`bigmodel federated serve` / `bigmodel federated join`): Flower's deployment runtime, a
  SuperLink and SuperNodes in separate processes or hosts; see federated_deploy.py.

Options, all Flower's own: `secure_aggregation` runs the SecAgg+ workflow (clients mask their updates, the
server only ever sees the masked sum); `privacy` wraps the strategy in Flower's client-level DP wrappers
(each update clipped to an L2 norm, fixed or adaptive, and Gaussian noise added to the average), with ε after
each round from dp-accounting's RDP accountant. Flower (`flwr[simulation]`) is the optional `federated` extra.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts
from .config import Config, FederatedPrivacyConfig
from .errors import ConfigError, DataError
from .folders import Prep, open_prep, write_run
from .schema import Schema


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

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "rounds": self.rounds, "kept_round": self.kept_round, "final": self.final,
                "seconds": round(self.seconds, 3), "budget_stop": self.budget_stop}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> FederatedResult:
        return cls(Path(doc["out"]), doc["rounds"], doc["kept_round"], doc["final"], doc["seconds"],
                   doc.get("budget_stop"))


def need_flwr() -> None:
    """Fail with the install hint when Flower (the `federated` extra) is missing; imports nothing."""
    import importlib.util

    if importlib.util.find_spec("flwr") is None:
        raise ConfigError("bigmodel federated needs Flower: pip install 'bigmodel[federated]'")


def _flwr() -> Any:
    from .keras_env import import_keras

    need_flwr()
    import_keras()  # first: with TensorFlow's start-up logs silenced, before Flower and Ray may import it
    import flwr

    return flwr


def partitions(n_rows: int, n_clients: int, y: np.ndarray | None, groups: pd.Series | None,
               cfg: Config) -> list[np.ndarray]:
    """Row positions of each client's partition of the train split (y: class codes, None for regression)."""
    f = cfg.federated
    rng = np.random.default_rng(cfg.seed)
    if f.partition == "by_column":
        codes = pd.factorize(groups, sort=True)[0]
        return [np.flatnonzero(codes == c) for c in range(codes.max() + 1)]
    if f.partition == "iid" or y is None:  # Dirichlet label skew needs labels: regression falls back to iid
        return [np.sort(p) for p in np.array_split(rng.permutation(n_rows), n_clients)]
    for _ in range(100):  # Dirichlet label skew (Hsu et al. 2019), redrawn until no client is empty
        parts: list[list[int]] = [[] for _ in range(n_clients)]
        for c in np.unique(y):
            rows = rng.permutation(np.flatnonzero(y == c))
            shares = rng.dirichlet(np.full(n_clients, f.alpha))
            for k, chunk in enumerate(np.split(rows, (np.cumsum(shares)[:-1] * len(rows)).astype(int))):
                parts[k].extend(chunk.tolist())
        if min(map(len, parts)) > 0:
            break
    return [np.sort(np.array(p, dtype=int)) for p in parts]


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


def planned_rounds(cfg: Config) -> int:
    """The rounds to run: federated.rounds, or fewer when the privacy budget runs out (none fit: a config error)."""
    p = cfg.federated.privacy
    rounds = affordable_rounds(cfg.federated.rounds, p) if p else cfg.federated.rounds
    if rounds == 0:
        raise ConfigError(f"federated.privacy.max_epsilon {p.max_epsilon}: one round already spends "
                         f"ε={epsilon(1, p):.3g}; raise max_epsilon or noise_multiplier")
    return rounds


class KerasClient:
    """One Flower client: trains the model the server's config describes on its own (encoded) rows.

    The server sends the config with every round, so a client needs only the prep folder's schema and
    its data; it answers with its weights and example count (1 under DP: every client weighs alike)."""

    def __init__(self, schema: Schema, x: np.ndarray, y: np.ndarray, seed: int, status: Path | None = None) -> None:
        self.schema, self.x, self.y, self.seed, self.status = schema, x, y, seed, status

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        import yaml

        from . import model
        from .config import validate
        from .keras_env import import_keras

        cfg = validate(yaml.safe_load(str(config["config"])), "the server's config")
        import_keras(self.seed + 1000 * int(config["round"]))
        net = model.build(cfg, self.schema, self.x.shape[1])
        net.set_weights(parameters)
        h = net.fit(self.x, self.y, epochs=cfg.federated.local_epochs, batch_size=cfg.train.batch_size,
                    verbose=0, shuffle=True)
        weight = 1 if cfg.federated.privacy is not None else len(self.y)
        note_status(self.status, {"round": int(config["round"])})
        return net.get_weights(), weight, {"train_loss": float(h.history["loss"][-1]), "rows": len(self.y)}

    def properties(self, config: dict[str, Any]) -> dict[str, Any]:
        """The server's questions outside the rounds: the row count, and "done" at the end."""
        if config.get("done"):
            note_status(self.status, {"done": True})
        return {"rows": len(self.y)}

    def to_client(self) -> Any:
        from flwr.client import NumPyClient

        outer = self

        class _Client(NumPyClient):  # type: ignore[misc]
            def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
                return outer.fit(parameters, config)

            def get_properties(self, config: dict[str, Any]) -> Any:
                return outer.properties(config)

        return _Client().to_client()


def client_mod(msg: Any, context: Any, call_next: Any) -> Any:
    """The clients' Flower mod: SecAgg+ when the server's message runs that protocol, then client-side
    clipping when the server's DP wrapper asks for it (it does only under SecAgg+: the server never sees
    one client's update). One mod for every config, since a client learns the config from the server."""
    from flwr.client import mod
    from flwr.common import MessageType
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return mod.secaggplus_mod(msg, context, lambda m, c: _clipping_mod(m, c, call_next))
    return _clipping_mod(msg, context, call_next)


def _clipping_mod(msg: Any, context: Any, call_next: Any) -> Any:
    import yaml
    from flwr.client import mod
    from flwr.compat.common import recorddict_compat as compat
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    config = compat.recorddict_to_fitins(msg.content, keep_input=True).config
    if KEY_CLIPPING_NORM not in config:
        return call_next(msg, context)
    fixed = yaml.safe_load(str(config["config"]))["federated"]["privacy"]["clipping"] == "fixed"
    return (mod.fixedclipping_mod if fixed else mod.adaptiveclipping_mod)(msg, context, call_next)


def note_status(status: Path | None, record: dict[str, Any]) -> None:
    """Append one JSON record to a status file (the channel from Flower's app processes to ours)."""
    if status is not None:
        with open(status, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_status(status: Path) -> list[dict[str, Any]]:
    """The status file's complete records (a line still being written is left for the next read)."""
    text = status.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


@dataclass
class Federation:
    """The server side: the prep folder's validation split, the global model, the strategy, the history.
    Made by `Federation.open`, which reads the prep folder and builds the model."""

    prep: Prep
    folder: artifacts.Folder
    cfg: Config
    encoder: Any
    model: Any
    x_val: np.ndarray
    y_val: np.ndarray
    rounds: int  # planned: federated.rounds, or fewer within the privacy budget
    started: str
    t0: float
    on_round: Any = None  # (round, rounds, metrics) after each round, for progress
    history: list[dict[str, float]] = field(default_factory=list)
    final: list[np.ndarray] | None = None
    _round: dict[str, float] = field(default_factory=dict)

    @property
    def schema(self) -> Any:
        return self.prep.schema

    @classmethod
    def open(cls, prep: Path, out: Path, cfg: Config, on_round: Any = None, verbose: bool = False) -> Federation:
        from . import features, model
        from .keras_env import import_keras

        _flwr()
        if not verbose:  # Flower logs every message at INFO; the CLI shows one line per round instead
            logging.getLogger("flwr").setLevel(logging.WARNING)
        prepared = open_prep(Path(prep))
        folder = artifacts.Folder(Path(out), "run")
        folder.prepare()
        import_keras(cfg.seed)
        started, t0 = artifacts.now(), time.perf_counter()
        encoder = features.preprocessing_model(prepared.schema)
        x_val, y_val = encode(encoder, prepared.schema, prepared.split("val"), "the val split")
        net = model.build(cfg, prepared.schema, x_val.shape[1])
        return cls(prepared, folder, cfg, encoder, net, x_val, y_val, planned_rounds(cfg), started, t0, on_round)

    def encode(self, df: pd.DataFrame, source: str) -> tuple[np.ndarray, np.ndarray]:
        return encode(self.encoder, self.schema, df, source)

    def strategy(self, n_clients: int) -> Any:
        """Flower's FedAvg, wrapped in its DP wrapper when `federated.privacy` is set."""
        from flwr.common import ndarrays_to_parameters
        from flwr.server import strategy as fs

        f = self.cfg.federated
        sampled = max(1, min(n_clients, int(f.fraction_fit * n_clients)), min(f.min_clients, n_clients))
        config_yaml = self.cfg.to_yaml()
        base = fs.FedAvg(
            fraction_fit=f.fraction_fit, fraction_evaluate=0.0, min_fit_clients=sampled,
            min_evaluate_clients=0, min_available_clients=max(sampled, min(f.min_clients, n_clients)),
            evaluate_fn=self._evaluate, on_fit_config_fn=lambda r: {"config": config_yaml, "round": r},
            fit_metrics_aggregation_fn=self._fit_metrics,
            initial_parameters=ndarrays_to_parameters(self.model.get_weights()))
        p = f.privacy
        if p is None:
            return base
        client_side = f.secure_aggregation  # the server sees only the masked sum: clients must clip
        if p.clipping == "fixed":
            cls = (fs.DifferentialPrivacyClientSideFixedClipping if client_side
                   else fs.DifferentialPrivacyServerSideFixedClipping)
            return cls(base, noise_multiplier=p.noise_multiplier, clipping_norm=p.clipping_norm,
                       num_sampled_clients=sampled)
        cls = (fs.DifferentialPrivacyClientSideAdaptiveClipping if client_side
               else fs.DifferentialPrivacyServerSideAdaptiveClipping)
        return cls(base, noise_multiplier=p.noise_multiplier, num_sampled_clients=sampled,
                   initial_clipping_norm=p.clipping_norm, target_clipped_quantile=p.target_quantile)

    def run_rounds(self, grid: Any, context: Any, n_clients: int, max_weight: float) -> None:
        """The server's main on Flower's Grid: FedAvg rounds, through the SecAgg+ workflow when asked."""
        from flwr.server import LegacyContext, ServerConfig
        from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

        if self.cfg.federated.secure_aggregation and n_clients < 3:
            raise ConfigError(f"federated.secure_aggregation needs 3 or more clients, got {n_clients}")
        fit = (SecAggPlusWorkflow(num_shares=n_clients, reconstruction_threshold=max(2, n_clients - 1),
                                  max_weight=max_weight)
               if self.cfg.federated.secure_aggregation else None)
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=self.rounds),
                               strategy=self.strategy(n_clients))
        DefaultWorkflow(fit_workflow=fit)(grid, legacy)

    def _fit_metrics(self, results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        rows = sum(int(m.get("rows", 0)) for _, m in results)
        self._round = {"clients": len(results), "train_loss": float(
            sum(float(m["train_loss"]) * int(m.get("rows", 1)) for _, m in results) / max(rows, 1))}
        return {}

    def _evaluate(self, server_round: int, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
        self.model.set_weights(parameters)
        values = self.model.evaluate(self.x_val, self.y_val, verbose=0, return_dict=True)
        if server_round > 0:
            row = {"loss": self._round.get("train_loss", float("nan")),
                   **{f"val_{k}": float(v) for k, v in values.items()},
                   "clients": self._round.get("clients", 0)}
            if self.cfg.federated.privacy is not None:
                row["epsilon"] = epsilon(server_round, self.cfg.federated.privacy)
            self.history.append(row)
            if self.on_round is not None:
                self.on_round(server_round, self.rounds, {k: v for k, v in row.items() if k != "clients"})
            self.final = parameters
            self._round = {}
        return float(values["loss"]), {}

    def finish(self, extra: dict[str, Any]) -> FederatedResult:
        """Write the run folder with the last round's global model (within the privacy budget)."""
        if self.final is None:
            raise DataError("federated: no round finished, so there is no global model (see the log above)")
        self.model.set_weights(self.final)
        hist = pd.DataFrame(self.history)
        hist.insert(0, "epoch", np.arange(1, len(hist) + 1))  # epoch = round
        kept = len(hist)  # the final global model is the one written
        seconds = time.perf_counter() - self.t0
        f, p = self.cfg.federated, self.cfg.federated.privacy
        privacy = None if p is None else {
            "level": "client", "epsilon": float(hist["epsilon"].iloc[-1]), "delta": p.delta,
            "noise_multiplier": p.noise_multiplier, "clipping": p.clipping, "clipping_norm": p.clipping_norm,
            "max_epsilon": p.max_epsilon, "accountant": "dp-accounting RDP, no sampling amplification"}
        final = write_run(self.folder, self.prep, self.cfg, self.model, hist, kept, {
            "started": self.started, "seconds": round(seconds, 3), "epochs_run": len(hist), "best_epoch": kept,
            "threshold": 0.5 if self.schema.task == "binary" else None, "privacy": privacy,
            "federated": {"engine": f.engine, "rounds": len(hist), "rounds_asked": f.rounds,
                          "secure_aggregation": f.secure_aggregation, **extra}})
        stop = None
        if len(hist) < f.rounds and p is not None and p.max_epsilon is not None:
            stop = (f"federated.privacy.max_epsilon {p.max_epsilon}: stopped after {len(hist)} of {f.rounds} rounds "
                    f"(ε={final['epsilon']:.3g}); round {len(hist) + 1} would spend ε={epsilon(len(hist) + 1, p):.3g}")
        return FederatedResult(self.folder.path, len(hist), kept, final, seconds, stop)


def encode(encoder: Any, schema: Any, df: pd.DataFrame, source: str) -> tuple[np.ndarray, np.ndarray]:
    """A split's rows through the fitted preprocessing, and their labels."""
    from . import features

    return features.apply(encoder, features.to_inputs(df, schema, source)), schema.labels(df, source)


def simulate(prep: Path, out: Path, cfg: Config, on_round: Any = None, verbose: bool = False) -> FederatedResult:
    """`bigmodel federated`: K simulated clients on Flower's simulation engine."""
    if cfg.federated.engine == "deployment":
        raise ConfigError("federated.engine is deployment: start `bigmodel federated serve` and a "
                          "`bigmodel federated join` per client instead")
    _flwr()
    from flwr.client import ClientApp
    from flwr.common import Context
    from flwr.server import ServerApp
    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs asked for: Ray's own advice
    fed = Federation.open(prep, out, cfg, on_round, verbose)
    f = cfg.federated
    train = fed.prep.split("train")
    x, y = fed.encode(train, "the train split")
    column = None
    if f.partition == "by_column":
        if f.column not in train.columns:
            raise DataError(f"federated.column: no column '{f.column}' in the prep folder's train split")
        column = train[f.column].astype(str)
    schema = fed.schema
    parts = partitions(len(y), f.clients, y if schema.is_classification else None, column, cfg)
    if min(len(p) for p in parts) == 0:
        raise DataError("federated: a client got no rows; use fewer clients or a larger alpha")
    balance = [{c: int((y[p] == i).sum()) for i, c in enumerate(schema.classes)} if schema.classes
               else {"rows": len(p)} for p in parts]
    work = Path(tempfile.mkdtemp(prefix=".federated.", dir=fed.folder.path))
    data_file = str(work / "train.npz")
    np.savez(data_file, x=x, y=y, **{f"part{k}": p for k, p in enumerate(parts)})
    seed = cfg.seed

    def client_fn(context: Context) -> Any:
        pid = int(context.node_config["partition-id"])
        with np.load(data_file) as d:
            rows = d[f"part{pid}"]
            return KerasClient(schema, d["x"][rows], d["y"][rows], seed + pid).to_client()

    server_app = ServerApp()
    max_weight = float(1 if f.privacy else max(len(p) for p in parts))

    @server_app.main()
    def main(grid: Any, context: Context) -> None:
        fed.run_rounds(grid, context, len(parts), max_weight)

    loud = verbose
    try:
        run_simulation(server_app=server_app, client_app=ClientApp(client_fn=client_fn, mods=[client_mod]),
                       num_supernodes=len(parts),
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": 2, "include_dashboard": False,
                                                     "log_to_driver": loud,  # clients' logs: --verbose
                                                     "logging_level": logging.INFO if loud else logging.ERROR}},
                       verbose_logging=loud)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return fed.finish({"clients": len(parts), "partition": f.partition, "class_balance": balance})
