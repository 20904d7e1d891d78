"""Federated training on Flower's simulation engine: FedAvg against centralized training, skewed partitions."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .conftest import PENGUINS, bm, free_port, read_json

pytest.importorskip("flwr", reason="the federated extra is not installed")
# under `pytest -n` (make test) the simulations are two groups, each on one worker (each simulation starts a Ray
# cluster of its own; two at once is what two cores hold), and the deployment tests, without Ray, a third
pytestmark = pytest.mark.xdist_group("ray-a")

# federated.workers=1: one Ray actor (one TensorFlow start-up, ~8 CPU-s less per simulation; the same rounds, tested
# in test_interrupted_simulation_resumes), as the other pytest worker holds the second core anyway
ONE = ["--set", "federated.workers=1"]
FAST = ["--set", "train.optimizer.learning_rate=0.01", "--set", "train.tensorboard=false",
        "--set", "train.early_stopping.enabled=false", "--set", "federated.local_epochs=1", *ONE]


@pytest.mark.xdist_group("ray-b")
def test_defaults_match_centralized_training(penguins_prep, tmp_path):
    """No federated setting but the clients: FedAvg of 4 IID clients is within 2 points of `train`'s defaults
    (rounds auto = train.epochs / local_epochs, early stopping on the global validation loss, best round kept)."""
    quiet = ["--set", "train.tensorboard=false"]
    r = bm("federated", penguins_prep, "--out", tmp_path / "fed", *quiet, *ONE, "--set", "federated.clients=4",
           "--json")
    bm("train", penguins_prep, "--out", tmp_path / "central", *quiet)
    fed = json.loads(bm("evaluate", tmp_path / "fed", "--json", "--no-plots").stdout)["metrics"]["accuracy"]
    central = json.loads(bm("evaluate", tmp_path / "central", "--json", "--no-plots").stdout)["metrics"]["accuracy"]
    assert fed >= central - 0.02, (fed, central)
    m = read_json(tmp_path / "fed" / "manifest.json")
    assert m["kind"] == "run" and m["federated"]["clients"] == 4 and m["federated"]["rounds_asked"] == 20  # 100 / 5
    assert m["federated"]["patience"] == 2 and m["epochs_run"] == json.loads(r.stdout)["rounds"] <= 20
    hist = pd.read_csv(tmp_path / "fed" / "history.csv")
    kept = m["federated"]["kept_round"]
    assert kept == m["best_epoch"] == int(hist["val_loss"].idxmin()) + 1  # the best round's model is the one kept
    assert sum(sum(b.values()) for b in m["federated"]["class_balance"]) == 276  # the train split
    assert not (tmp_path / "fed" / "checkpoint").exists()
    # an ordinary run folder for every later stage
    bm("export", tmp_path / "fed", "--format", "keras", "--out", tmp_path / "export")
    doc = json.loads(bm("compare", tmp_path / "central", tmp_path / "fed", "--json").stdout)
    assert doc["metrics"]["accuracy"]["values"] == [central, fed]  # same test split
    r = json.loads(bm("predict", tmp_path / "fed", PENGUINS, "--out", tmp_path / "p.csv", "--json").stdout)
    assert r["rows"] == 344


@pytest.mark.xdist_group("ray-b")
def test_a_client_process_reuses_its_network_and_gets_the_same_updates(penguins_prep):
    """A client process builds (and traces) the network once and resets it every round: the updates of each
    (client, round) are bit-identical whichever clients the process ran before, and to a fresh build's."""
    from bigmodel_cli.config import load_config
    from bigmodel_cli.federated import client
    from bigmodel_cli.folders import open_prep

    cfg = load_config(None, ["federated.local_epochs=2", "model.layers=[{type: Dense, units: 8, activation: relu}, "
                             "{type: Dropout, rate: 0.5}]"])
    prep = open_prep(penguins_prep)
    rng = np.random.default_rng(0)
    x = rng.random((90, 9)).astype("float32")
    y = rng.integers(0, 3, 90)
    clients = [client.KerasClient(prep.schema, x[k::3], y[k::3], 7 + k) for k in range(3)]
    start = [rng.normal(0, 0.3, w.shape).astype("float32") for w in client._network(
        cfg.to_yaml(), cfg, prep.schema, 9, 0)[0].get_weights()]

    def updates(order, fresh=False):
        client._cached.clear()
        out = {}
        for k, r in order:
            out[k, r] = clients[k].fit(start, {"config": cfg.to_yaml(), "round": r})[0]
            if fresh:
                client._cached.clear()
        return out

    order = [(0, 1), (1, 1), (2, 1), (0, 2)]
    one, other, fresh = updates(order), updates(order[::-1]), updates(order, fresh=True)
    for key in order:
        for a, b, c in zip(one[key], other[key], fresh[key], strict=True):
            assert np.array_equal(a, b) and np.array_equal(a, c), key
    assert not np.array_equal(one[0, 1][0], one[0, 2][0])  # the round's seed matters


def test_fedprox_term_holds_a_client_near_the_global_model(penguins_prep):
    """FedProx's proximal term (mu/2 |w - w_global|^2 in the client's loss): with a large mu the client's update
    stays near the global weights it started from; with mu = 0 it moves as FedAvg's does; also under DP-SGD."""
    from bigmodel_cli.config import load_config
    from bigmodel_cli.federated import client
    from bigmodel_cli.folders import open_prep

    prep = open_prep(penguins_prep)
    rng = np.random.default_rng(0)
    x, y = rng.random((60, 9)).astype("float32"), rng.integers(0, 3, 60)

    def moved(mu: float, *dp: str) -> float:
        cfg = load_config(None, ["federated.strategy=fedprox", f"federated.proximal_mu={mu}",
                                 "federated.local_epochs=3", "train.optimizer.learning_rate=0.05", *dp])
        start = [w + 0.1 for w in client._network(cfg.to_yaml(), cfg, prep.schema, 9, 0)[0].get_weights()]
        update = client.KerasClient(prep.schema, x, y, 1).fit(start, {"config": cfg.to_yaml(), "round": 1})[0]
        return float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(update, start, strict=True))))

    free, held = moved(0.0), moved(100.0)
    assert held < 0.25 * free, (held, free)
    # under DP-SGD (train.privacy) too: the term's gradient is added after the clipping and noise
    dp = ("train.privacy.noise_multiplier=0", "train.privacy.l2_norm_clip=100")
    client._cached.clear()
    free, held = moved(0.0, *dp), moved(100.0, *dp)
    assert held < 0.4 * free, (held, free)  # (measured 0.27; without the term's gradient, 1)


def test_update_checks_name_what_is_wrong():
    from bigmodel_cli.federated.strategies import problem

    shapes = [(3, 2), (2,)]
    ok = [np.zeros((3, 2), "float32"), np.zeros(2, "float32")]
    assert problem(ok, shapes) is None
    assert problem([ok[0]], shapes) == "1 arrays, the model has 2"
    assert problem([np.zeros((4, 2)), ok[1]], shapes) == "array 0 has shape (4, 2), the model's is (3, 2)"
    assert problem([ok[0], np.array([0.0, np.inf])], shapes) == "array 1 holds NaN or inf"


@pytest.mark.parametrize("args, named", [
    (["federated.secure_aggregation=true", "federated.aggregation=median"], "only sees their masked sum"),
    (["federated.strategy=fedadam", "federated.aggregation=krum"], "use strategy fedavg or fedprox"),
    (["federated.engine=deployment", "federated.attack.kind=nan"], "simulation only"),
    (["federated.strategy=fedsgd"], "federated.strategy"),
    (["federated.privacy.noise_multiplier=1", "federated.aggregation=median"], "reported epsilon would be wrong"),
])
def test_impossible_strategy_combinations_are_config_errors(penguins_prep, tmp_path, args, named):
    r = bm("federated", penguins_prep, "--out", tmp_path / "x", *[a for kv in args for a in ("--set", kv)], code=2)
    assert named in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_the_guard_keeps_nan_and_misshaped_updates_out_of_every_strategy():
    """The server's guard in front of Flower's own strategies (FedAdam, FedMedian, FedAvg), fed Flower's FitRes: a
    NaN and a mis-shaped update are dropped, naming their nodes, and the aggregate is the honest clients' alone;
    a non-finite aggregate (SecAgg+'s one masked sum) leaves the global model as it was."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.compat.grid_client_proxy import GridClientProxy

    from bigmodel_cli.config import load_config
    from bigmodel_cli.federated import strategies

    shapes = [(3, 2), (2,)]
    start = [np.zeros((3, 2), "float32"), np.zeros(2, "float32")]
    honest = [[np.full((3, 2), v, "float32"), np.full(2, v, "float32")] for v in (1.0, 2.0, 3.0)]
    bad = {7: [np.full((3, 2), np.nan, "float32"), start[1]], 8: [np.zeros((4, 2), "float32"), start[1]]}

    def results(updates: dict[int, list[np.ndarray]]) -> list:
        return [(GridClientProxy(node, None, 1), FitRes(Status(Code.OK, ""), ndarrays_to_parameters(u), 10, {}))
                for node, u in updates.items()]

    for sets in (["federated.strategy=fedadam"], ["federated.aggregation=median"], []):
        f = load_config(None, sets).federated
        common = dict(fraction_evaluate=0.0, initial_parameters=ndarrays_to_parameters(start))
        rejected: list[tuple[str, str]] = []
        guard = strategies.guarded(strategies.build(f, common), shapes,
                                   lambda r, node, why, seen=rejected: seen.append((node, why)))
        clean = strategies.guarded(strategies.build(f, common), shapes, lambda *a: None)
        got = parameters_to_ndarrays(guard.aggregate_fit(1, results({1: honest[0], 2: honest[1], 3: honest[2], **bad}),
                                                         [])[0])
        want = parameters_to_ndarrays(clean.aggregate_fit(1, results(dict(enumerate(honest, 1))), [])[0])
        assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True)), sets
        assert [n for n, _ in rejected] == ["7", "8"] and "NaN" in rejected[0][1] and "shape" in rejected[1][1]
    assert guard.aggregate_fit(2, results({9: bad[7]}), []) == (None, {})  # nothing left: the model stays
    # finite updates whose aggregate is not (FedAvgM's server step overflowing float32; under SecAgg+ the masked sum
    # is the only thing the server sees): dropped, the model stays
    f = load_config(None, ["federated.strategy=fedavgm", "federated.server_learning_rate=10"]).federated
    rejected.clear()
    momentum = strategies.guarded(strategies.build(f, common), shapes, lambda r, node, why: rejected.append((node,
                                                                                                             why)))
    huge = [np.full((3, 2), 3e38, "float32"), start[1]]
    before = momentum.inner.momentum_vector
    assert momentum.aggregate_fit(2, results({1: huge, 2: huge}), [])[0] is None  # (round 2 first: a resumed run)
    assert rejected == [("aggregate", "the aggregate holds NaN or inf; the global model is kept")]
    assert momentum.inner.momentum_vector is before  # the server optimiser's state as it was before the round


@pytest.mark.xdist_group("ray-b")
def test_a_dishonest_client_breaks_the_mean_not_the_trimmed_mean(penguins_prep, tmp_path):
    """One of 5 clients sends sign-flipped, 10x-scaled updates every round: the plain mean breaks, the trimmed mean
    learns (the benchmark compares it with the clean run)."""
    common = [*FAST, *ONE, "--set", "federated.clients=5", "--set", "federated.rounds=4", "--json",
              "--set", "federated.attack.kind=sign_flip"]

    def run(name: str, *sets: str) -> tuple[float, dict]:
        r = bm("federated", penguins_prep, "--out", tmp_path / name, *common,
               *[a for kv in sets for a in ("--set", kv)])
        return json.loads(r.stdout)["final"]["val_accuracy"], read_json(tmp_path / name / "manifest.json")

    broken, _ = run("mean")
    robust, m = run("trimmed", "federated.aggregation=trimmed_mean")
    assert robust > 0.9 and broken < 0.6, (robust, broken)
    assert m["federated"]["attack"]["kind"] == "sign_flip" and m["federated"]["aggregation"] == "trimmed_mean"


def test_a_client_sending_nan_is_dropped_every_round(penguins_prep, tmp_path):
    """In a real simulation (FedProx): the NaN client is dropped every round with a warning naming its node; the
    rounds go on with the others and the global model stays finite."""
    r = bm("federated", penguins_prep, "--out", tmp_path / "nan", *FAST, *ONE, "--set", "federated.clients=3",
           "--set", "federated.rounds=2", "--set", "federated.attack.kind=nan", "--set", "federated.strategy=fedprox")
    m = read_json(tmp_path / "nan" / "manifest.json")["federated"]
    assert m["rejected_updates"] == 2 and m["strategy"] == "fedprox", m
    assert r.stderr.count("dropped the update of node") == 2 and "NaN or inf" in r.stderr, r.stderr
    assert all(np.isfinite(w).all() for w in _weights(tmp_path / "nan"))
    hist = pd.read_csv(tmp_path / "nan" / "history.csv")
    assert list(hist["clients"]) == [2, 2] and list(hist["rejected"]) == [1, 1]


def test_early_stopping_keeps_the_best_round_and_threshold_auto(cancer_prep, tmp_path):
    """A learning rate that overshoots: early stopping ends the rounds after `patience` rounds without a better
    validation loss and keeps the best round; evaluate.threshold auto is picked on the validation split."""
    bm("federated", cancer_prep, "--out", tmp_path / "fed", "--set", "train.tensorboard=false", *ONE,
       "--set", "federated.clients=3", "--set", "federated.local_epochs=2", "--set", "train.early_stopping.patience=2",
       "--set", "train.optimizer.learning_rate=0.05", "--set", "evaluate.threshold=auto")
    m = read_json(tmp_path / "fed" / "manifest.json")
    hist = pd.read_csv(tmp_path / "fed" / "history.csv")
    kept, rounds = m["federated"]["kept_round"], m["federated"]["rounds"]
    assert m["federated"]["stopped_early"] is True and rounds == kept + 1 < 50  # patience 2 epochs = 1 round
    assert hist["val_loss"].iloc[kept - 1] == hist["val_loss"].min()
    assert 0 < m["threshold"] < 1 and m["threshold"] != 0.5
    assert json.loads(bm("evaluate", tmp_path / "fed", "--json", "--no-plots").stdout)["threshold"] == m["threshold"]


def _rounds_done(run: Path) -> int:
    for folder in (run / "checkpoint", run / ".checkpoint.old"):
        try:
            return len(json.loads((folder / "federated.json").read_text())["history"])
        except (OSError, ValueError):
            continue
    return 0


def test_interrupted_simulation_resumes(penguins_prep, tmp_path):
    """SIGTERM after round 2 of 5: exit 143, the checkpoint stays and no Ray process is left; --resume runs
    rounds 3-5 only and gives the uninterrupted run's history (which ran its clients on two Ray actors, the
    interrupted one on one: federated.workers does not change the rounds)."""
    args = [*FAST, "--set", "federated.clients=3", "--set", "federated.rounds=5", "--set", "federated.local_epochs=1"]
    bm("federated", penguins_prep, "--out", tmp_path / "reference", *args, "--set", "federated.workers=2")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", "federated", str(penguins_prep), "--out", str(run),
                             *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "BIGMODEL_TEST_RUN": str(run)})  # Ray's processes inherit it
    try:
        deadline = time.monotonic() + 180
        while _rounds_done(run) < 2:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint of round 2 in time"
            time.sleep(0.1)
        assert _ray_processes(run), "no Ray process of this run found: the check below would prove nothing"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143, proc.stderr.read()
    finally:
        proc.kill()
    done = _rounds_done(run)
    assert 2 <= done < 5 and not (run / "model.keras").exists()
    for _ in range(60):  # Ray's processes (raylet, GCS, workers) stop with the run
        if not _ray_processes(run):
            break
        time.sleep(0.5)
    assert _ray_processes(run) == []
    r = bm("federated", penguins_prep, "--out", run, *args, "--set", "federated.local_epochs=2", "--resume", code=2)
    assert "federated.local_epochs differ" in r.stderr and _rounds_done(run) == done
    r = bm("federated", penguins_prep, "--out", run, *args, "--resume", "--json")
    assert json.loads(r.stdout)["rounds"] == 5
    m = read_json(run / "manifest.json")
    assert m["resumed"] is True and m["epochs_run"] == 5 and not (run / "checkpoint").exists()
    got, want = pd.read_csv(run / "history.csv"), pd.read_csv(tmp_path / "reference" / "history.csv")
    pd.testing.assert_frame_equal(got, want, atol=1e-4, rtol=1e-3)
    r = bm("federated", penguins_prep, "--out", run, *args, "--resume", code=2)
    assert "no federated checkpoint to resume" in r.stderr


def _ray_processes(run: Path) -> list[str]:
    """Command lines of live Ray processes started by the interrupted run: Ray's daemons and workers whose
    environment holds the BIGMODEL_TEST_RUN the test gave the run (other tests' simulations may run beside it)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").replace("\0", " ")
            environ = (cmdline.parent / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(name in args for name in ("raylet", "gcs_server", "ray::", "default_worker.py")) \
                and f"BIGMODEL_TEST_RUN={run}" in environ:
            found.append(args[:200])
    return found


@pytest.mark.xdist_group("ray-b")
def test_dirichlet_and_by_column_partitions(penguins_prep, tmp_path):
    r = bm("federated", penguins_prep, "--out", tmp_path / "dir", *FAST, "--set", "federated.partition=dirichlet",
           "--set", "federated.alpha=0.1", "--set", "federated.clients=3", "--set", "federated.rounds=2", "--json")
    assert json.loads(r.stdout)["rounds"] == 2
    balance = read_json(tmp_path / "dir" / "manifest.json")["federated"]["class_balance"]
    assert len(balance) == 3 and any(min(b.values()) == 0 or max(b.values()) > 0.8 * sum(b.values()) for b in balance)
    bm("federated", penguins_prep, "--out", tmp_path / "isl", *FAST, "--set", "federated.partition=by_column",
       "--set", "federated.column=island", "--set", "federated.rounds=1",
       "--set", "federated.privacy.clipping=adaptive", "--set", "federated.privacy.noise_multiplier=0.1")
    m = read_json(tmp_path / "isl" / "manifest.json")
    assert m["federated"]["clients"] == 3  # Biscoe, Dream, Torgersen
    assert m["privacy"]["clipping"] == "adaptive" and m["privacy"]["epsilon"] > 40  # z=0.1: a weak guarantee
    r = bm("federated", penguins_prep, "--out", tmp_path / "bad", "--set", "federated.partition=by_column", code=2)
    assert "needs column" in r.stderr


def _weights(run):
    from bigmodel_cli.folders import load_network

    return load_network(run / "model.keras").get_weights()


def test_secure_aggregation_equals_fedavg(penguins_prep, tmp_path):
    """SecAgg+ masks every update, yet the unmasked sum gives FedAvg's global model (up to quantization)."""
    common = [*FAST, "--set", "federated.clients=3", "--set", "federated.rounds=1"]
    bm("federated", penguins_prep, "--out", tmp_path / "plain", *common)
    bm("federated", penguins_prep, "--out", tmp_path / "secagg", *common, "--set", "federated.secure_aggregation=true")
    assert read_json(tmp_path / "secagg" / "manifest.json")["federated"]["secure_aggregation"] is True
    plain, secagg = _weights(tmp_path / "plain"), _weights(tmp_path / "secagg")
    assert len(plain) == len(secagg) >= 4
    diff = max(float(np.abs(a - b).max()) for a, b in zip(plain, secagg, strict=True))
    moved = max(float(np.abs(a).max()) for a in plain)
    assert 0 < diff < 1e-4 < moved, diff  # quantization noise only: SecAgg+ really ran, and agrees
    # with client-level DP under SecAgg+ the clients clip their own updates (the server never sees one):
    # clipped to norm 1e-3 with next to no noise, the global model stays near its start, far from plain FedAvg's
    bm("federated", penguins_prep, "--out", tmp_path / "clipped", *common, "--set", "federated.secure_aggregation=true",
       "--set", "federated.privacy.clipping_norm=0.001", "--set", "federated.privacy.noise_multiplier=0.01")
    clipped = _weights(tmp_path / "clipped")
    away = max(float(np.abs(a - b).max()) for a, b in zip(plain, clipped, strict=True))
    assert away > 100 * diff, (away, diff)


@pytest.mark.xdist_group("ray-b")
def test_client_dp_reports_epsilon_and_stops_at_budget(penguins_prep, tmp_path):
    # noise 1.0: ε after 1, 2, 3 rounds = 4.73, 7.08, 9.01 at δ=1e-5 (RDP); a budget of 8 affords two rounds
    r = bm("federated", penguins_prep, "--out", tmp_path / "dp", *FAST, "--set", "federated.clients=3",
           "--set", "federated.rounds=3", "--set", "federated.privacy.noise_multiplier=1.0",
           "--set", "federated.privacy.max_epsilon=8", "--json", code=1)
    assert "stopped after 2 of 3 rounds" in r.stderr and "max_epsilon" in r.stderr
    assert json.loads(r.stdout)["rounds"] == 2  # the run within budget was written and printed
    hist = pd.read_csv(tmp_path / "dp" / "history.csv")
    assert list(hist["clients"]) == [3, 3] and hist["epsilon"].is_monotonic_increasing
    assert hist["epsilon"].round(2).tolist() == [4.73, 7.08]
    privacy = read_json(tmp_path / "dp" / "manifest.json")["privacy"]
    assert privacy["level"] == "client" and privacy["epsilon"] == pytest.approx(hist["epsilon"].iloc[-1])
    bm("evaluate", tmp_path / "dp", "--no-plots")  # an ordinary run folder
    r = bm("federated", penguins_prep, "--out", tmp_path / "none", "--set", "federated.privacy.noise_multiplier=0.5",
           "--set", "federated.privacy.max_epsilon=1", code=2)  # not even one round fits: nothing is written
    assert "one round already spends" in r.stderr and not (tmp_path / "none" / "model.keras").exists()


def test_front_passes_only_fleet_posts(monkeypatch):
    """The front in front of the SuperLink: POST /v1/fleet/<name> is forwarded (here to a SuperLink that is not
    there: 503, which a SuperNode retries); every other path, method or a query is a 404; a body over the
    limit is a 413."""
    from starlette.testclient import TestClient

    from bigmodel_cli.federated import auth

    with TestClient(auth.front_app(f"http://127.0.0.1:{free_port()}", None)) as web:
        assert web.post("/v1/fleet/pull-messages", content=b"x").status_code == 503
        for method, path in (("POST", "/v1/control/list-runs"), ("POST", "/v1/control/start-run"),
                             ("POST", "/v1/runtime/pull-messages"), ("GET", "/v1/fleet/pull-messages"),
                             ("PUT", "/v1/fleet/pull-messages"), ("PROPFIND", "/v1/fleet/pull-messages"),
                             ("TRACE", "/v1/fleet/x"), ("POST", "/v1/fleet/pull-messages?a=1"),
                             ("POST", "/v1/fleet/../control/list-runs"), ("POST", "/v1/fleet/a%2F..%2Fb"),
                             ("POST", "/docs"), ("GET", "/")):
            assert web.request(method, path).status_code == 404, (method, path)
        monkeypatch.setattr(auth, "MAX_BODY", 10)
        assert web.post("/v1/fleet/push-messages", content=b"x" * 11).status_code == 413


def test_dp_noise_is_not_derived_from_the_seed(penguins_prep, tmp_path):
    """Flower's DP wrappers draw their noise from NumPy's global generator; with privacy the server reseeds it
    from the OS, so the config's seed (sent to every client) does not give the noise away. Without privacy the
    run stays seeded."""
    from bigmodel_cli.config import validate
    from bigmodel_cli.federated.server import Federation

    draws = {}
    for privacy in (None, {"noise_multiplier": 1.0}):
        cfg = validate({"federated": {"privacy": privacy}})
        runs = []
        for k in range(2):
            Federation.open(penguins_prep, tmp_path / f"run{k}", cfg)
            runs.append(np.random.normal(size=4))
        draws[privacy is None] = runs
    assert np.array_equal(*draws[True]) and not np.array_equal(*draws[False])


def test_status_file_records_are_read_whole(tmp_path):
    """Flower's app processes append records while serve/join read them: a half-written line waits."""
    from bigmodel_cli.federated.client import note_status, read_status

    status = tmp_path / "status.jsonl"
    status.write_text("")
    note_status(status, {"round": 1})
    with status.open("a") as f:
        f.write('{"round": 2, "metr')
    assert read_status(status) == [{"round": 1}]
    with status.open("a") as f:
        f.write('ics": {}}\n')
    assert read_status(status) == [{"round": 1}, {"round": 2, "metrics": {}}]


def test_partitions_without_labels_fall_back_to_iid():
    """Regression tasks have no labels to skew: dirichlet partitions them like iid (no crash)."""
    from bigmodel_cli.config import validate
    from bigmodel_cli.federated.simulation import partitions

    cfg = validate({"federated": {"partition": "dirichlet", "clients": 3}})
    parts = partitions(10, 3, None, None, cfg)
    assert sorted(np.concatenate(parts).tolist()) == list(range(10)) and [len(p) for p in parts] == [4, 3, 3]


def _tls_files(folder: Path, loopback: bool = True) -> dict[str, Path]:
    """A CA and a server certificate for localhost / 127.0.0.1 / 127.0.0.2 signed by it (PEM), valid for a day
    (loopback=False: for localhost only)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(name: str, key, issuer: str, signer, *extensions):
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(now)
             .not_valid_after(now + datetime.timedelta(days=1)))
        for ext in extensions:
            b = b.add_extension(ext, critical=False)
        return b.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    files["ca"].write_bytes(certificate("test CA", ca_key, "test CA", ca_key, x509.BasicConstraints(True, None)))
    files["cert"].write_bytes(certificate("localhost", key, "test CA", ca_key, x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), *([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.2"))] if loopback else [])])))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


def _listening(pids: set[int]) -> set[str]:
    """HOST:PORT of every TCP socket these processes listen on (IPv4, from /proc/net/tcp)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[9] in inodes:  # LISTEN
            ip, port = f[1].split(":")
            found.add(f"{socket.inet_ntoa(bytes.fromhex(ip)[::-1])}:{int(port, 16)}")
    return found


def _family(pid: int) -> set[int]:
    from bigmodel_cli.federated.processes import descendants

    return {pid, *descendants(pid)}


@pytest.mark.xdist_group("deployment")  # no Ray: free to run beside the simulations
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_deployment_registered_clients_only_and_no_control_api_outside(penguins_prep, tmp_path):
    """`federated serve --address 127.0.0.2:PORT --authorized-keys` and `federated join --key` as separate
    processes over TLS: an unregistered client is refused (exit 2, one line) while the run goes on; two
    registered clients, each with half of the train split, train; the control API answers 404 on 127.0.0.2,
    and nothing of serve's but that one front listens beyond 127.0.0.1."""
    import httpx

    tls = _tls_files(tmp_path)
    for name in ("a", "b", "stranger"):
        bm("federated", "keygen", "--out", tmp_path / name)
    (tmp_path / "authorized").write_text((tmp_path / "a.pub").read_text() + "# client b\n" +
                                         (tmp_path / "b.pub").read_text())
    train = pd.read_parquet(penguins_prep / "train.parquet")
    halves = [tmp_path / "client0.csv", tmp_path / "client1.csv"]
    train.iloc[::2].to_csv(halves[0], index=False)
    train.iloc[1::2].to_csv(halves[1], index=False)
    port = free_port()
    address = f"127.0.0.2:{port}"
    cmd = [sys.executable, "-m", "bigmodel_cli"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    server = subprocess.Popen([*cmd, "federated", "serve", str(penguins_prep), "--out", str(tmp_path / "run"),
                               "--address", address, "--tls-ca", str(tls["ca"]), "--tls-cert", str(tls["cert"]),
                               "--tls-key", str(tls["key"]), "--authorized-keys", str(tmp_path / "authorized"),
                               *FAST, "--set", "federated.clients=2", "--set", "federated.rounds=3",
                               "--set", "federated.local_epochs=3", "--set", "federated.strategy=fedprox",
                               "--set", "federated.proximal_mu=0.01", "--set", "federated.aggregation=median",
                               "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    def join(k: int, key: str) -> list[str]:
        return [*cmd, "federated", "join", str(penguins_prep), "--data", str(halves[k]), "--server", address,
                "--seed", str(k), "--wait", "120", "--tls-ca", str(tls["ca"]), "--key", str(tmp_path / f"{key}.key")]

    clients = []
    try:
        stranger = subprocess.run(join(0, "stranger"), capture_output=True, text=True, env=env, timeout=180)
        assert stranger.returncode == 2, stranger.stderr[-3000:]
        assert stranger.stderr.count("\n") == 1 and "refused this client's key" in stranger.stderr
        # the control API is not reachable on the network address; the fleet API is (and wants a node's key)
        with httpx.Client(verify=str(tls["ca"]), base_url=f"https://{address}") as web:
            for path in ("/v1/control/list-runs", "/v1/control/register-node", "/v1/control/start-run",
                         "/v1/runtime/pull-messages", "/docs"):
                assert web.post(path, headers={"Content-Type": "application/protobuf"}).status_code == 404, path
            assert web.get("/v1/fleet/pull-messages").status_code == 404
            assert web.post("/v1/fleet/pull-messages", headers={"Content-Type": "application/protobuf"}
                            ).status_code == 401
        listening = _listening(_family(server.pid))
        assert address in listening and all(a == address or a.startswith("127.0.0.1:") for a in listening), listening
        logs = [tmp_path / f"client{k}.log" for k in range(2)]  # files, not pipes: Flower logs every message
        clients = [subprocess.Popen(join(k, key), stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
                   for k, (key, log) in enumerate(zip(("a", "b"), logs, strict=True))]
        out, err = server.communicate(timeout=300)
        assert server.returncode == 0, err[-3000:]
        for k, c in enumerate(clients):
            c.wait(timeout=60)
            assert c.returncode == 0, logs[k].read_text()[-3000:]
            assert f"trained in 3 round(s) on {len(train.iloc[k::2])} local rows" in logs[k].read_text()
    finally:
        for p in (server, *clients):
            p.kill()
    result = json.loads(out)
    assert result["rounds"] == 3 and result["final"]["clients"] == 2
    assert result["final"]["val_accuracy"] > 0.8, result  # lr 0.01, 3 rounds x 3 local epochs
    m = read_json(tmp_path / "run" / "manifest.json")
    assert m["federated"]["engine"] == "deployment"
    assert (m["federated"]["strategy"], m["federated"]["aggregation"]) == ("fedprox", "median")  # the server's
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []  # no Flower leftovers
    bm("evaluate", tmp_path / "run", "--no-plots")


def test_keys_and_their_errors(penguins_prep, tmp_path):
    """keygen's files as Flower reads them; bad key files and auth without TLS are one-line errors."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_ssh_private_key,
        load_ssh_public_key,
    )

    doc = json.loads(bm("federated", "keygen", "--out", tmp_path / "a", "--json").stdout)
    private, public = Path(doc["private"]), Path(doc["public"])
    assert (private.name, public.name) == ("a.key", "a.pub") and private.stat().st_mode & 0o077 == 0
    key = load_ssh_private_key(private.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert load_ssh_public_key(public.read_bytes()).public_numbers() == key.public_key().public_numbers()
    r = bm("federated", "keygen", "--out", tmp_path / "a", code=2)
    assert "exists" in r.stderr and load_ssh_private_key(private.read_bytes(), None).private_numbers() == \
        key.private_numbers()  # never overwritten
    tls = _tls_files(tmp_path)
    serve = ["federated", "serve", penguins_prep, "--out", tmp_path / "run", "--tls-ca", tls["ca"], "--tls-cert",
             tls["cert"], "--tls-key", tls["key"], "--authorized-keys"]
    bad = tmp_path / "bad_keys"
    ed = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    for text, message in ((public.read_text() + "not a key\n", "line 2 is not an OpenSSH public key"),
                          (ed.decode() + "\n", "line 1 is not an elliptic-curve key"),
                          ("# nobody\n", "no public key in it"),
                          (public.read_text() * 2, "listed twice")):
        bad.write_text(text)
        r = bm(*serve, bad, code=2)
        assert message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = bm("federated", "serve", penguins_prep, "--out", tmp_path / "run", "--authorized-keys", public, code=2)
    assert "--authorized-keys needs TLS" in r.stderr
    other = tmp_path / "localhost_only"
    other.mkdir()
    tls_other = _tls_files(other, loopback=False)
    r = bm("federated", "serve", penguins_prep, "--out", tmp_path / "run", "--tls-ca", tls_other["ca"], "--tls-cert",
           tls_other["cert"], "--tls-key", tls_other["key"], code=2)
    assert "must also name 127.0.0.1" in r.stderr
    r = bm("federated", "keygen", "--out", ".", code=2)
    assert "give a name" in r.stderr
    data = tmp_path / "mine.csv"
    pd.read_parquet(penguins_prep / "train.parquet").head(20).to_csv(data, index=False)
    join = ["federated", "join", penguins_prep, "--data", data, "--server", "127.0.0.1:1"]
    r = bm(*join, "--key", private, code=2)
    assert "--key needs --tls-ca" in r.stderr
    r = bm(*join, "--key", public, "--tls-ca", tls["ca"], code=2)
    assert "--key" in r.stderr and "not an unencrypted OpenSSH private key" in r.stderr
    assert not (tmp_path / "run").exists()


def _flower_processes(run: Path) -> dict[int, str]:
    """pid: command line of the live Flower programs started for this run folder (serve gives them a
    FLWR_HOME in it)."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
            environ = (cmdline.parent / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if any("flwr" in a or "flower-" in a for a in args[:2]) and f"FLWR_HOME={run}" in environ:
            found[int(cmdline.parent.name)] = " ".join(args)
    return found


def _waiting_server_app(run: Path) -> bool:
    """Whether the ServerApp process runs and has loaded TensorFlow (it then waits for clients)."""
    for pid, cmd in _flower_processes(run).items():
        try:
            if "flwr-serverapp" in cmd and "tensorflow" in Path(f"/proc/{pid}/maps").read_text():
                return True
        except OSError:
            pass
    return False


@pytest.mark.xdist_group("deployment")  # no Ray: free to run beside the simulations
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_serve_stopped_by_sigterm_leaves_no_flower_process(penguins_prep, tmp_path):
    """SIGTERM while the server waits for clients: exit 143, and the SuperLink, its SuperExec and the ServerApp
    process (which Flower starts in a session of its own) are all gone, with our temporary files."""
    port, run = free_port(), tmp_path / "run"
    server = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", "federated", "serve", str(penguins_prep), "--out",
                               str(run), "--address", f"127.0.0.1:{port}", "--set", "federated.clients=2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(240):
            if _waiting_server_app(run):
                break
            time.sleep(0.25)
        else:
            pytest.fail(f"no ServerApp with TensorFlow loaded after 60 s: {_flower_processes(run)}")
        assert len(_flower_processes(run)) >= 3  # SuperLink, SuperExec, ServerApp
        time.sleep(8)  # now waiting for clients
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 143, server.stderr.read()
        for _ in range(40):
            if not _flower_processes(run):
                break
            time.sleep(0.25)
        assert _flower_processes(run) == {}
        assert list((tmp_path / "run").iterdir()) == []
    finally:
        server.kill()


def test_serve_errors_before_starting_flower(penguins_prep, tmp_path, monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        r = bm("federated", "serve", penguins_prep, "--out", tmp_path / "run", "--address", address, code=2)
    assert f"--address {address}" in r.stderr and "in use" in r.stderr
    r = bm("federated", "serve", penguins_prep, "--out", tmp_path / "run", "--set", "federated.clients=2",
           "--set", "federated.secure_aggregation=true", code=2)
    assert "federated: secure_aggregation needs clients >= 3" in r.stderr
    r = bm("federated", "serve", penguins_prep, "--out", tmp_path / "run", "--address", "nohostport", code=2)
    assert "expected HOST:PORT" in r.stderr
    tls = _tls_files(tmp_path)
    r = bm("federated", "serve", penguins_prep, "--out", tmp_path / "run", "--tls-ca", tls["ca"], code=2)
    assert "all three of --tls-ca, --tls-cert and --tls-key" in r.stderr
    r = bm("federated", "serve", penguins_prep, "--out", tmp_path / "run", "--tls-ca", tls["ca"],
           "--tls-cert", tls["ca"], "--tls-key", tls["key"], code=2)  # the CA's certificate with the server's key
    assert "not a matching PEM certificate and key" in r.stderr
    r = bm("federated", "join", penguins_prep, "--data", PENGUINS, "--server", "127.0.0.1:1", "--tls-ca", tls["key"],
           code=2)
    assert "--tls-ca" in r.stderr and "not a PEM CA certificate" in r.stderr
    assert not (tmp_path / "run").exists()
    # --track: the deployment's rounds are tracked as the simulation's are (the same code): no server, no start
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    r = bm("federated", "serve", penguins_prep, "--out", tmp_path / "tracked", "--track", code=2)
    assert "tracking.mlflow: no tracking server given" in r.stderr


def test_join_without_a_server_is_a_clear_error(penguins_prep, tmp_path):
    data = tmp_path / "mine.csv"
    pd.read_parquet(penguins_prep / "train.parquet").head(20).to_csv(data, index=False)
    r = bm("federated", "join", penguins_prep, "--data", data, "--server", f"127.0.0.1:{free_port()}",
           "--wait", "0.5", code=2)
    assert "no server at 127.0.0.1:" in r.stderr
    r = bm("federated", "join", penguins_prep, "--data", data, "--server", "nohostport", code=2)
    assert "expected HOST:PORT" in r.stderr
    pd.read_parquet(penguins_prep / "train.parquet").drop(columns="species").to_csv(data, index=False)
    r = bm("federated", "join", penguins_prep, "--data", data, "--server", "127.0.0.1:1", code=2)
    assert "species" in r.stderr  # its data is checked before it connects
    r = bm("federated", penguins_prep, "--out", tmp_path / "dep", "--set", "federated.engine=deployment", code=2)
    assert "federated serve" in r.stderr and not (tmp_path / "dep").exists()
    bm("preprocess", PENGUINS, "--target", "species", "--set", "data.split.val=0", "--set", "data.split.train=0.9",
       "--out", tmp_path / "noval")
    r = bm("federated", tmp_path / "noval", "--out", tmp_path / "nv", *FAST, "--set", "federated.rounds=1",
           "--set", "federated.clients=2", code=2)
    assert "has none; preprocess with data.split.val > 0" in r.stderr and r.stderr.count("\n") == 1
