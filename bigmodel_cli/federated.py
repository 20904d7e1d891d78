"""`bigmodel federated`: FedAvg of the configured Sequential over simulated clients, on Flower.

Each client holds one partition of the prep folder's train split (iid, Dirichlet label skew, or one client
per value of a column), trains the model for `local_epochs` on it, and returns its weights with its example
count; Flower's FedAvg strategy averages them weighted by count. The global model is evaluated on the
validation split after every round. The run folder is the same as `train` writes, so evaluate, export,
predict and compare accept it. Flower (`flwr[simulation]`) is the optional `federated` extra.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts
from .config import Config
from .errors import ConfigError, DataError
from .schema import Schema
from .train import TrainResult, load_split, write_run


def partitions(n_clients: int, y: np.ndarray | None, groups: pd.Series | None, cfg: Config) -> list[np.ndarray]:
    """Row positions of each client's partition of the train split."""
    f = cfg.federated
    rng = np.random.default_rng(cfg.seed)
    if f.partition == "by_column":
        codes = pd.factorize(groups, sort=True)[0]
        return [np.flatnonzero(codes == c) for c in range(codes.max() + 1)]
    if f.partition == "iid" or y is None:
        return [np.sort(p) for p in np.array_split(rng.permutation(len(y) if y is not None else len(groups)),
                                                  n_clients)]
    parts: list[list[int]] = [[] for _ in range(n_clients)]  # Dirichlet label skew (Hsu et al. 2019)
    for c in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == c))
        shares = rng.dirichlet(np.full(n_clients, f.alpha))
        for k, chunk in enumerate(np.split(rows, (np.cumsum(shares)[:-1] * len(rows)).astype(int))):
            parts[k].extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=int)) for p in parts]


def run(prep: Path, out: Path, cfg: Config) -> TrainResult:
    try:
        from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
        from flwr.clientapp import ClientApp
        from flwr.serverapp import Grid, ServerApp
        from flwr.serverapp.strategy import FedAvg
        from flwr.simulation import run_simulation
    except ImportError:
        raise ConfigError("bigmodel federated needs Flower: pip install 'bigmodel[federated]'") from None
    from . import features, model
    from .keras_env import import_keras

    prep_folder = artifacts.Folder(Path(prep), "prep")
    prep_manifest = prep_folder.manifest()
    schema = Schema.load(prep_folder.path)
    folder = artifacts.Folder(Path(out), "run")
    folder.prepare()
    import_keras(cfg.seed)
    started, t0 = artifacts.now(), time.perf_counter()
    encoder = features.preprocessing_model(schema)
    splits = {name: load_split(prep_folder.path, name) for name in ("train", "val")}
    x = {n: features.predict(encoder, features.to_inputs(df, schema, n)) for n, df in splits.items()}
    y = {n: schema.labels(df, n) for n, df in splits.items()}
    f = cfg.federated
    column = None
    if f.partition == "by_column":
        if f.column not in splits["train"].columns:
            raise DataError(f"federated.column: no column '{f.column}' in the prep folder's train split")
        column = splits["train"][f.column].astype(str)
    parts = partitions(f.clients, y["train"] if schema.is_classification else None, column, cfg)
    clients = len(parts)
    balance = [{c: int((y["train"][p] == i).sum()) for i, c in enumerate(schema.classes)} if schema.classes
               else {"rows": len(p)} for p in parts]
    if min(len(p) for p in parts) == 0:
        raise DataError("federated: a client got no rows; use fewer clients or a larger alpha")

    work = Path(tempfile.mkdtemp(prefix=".federated.", dir=folder.path))
    data_file = str(work / "train.npz")
    np.savez(data_file, x=x["train"], y=y["train"], **{f"part{k}": p for k, p in enumerate(parts)})
    n_inputs = x["train"].shape[1]
    server_model = model.build(cfg, schema, n_inputs)
    history: list[dict[str, float]] = []
    final: dict[str, Any] = {}

    client_app = ClientApp()

    @client_app.train()
    def local_train(msg: Message, context: Context) -> Message:
        from bigmodel_cli import model as client_model
        from bigmodel_cli.keras_env import import_keras as client_keras

        pid = int(context.node_config["partition-id"])
        client_keras(cfg.seed + pid)
        with np.load(data_file) as d:
            rows = d[f"part{pid}"]
            xs, ys = d["x"][rows], d["y"][rows]
        net = client_model.build(cfg, schema, n_inputs)
        net.set_weights(msg.content["arrays"].to_numpy_ndarrays())
        h = net.fit(xs, ys, epochs=f.local_epochs, batch_size=cfg.train.batch_size, verbose=0, shuffle=True)
        metrics = MetricRecord({"train_loss": float(h.history["loss"][-1]), "num-examples": len(ys)})
        return Message(RecordDict({"arrays": ArrayRecord(net.get_weights()), "metrics": metrics}), reply_to=msg)

    def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        server_model.set_weights(arrays.to_numpy_ndarrays())
        values = server_model.evaluate(x["val"], y["val"], verbose=0, return_dict=True)
        if server_round > 0:
            history.append({f"val_{k}": float(v) for k, v in values.items()})
        return MetricRecord({k: float(v) for k, v in values.items()})

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=f.fraction_fit, fraction_evaluate=0.0,
                          min_train_nodes=min(f.min_clients, clients), min_available_nodes=min(f.min_clients, clients))
        result = strategy.start(grid=grid, initial_arrays=ArrayRecord(server_model.get_weights()),
                                num_rounds=f.rounds, evaluate_fn=central_eval)
        final["weights"] = result.arrays.to_numpy_ndarrays()

    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=clients,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"num_cpus": 2, "include_dashboard": False}})
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    if "weights" not in final:
        raise DataError("federated: the simulation ended without a global model (see the log above)")
    server_model.set_weights(final["weights"])
    hist = pd.DataFrame(history)
    hist.insert(0, "epoch", np.arange(1, len(hist) + 1))
    best = len(hist)  # the final global model is the one written
    seconds = time.perf_counter() - t0
    result = write_run(folder, prep_folder, prep_manifest, schema, cfg, server_model, hist, best, {
        "started": started, "seconds": round(seconds, 3), "epochs_run": len(hist), "best_epoch": best,
        "threshold": 0.5 if schema.task == "binary" else None, "privacy": None,
        "federated": {"clients": clients, "rounds": f.rounds, "partition": f.partition, "class_balance": balance}})
    return TrainResult(folder.path, len(hist), best, result, seconds)
