"""`bigmodel federated PREP_DIR`: K simulated clients on Flower's simulation engine (Ray), on one machine.

The train split is dealt out to the clients (iid, Dirichlet label skew, or one client per value of a column);
the server (server.Federation) and the client (client.KerasClient) are the deployment's.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import Config
from ..errors import ConfigError, DataError
from ..folders import open_prep
from . import run_folder
from .budget import budget
from .client import KerasClient, client_mod, note_status
from .processes import follow, job_folder, process
from .run_folder import FederatedResult, tracked
from .server import Federation, flwr, need_flwr


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


@dataclass(frozen=True)
class SimulationOptions:
    """What `federated run` is asked to do."""

    prep: Path  # the prep folder (its train split is partitioned among the clients)
    out: Path  # the run folder to write
    config: Config  # resolved (config.resolve)
    resume: bool = False  # continue the interrupted run in `out` from its last complete round
    verbose: bool = False  # Flower's and Ray's logs on stderr


def run(options: SimulationOptions, on_event: Any = None) -> FederatedResult:
    """`bigmodel federated run`: K simulated clients on Flower's simulation engine, in a child process (Ray's
    driver takes over its process's signals); `on_event` hears every round. Interrupted, the child gets SIGINT
    (it stops between messages), then the family SIGTERM / SIGKILL; the checkpoint of the last complete round
    stays."""
    prep, out, cfg, on_round = options.prep, options.out, options.config, on_event
    verbose, resume = options.verbose, options.resume
    if cfg.federated.engine == "deployment":
        raise ConfigError("federated.engine is deployment: start `bigmodel federated serve` and a "
                          "`bigmodel federated join` per client instead")
    need_flwr()
    budget(cfg, open_prep(Path(prep)).split_rows("train"))  # a budget that fits no round fails here, first
    with job_folder(prep, out, cfg.to_yaml(), verbose, resume) as j:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
        def rounds(hook: Any) -> FederatedResult:
            with process([sys.executable, "-m", __name__, str(j.file)], j.work / "simulation.log", env, verbose,
                         gentle=signal.SIGINT) as child:
                record = follow(j.status, child, j.work / "simulation.log", hook, "the simulation")
            return FederatedResult.from_dict(record["result"])

        return tracked(cfg, prep, out, on_round, rounds)


def main(job_file: str) -> None:
    """The child: run the job, report each round and the result (or the user error) in the status file."""
    import yaml

    from ..config import validate
    from ..errors import BigModelError

    job = json.loads(Path(job_file).read_text())
    status = Path(job["status"])
    try:
        cfg = validate(yaml.safe_load(job["config"]), "the simulation's config")
        result = _simulate(Path(job["prep"]), Path(job["out"]), cfg,
                           lambda r, n, m: note_status(status, {"round": r, "rounds": n, "metrics": m}),
                           bool(job["verbose"]), bool(job["resume"]), Path(job["work"]),
                           lambda message: note_status(status, {"warning": message}))
        record: dict[str, Any] = {"result": result.to_dict()}
    except BigModelError as e:
        record = {"error": str(e)}
    except KeyboardInterrupt:
        sys.exit(130)
    note_status(status, record)


def _simulate(prep: Path, out: Path, cfg: Config, on_round: Any, verbose: bool, resume: bool,
              work: Path, on_warning: Any = None) -> FederatedResult:
    """The simulation itself, in the child process: the server and K clients on Ray (the encoded train split
    in `work`, the parent's temporary folder)."""
    flwr()
    from flwr.client import ClientApp
    from flwr.common import Context
    from flwr.server import ServerApp
    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # no GPUs asked for: Ray's own advice
    fed = Federation.open(prep, out, cfg, on_round, verbose, resume)
    fed.on_warning = on_warning
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
    data_file = str(work / "train.npz")
    arrays: dict[str, Any] = {"x": x, "y": y, **{f"part{k}": p for k, p in enumerate(parts)}}
    np.savez(data_file, **arrays)
    seed = cfg.seed

    def client_fn(context: Context) -> Any:
        pid = int(context.node_config["partition-id"])
        dishonest = f.attack if f.attack is not None and pid < f.attack.clients else None
        with np.load(data_file) as d:
            rows = d[f"part{pid}"]
            return KerasClient(schema, d["x"][rows], d["y"][rows], seed + pid, attack=dishonest).to_client()

    server_app = ServerApp()
    max_weight = float(1 if f.privacy else max(len(p) for p in parts))

    @server_app.main()
    def main(grid: Any, context: Context) -> None:
        fed.run_rounds(grid, context, len(parts), max_weight)

    loud = verbose
    workers = min(len(parts), os.cpu_count() or 1) if f.workers == "auto" else f.workers
    try:
        run_simulation(server_app=server_app, client_app=ClientApp(client_fn=client_fn, mods=[client_mod]),
                       num_supernodes=len(parts),
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": workers, "include_dashboard": False,
                                                     "log_to_driver": loud,  # clients' logs: --verbose
                                                     "logging_level": logging.INFO if loud else logging.ERROR}},
                       verbose_logging=loud)
    except BaseException:  # Ctrl-C: stop the ServerApp thread, or the exit waits for it forever
        fed.cancel.set()
        raise
    finally:
        Path(data_file).unlink(missing_ok=True)
    return run_folder.write(fed, {"clients": len(parts), "partition": f.partition, "class_balance": balance})


if __name__ == "__main__":
    main(sys.argv[1])
