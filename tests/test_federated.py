"""Federated training on Flower's simulation engine: FedAvg against centralized training, skewed partitions."""

from __future__ import annotations

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

from .conftest import PENGUINS, bm, read_json

pytest.importorskip("flwr", reason="the federated extra is not installed")

FAST = ["--set", "train.optimizer.learning_rate=0.01", "--set", "train.tensorboard=false",
        "--set", "train.early_stopping.enabled=false"]


def test_fedavg_iid_matches_centralized(penguins_prep, tmp_path):
    rounds, local = 12, 2
    bm("federated", penguins_prep, "--out", tmp_path / "fed", *FAST, "--set", "federated.clients=4",
       "--set", f"federated.rounds={rounds}", "--set", f"federated.local_epochs={local}")
    bm("train", penguins_prep, "--out", tmp_path / "central", *FAST, "--set", f"train.epochs={rounds * local}")
    fed = json.loads(bm("evaluate", tmp_path / "fed", "--json", "--no-plots").stdout)["metrics"]["accuracy"]
    central = json.loads(bm("evaluate", tmp_path / "central", "--json", "--no-plots").stdout)["metrics"]["accuracy"]
    assert fed >= central - 0.03, (fed, central)
    m = read_json(tmp_path / "fed" / "manifest.json")
    assert m["kind"] == "run" and m["federated"]["clients"] == 4 and m["epochs_run"] == rounds
    assert sum(sum(b.values()) for b in m["federated"]["class_balance"]) == 276  # the train split
    # an ordinary run folder for every later stage
    bm("export", tmp_path / "fed", "--format", "keras", "--out", tmp_path / "export")
    doc = json.loads(bm("compare", tmp_path / "central", tmp_path / "fed", "--json").stdout)
    assert doc["metrics"]["accuracy"]["values"] == [central, fed] and not doc["warnings"]  # same test split
    r = json.loads(bm("predict", tmp_path / "fed", PENGUINS, "--out", tmp_path / "p.csv", "--json").stdout)
    assert r["rows"] == 344


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


def test_status_file_records_are_read_whole(tmp_path):
    """Flower's app processes append records while serve/join read them: a half-written line waits."""
    from bigmodel_cli.federated import note_status, read_status

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
    from bigmodel_cli.federated import partitions

    cfg = validate({"federated": {"partition": "dirichlet", "clients": 3}})
    parts = partitions(10, 3, None, None, cfg)
    assert sorted(np.concatenate(parts).tolist()) == list(range(10)) and [len(p) for p in parts] == [4, 3, 3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tls_files(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for localhost / 127.0.0.1 signed by it (PEM), valid for a day."""
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
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


def test_deployment_one_server_two_clients(penguins_prep, tmp_path):
    """`federated serve` (a Flower SuperLink) and two `federated join` (SuperNodes) as separate processes on
    127.0.0.1 over TLS, each client with its own half of the train split; the server writes an ordinary run
    folder. (The same without TLS: `make federated-table`'s deployment row, and the SIGTERM test below.)"""
    tls = _tls_files(tmp_path)
    train = pd.read_parquet(penguins_prep / "train.parquet")
    halves = [tmp_path / "client0.csv", tmp_path / "client1.csv"]
    train.iloc[::2].to_csv(halves[0], index=False)
    train.iloc[1::2].to_csv(halves[1], index=False)
    address = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "-m", "bigmodel_cli"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    server = subprocess.Popen([*cmd, "federated", "serve", str(penguins_prep), "--out", str(tmp_path / "run"),
                               "--address", address, "--tls-ca", str(tls["ca"]), "--tls-cert", str(tls["cert"]),
                               "--tls-key", str(tls["key"]), *FAST, "--set", "federated.clients=2",
                               "--set", "federated.rounds=3", "--set", "federated.local_epochs=3", "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    logs = [tmp_path / f"client{k}.log" for k in range(2)]  # files, not pipes: Flower logs every message
    clients = [subprocess.Popen([*cmd, "federated", "join", str(penguins_prep), "--data", str(h), "--server", address,
                                 "--seed", str(k), "--wait", "120", "--tls-ca", str(tls["ca"])],
                                stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
               for k, (h, log) in enumerate(zip(halves, logs, strict=True))]
    try:
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
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")) == []  # no Flower leftovers
    bm("evaluate", tmp_path / "run", "--no-plots")


def _flower_processes(port: int) -> dict[int, str]:
    """pid: command line of the live Flower programs started for the SuperLink at this port."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any("flwr" in a or "flower-" in a for a in args[:2]) and any(str(port) in a for a in args):
            found[int(cmdline.parent.name)] = " ".join(args)
    return found


def _waiting_server_app(port: int) -> bool:
    """Whether the ServerApp process runs and has loaded TensorFlow (it then waits for clients)."""
    for pid, cmd in _flower_processes(port).items():
        try:
            if "flwr-serverapp" in cmd and "tensorflow" in Path(f"/proc/{pid}/maps").read_text():
                return True
        except OSError:
            pass
    return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_serve_stopped_by_sigterm_leaves_no_flower_process(penguins_prep, tmp_path):
    """SIGTERM while the server waits for clients: exit 143, and the SuperLink, its SuperExec and the ServerApp
    process (which Flower starts in a session of its own) are all gone, with our temporary files."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "bigmodel_cli", "federated", "serve", str(penguins_prep), "--out",
                               str(tmp_path / "run"), "--address", f"127.0.0.1:{port}", "--set", "federated.clients=2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(240):
            if _waiting_server_app(port):
                break
            time.sleep(0.25)
        else:
            pytest.fail(f"no ServerApp with TensorFlow loaded after 60 s: {_flower_processes(port)}")
        time.sleep(8)  # now waiting for clients
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 143, server.stderr.read()
        for _ in range(40):
            if not _flower_processes(port):
                break
            time.sleep(0.25)
        assert _flower_processes(port) == {}
        assert list((tmp_path / "run").iterdir()) == []
    finally:
        server.kill()


def test_serve_errors_before_starting_flower(penguins_prep, tmp_path):
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


def test_join_without_a_server_is_a_clear_error(penguins_prep, tmp_path):
    data = tmp_path / "mine.csv"
    pd.read_parquet(penguins_prep / "train.parquet").head(20).to_csv(data, index=False)
    r = bm("federated", "join", penguins_prep, "--data", data, "--server", f"127.0.0.1:{_free_port()}",
           "--wait", "0.5", code=2)
    assert "no server at 127.0.0.1:" in r.stderr
    r = bm("federated", "join", penguins_prep, "--data", data, "--server", "nohostport", code=2)
    assert "expected HOST:PORT" in r.stderr
    pd.read_parquet(penguins_prep / "train.parquet").drop(columns="species").to_csv(data, index=False)
    r = bm("federated", "join", penguins_prep, "--data", data, "--server", "127.0.0.1:1", code=2)
    assert "species" in r.stderr  # its data is checked before it connects
    r = bm("federated", penguins_prep, "--out", tmp_path / "dep", "--set", "federated.engine=deployment", code=2)
    assert "federated serve" in r.stderr and not (tmp_path / "dep").exists()
