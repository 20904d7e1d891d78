"""`bigmodel federated serve` / `join`: the deployment engine, on Flower's SuperLink / SuperNode runtime.

`serve` starts a SuperLink and submits the Flower App of flower_app.py to it (as `flwr run` does); each
`join` encodes its client's own file with the prep folder's preprocessing and starts a SuperNode that
connects to the SuperLink. Flower runs the app's two components in processes of its own (flwr-serverapp;
flwr-clientapp, one per message), which talk to our commands through files: a job file (JSON) each reads,
and a status file they append JSON records to (rounds, then the result or the error; the rounds a client
trained in, then "done"). The server side is federated.Federation, the client federated.KerasClient, the
same as in simulation, so SecAgg+ and client-level DP work here too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, artifacts
from .config import Config
from .errors import ConfigError, DataError
from .federated import (
    FederatedResult,
    Federation,
    KerasClient,
    need_flwr,
    note_status,
    planned_rounds,
    read_status,
)
from .folders import open_prep
from .schema import Schema


@dataclass(frozen=True)
class JoinResult:
    """A client's part in a finished federation: its rows and the rounds it trained in."""

    server: str
    rows: int
    rounds: int

    def to_dict(self) -> dict[str, Any]:
        return {"server": self.server, "rows": self.rows, "rounds": self.rounds}


@dataclass(frozen=True)
class Tls:
    """TLS for the SuperLink: the CA that signed `cert` (clients verify the server with it), and the server's
    certificate and key (PEM files). The certificate must name the hosts clients connect to and 127.0.0.1,
    where the SuperLink's own processes reach it."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def superlink_args(self) -> list[str]:
        return ["--ssl-ca-certfile", str(self.ca), "--ssl-certfile", str(self.cert), "--ssl-keyfile", str(self.key)]

    def check(self) -> None:
        """Load the files as Python's ssl would, so that a wrong file is a one-line error here, not a hung
        Flower process."""
        import ssl

        try:
            ssl.create_default_context(cafile=str(self.ca))
        except (ssl.SSLError, ValueError) as e:
            raise ConfigError(f"--tls-ca {self.ca}: not a PEM CA certificate ({e})") from None
        if self.cert is not None and self.key is not None:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(self.cert), str(self.key))
            except ssl.SSLError as e:
                raise ConfigError(f"--tls-cert {self.cert} / --tls-key {self.key}: not a matching PEM certificate "
                                  f"and key ({e})") from None


CONNECT_SECONDS = 30  # a SuperNode gives up after failing to reach the SuperLink this long


def server_tls(ca: Path | None, cert: Path | None, key: Path | None) -> Tls | None:
    """serve's --tls-ca / --tls-cert / --tls-key: all three, or none (no TLS)."""
    if not (ca or cert or key):
        return None
    if not (ca and cert and key):
        raise ConfigError("TLS needs all three of --tls-ca, --tls-cert and --tls-key")
    return Tls(ca, cert, key)


def serve(prep: Path, out: Path, cfg: Config, address: str, on_round: Any = None,
          tls: Tls | None = None, verbose: bool = False) -> FederatedResult:
    """`bigmodel federated serve`: a SuperLink at `address` and our Flower App run on it, which waits for
    `federated.clients` SuperNodes (`bigmodel federated join`), runs the rounds and writes the run folder."""
    need_flwr()
    host, port = _host_port(address, "--address")
    _check_free(host, port, address)
    if tls is not None:
        tls.check()
    planned_rounds(cfg)  # a budget that fits no round fails here, before anything starts
    artifacts.Folder(Path(prep), "prep").manifest()
    folder = artifacts.Folder(Path(out), "run")
    folder.prepare()
    with _workdir(folder.path, ".federated.") as work:
        status = work / "status.jsonl"
        status.touch()
        (work / "job.json").write_text(json.dumps({
            "prep": str(Path(prep).resolve()), "out": str(folder.path.resolve()), "config": cfg.to_yaml(),
            "status": str(status), "verbose": verbose}))
        app = work / "app"
        app.mkdir()
        job = json.dumps(str(work / "job.json"))
        (app / "pyproject.toml").write_text(_APP_TOML.format(version=__version__, job=job))
        reach = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        security = (f"root-certificates = {json.dumps(str(tls.ca.resolve()))}\n" if tls else "insecure = true\n")
        env = _flower_env(work, f'[superlink]\ndefault = "bigmodel"\n[superlink.bigmodel]\n'
                                f'address = "{reach}:{port}"\n{security}')
        with _process(["flower-superlink", *(tls.superlink_args() if tls else ["--insecure"]), "--host", host,
                       "--port", str(port), "--disable-runtime-dependency-installation"],
                      work / "superlink.log", env, verbose) as link:
            _wait_for(f"{reach}:{port}", 60, link, work / "superlink.log")
            with _process(["flwr", "run", str(app), "bigmodel", "--stream"], work / "run.log", env, verbose) as run:
                record = _follow(status, run, work / "run.log", on_round)
                run.wait(timeout=60)
    return FederatedResult.from_dict(record["result"])


def serve_rounds(grid: Any, context: Any, job: dict[str, Any]) -> None:
    """The ServerApp's main (in Flower's flwr-serverapp process): the rounds with `federated.clients` nodes,
    the run folder, and the outcome as the status file's last record; "done" to every node at the end."""
    from .config import validate
    from .errors import BigModelError

    status = Path(job["status"])
    if job["verbose"]:
        logging.basicConfig(level=logging.INFO)
    try:
        import yaml

        cfg = validate(yaml.safe_load(job["config"]), "the server's config")
        fed = Federation.open(Path(job["prep"]), Path(job["out"]), cfg,
                              lambda r, n, m: note_status(status, {"round": r, "rounds": n, "metrics": m}),
                              bool(job["verbose"]))
        n, f = cfg.federated.clients, cfg.federated
        max_weight = 1.0  # SecAgg+ scales each update by rows / max_weight: ask the nodes for their rows
        if f.secure_aggregation and f.privacy is None:
            max_weight = float(max(int(p["rows"]) for p in _ask(grid, {}, wait_for=n).values()))
        fed.run_rounds(grid, context, n, max_weight)
        record: dict[str, Any] = {"result": fed.finish({"clients": n, "partition": "deployment"}).to_dict()}
    except BigModelError as e:
        record = {"error": str(e)}
    finally:
        _ask(grid, {"done": True})  # even after a crash: the clients need not wait for a lost server
    note_status(status, record)


def join(prep: Path, data: Path, address: str, seed: int, wait: float = 600.0,
         tls_ca: Path | None = None, verbose: bool = False) -> JoinResult:
    """`bigmodel federated join`: a SuperNode connected to the SuperLink at `address`, whose client trains on
    its own CSV or Parquet file encoded with the prep folder's fitted preprocessing. Returns its row count
    and the rounds it trained in when the server says it is done."""
    need_flwr()
    _host_port(address, "--server")
    if tls_ca is not None:
        Tls(tls_ca).check()
    from . import features
    from .config import load_config
    from .data import read_table
    from .keras_env import import_keras

    prepared = open_prep(Path(prep))
    schema = prepared.schema
    cfg = load_config(prepared.folder / artifacts.CONFIG)
    df = read_table(Path(data), cfg.data)
    source = str(data)
    schema.check_columns(df, source, need_target=True)
    import_keras(seed)
    x = features.apply(features.preprocessing_model(schema), features.to_inputs(df, schema, source))
    y = schema.labels(df, source)
    with _workdir(Path(tempfile.gettempdir()), "bigmodel-join-") as work:
        np.savez(work / "data.npz", x=x, y=y)
        status = work / "status.jsonl"
        status.touch()
        node = work / "node.json"
        node.write_text(json.dumps({"prep": str(prepared.path.resolve()), "data": str(work / "data.npz"),
                                    "seed": seed, "status": str(status)}))
        _wait_for(address, wait)
        security = ["--root-certificates", str(tls_ca)] if tls_ca else ["--insecure"]
        # --max-wait-time: a SuperNode that cannot talk to the server (say, TLS on one side only) stops
        with _process(["flower-supernode", *security, "--superlink", address, "--port", str(_free_port()),
                       "--max-wait-time", str(CONNECT_SECONDS),
                       "--node-config", f"bigmodel={json.dumps(str(node))}"],
                      work / "supernode.log", _flower_env(work), verbose) as supernode:
            rounds = _until_done(status, supernode, work / "supernode.log", address)
    return JoinResult(address, len(y), rounds)


def node_client(job: dict[str, Any]) -> KerasClient:
    """The ClientApp's client (in Flower's flwr-clientapp process, one per message): the rows `join` encoded."""
    schema = Schema.load(Path(job["prep"]))
    with np.load(job["data"]) as d:
        return KerasClient(schema, d["x"], d["y"], int(job["seed"]), Path(job["status"]))


_APP_TOML = """\
[project]
name = "bigmodel-federated"
version = "{version}"
description = "bigmodel's federated training: the components live in the installed bigmodel_cli package"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "bigmodel"

[tool.flwr.app.components]
serverapp = "bigmodel_cli.flower_app:server_app"
clientapp = "bigmodel_cli.flower_app:client_app"

[tool.flwr.app.config]
job = {job}
"""


def _ask(grid: Any, config: dict[str, Any], wait_for: int = 0, timeout: float = 120.0) -> dict[int, dict[str, Any]]:
    """Send a get_properties message with `config` to every node (after `wait_for` nodes joined); their answers."""
    from flwr.common import GetPropertiesIns
    from flwr.common.constant import MessageTypeLegacy
    from flwr.compat.common import recorddict_compat as compat

    while len(nodes := list(grid.get_node_ids())) < wait_for:
        time.sleep(1)
    content = compat.getpropertiesins_to_recorddict(GetPropertiesIns(config=config))
    replies = grid.send_and_receive([grid.create_message(content, MessageTypeLegacy.GET_PROPERTIES, node, "bigmodel")
                                     for node in nodes], timeout=timeout)
    return {r.metadata.src_node_id: compat.recorddict_to_getpropertiesres(r.content).properties
            for r in replies if not r.has_error()}


def _follow(status: Path, run: Any, log: Path, on_round: Any) -> dict[str, Any]:
    """Pass the ServerApp's round records to on_round until its last record (result or error) arrives."""
    from .errors import BigModelError

    seen = 0
    while True:
        finished = run.poll() is not None
        records = read_status(status)
        for record in records[seen:]:
            if "round" in record:
                if on_round is not None:
                    on_round(record["round"], record["rounds"], record["metrics"])
            elif "error" in record:
                raise BigModelError(record["error"])
            else:
                return record
        seen = len(records)
        if finished:  # the ServerApp crashed: a bug (exit 3), not a user error
            raise RuntimeError(f"federated serve: the Flower run ended without a result: {_last_line(log)} "
                               "(run with --verbose to see Flower's logs)")
        time.sleep(0.5)


def _until_done(status: Path, supernode: Any, log: Path, address: str, patience: float = 60.0) -> int:
    """Wait for the server's "done"; count the rounds this node trained in. Fails if the SuperNode stops or
    the server is unreachable for `patience` seconds."""
    host, port = _host_port(address, "--server")
    lost_since = None
    while True:
        records = read_status(status)
        rounds = sum(1 for r in records if "round" in r)
        if any(r.get("done") for r in records):
            return rounds
        if supernode.poll() is not None:
            if not records:
                raise DataError(f"federated join: no connection to the server at {address} in {CONNECT_SECONDS} s "
                                f"({_last_line(log)}); if the server uses TLS, pass the CA that signed its "
                                "certificate with --tls-ca, and only then")
            raise DataError(f"federated join: Flower's SuperNode stopped: {_last_line(log)}")
        if _reachable(host, port) is None:
            lost_since = None
        else:
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > patience:
                raise DataError(f"federated join: lost the server at {address} after {rounds} round(s)")
        time.sleep(1)


@contextlib.contextmanager
def _process(cmd: list[str], log: Path, env: dict[str, str],
             verbose: bool) -> Iterator[subprocess.Popen[bytes]]:
    """One of Flower's programs as a child process, its output in `log` (on stderr with --verbose), stopped
    with everything it started when the block ends, whatever ends it."""
    exe = Path(sys.executable).parent / cmd[0]
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(exe) if exe.exists() else cmd[0], *cmd[1:]], env=env, stdin=subprocess.DEVNULL,
                                stdout=2 if verbose else f, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s, to `proc` and all its descendants. Flower's SuperLink and SuperNode
    start their app processes in sessions of their own, which outlive them (a ServerApp left waiting for
    clients polls a SuperLink that is gone, forever), so a process group is not enough: the family is
    read from /proc (Linux; elsewhere only `proc` itself is signalled)."""
    import signal

    family = [proc.pid, *_descendants(proc.pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in family:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None and not any(_alive(p) for p in family[1:]):
                return
            time.sleep(0.2)
    proc.wait()


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie not yet reaped counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    family, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        family += kids
        todo += kids
    return family


@contextlib.contextmanager
def _workdir(parent: Path, prefix: str) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _flower_env(work: Path, superlinks: str = "") -> dict[str, str]:
    """Flower's programs with their own FLWR_HOME in `work` (apps, state, the SuperLink connection), our
    environment's bin first on PATH (the SuperLink and SuperNode start flwr-serverapp / flwr-clientapp)."""
    home = work / "flwr"
    home.mkdir(exist_ok=True)
    if superlinks:
        (home / "config.toml").write_text(superlinks)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "FLWR_HOME": str(home), "PATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"}


def _last_line(log: Path) -> str:
    """The log's last exception line (`ValueError: ...`), else its last line."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace")) if log.exists() else ""  # colours
    lines = [re.sub(r"\s+", " ", ln).strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception): ", ln)]
    return (errors or lines or ["no output"])[-1]


def _host_port(address: str, option: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{option} {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9092")
    return host.strip("[]"), int(port)


def _check_free(host: str, port: int, address: str) -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as e:
        raise ConfigError(f"--address {address}: cannot listen there: "
                          f"{'port in use' if e.errno == errno.EADDRINUSE else e.strerror}") from None


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])




def _reachable(host: str, port: int) -> OSError | None:
    """None if something accepts a TCP connection at host:port, else why not."""
    import socket

    try:
        socket.create_connection((host, port), timeout=5).close()
        return None
    except OSError as e:
        return e


def _wait_for(address: str, seconds: float, proc: Any = None, log: Path | None = None) -> None:
    """Block until something listens at HOST:PORT (the server may start after its clients; our own
    SuperLink takes a few seconds). Fails early if `proc`, the program that should listen, stopped."""
    host, port = _host_port(address, "--server")
    deadline = time.monotonic() + seconds
    while (why := _reachable(host, port)) is not None:
        if proc is not None and proc.poll() is not None:
            raise DataError(f"federated serve: Flower's SuperLink stopped: {_last_line(log)}")
        if time.monotonic() > deadline:
            raise DataError(f"federated: no server at {address} after {seconds:g} s ({why})")
        time.sleep(0.5)
