"""`bigmodel federated serve` / `join`: the deployment engine, on Flower's SuperLink / SuperNode runtime.

`serve` starts a SuperLink on 127.0.0.1, registers the --authorized-keys with it, opens the front at --address
(auth.py: only the fleet API passes) and submits the Flower App of app.py to it (as `flwr run` does); each
`join` encodes its client's own file with the prep folder's preprocessing and starts a SuperNode (with its
key, if given) that connects to the front. This module starts processes and waits on them; what runs inside
Flower's own processes (flwr-serverapp; flwr-clientapp, one per message) is app.py's. The two sides talk through
files: a job file (JSON) each reads, and a status file they append JSON records to (rounds, then the result or the
error; the rounds a client trained in, then "done"). The server side is server.Federation, the client
client.KerasClient, the same as in simulation, so SecAgg+ and client-level DP work here too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, artifacts
from ..config import Config
from ..errors import ConfigError, DataError
from ..folders import open_prep
from . import auth
from .budget import budget
from .client import read_status
from .processes import follow, job_folder, last_line, process, workdir
from .run_folder import FederatedResult, tracked
from .server import need_flwr


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
            if not _names_loopback(self.cert):
                raise ConfigError(f"--tls-cert {self.cert}: the certificate must also name 127.0.0.1 (an IP subject "
                                  f"alternative name): the front and Flower's own processes reach the SuperLink there")


def _names_loopback(cert: Path) -> bool:
    """Whether the (first) certificate in a PEM file lists 127.0.0.1 among its subject alternative names."""
    import ipaddress

    from cryptography import x509

    try:
        names = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)


CONNECT_SECONDS = 30  # a SuperNode gives up after failing to reach the SuperLink this long


def server_tls(ca: Path | None, cert: Path | None, key: Path | None) -> Tls | None:
    """serve's --tls-ca / --tls-cert / --tls-key: all three, or none (no TLS)."""
    if not (ca or cert or key):
        return None
    if not (ca and cert and key):
        raise ConfigError("TLS needs all three of --tls-ca, --tls-cert and --tls-key")
    return Tls(ca, cert, key)


@dataclass(frozen=True)
class ServerOptions:
    """What `federated serve` is asked to do."""

    prep: Path  # the prep folder (the server evaluates on its validation split)
    out: Path  # the run folder to write
    config: Config  # resolved (config.resolve)
    address: str  # HOST:PORT where clients connect (the front)
    tls: Tls | None = None
    authorized_keys: Path | None = None  # admit only the SuperNodes with these public keys
    resume: bool = False  # continue the interrupted run in `out` from its last complete round
    verbose: bool = False  # Flower's logs on stderr


def serve(options: ServerOptions, on_event: Any = None) -> FederatedResult:
    """`bigmodel federated serve`: a SuperLink on 127.0.0.1 behind the front at `address` (auth.py), with
    the authorized public keys registered if given, and our Flower App run on it, which waits for
    `federated.clients` SuperNodes (`bigmodel federated join`), runs the rounds and writes the run folder;
    `on_event` hears every round."""
    prep, out, cfg, address, tls = options.prep, options.out, options.config, options.address, options.tls
    verbose, keys_file, resume, on_round = options.verbose, options.authorized_keys, options.resume, on_event
    need_flwr()
    host, port = _host_port(address, "--address")
    _check_free(host, port, address)
    if tls is not None:
        tls.check()
    keys = auth.authorized_keys(keys_file) if keys_file is not None else []
    if keys and tls is None:
        raise ConfigError("--authorized-keys needs TLS (--tls-ca, --tls-cert, --tls-key): Flower authenticates "
                          "SuperNodes only over TLS")
    budget(cfg, open_prep(Path(prep)).split_rows("train"))  # a budget that fits no round fails here, first
    with job_folder(prep, out, cfg.to_yaml(), verbose, resume) as j:
        work, status = j.work, j.status
        app = work / "app"
        app.mkdir()
        (app / "pyproject.toml").write_text(_APP_TOML.format(version=__version__, job=json.dumps(str(j.file))))
        inner = _free_port()  # the SuperLink's, on loopback only: its control API must not be reachable from outside
        security = (f"root-certificates = {json.dumps(str(tls.ca.resolve()))}\n" if tls else "insecure = true\n")
        env = _flower_env(work, f'[superlink]\ndefault = "bigmodel"\n[superlink.bigmodel]\n'
                                f'address = "127.0.0.1:{inner}"\n{security}')

        def rounds(hook: Any) -> FederatedResult:
            with process(["flower-superlink", *(tls.superlink_args() if tls else ["--insecure"]), "--host",
                          "127.0.0.1", "--port", str(inner), "--disable-runtime-dependency-installation",
                          *(["--enable-supernode-auth"] if keys else [])],
                         work / "superlink.log", env, verbose) as link:
                _wait_for(f"127.0.0.1:{inner}", 60, link, work / "superlink.log")
                for k, key in enumerate(keys):
                    _register(work, k, key, env, keys_file)
                upstream = f"{'https' if tls else 'http'}://127.0.0.1:{inner}"
                with (auth.front(host, port, upstream, *((tls.ca, tls.cert, tls.key) if tls else ())),
                      process(["flwr", "run", str(app), "bigmodel", "--stream"], work / "run.log", env, verbose)
                      as run):
                    record = follow(status, run, work / "run.log", hook)
                    with contextlib.suppress(subprocess.TimeoutExpired):  # the run folder is written: done
                        run.wait(timeout=60)
            return FederatedResult.from_dict(record["result"])

        return tracked(cfg, prep, out, on_round, rounds)


def _register(work: Path, k: int, key: str, env: dict[str, str], keys_file: Path | None) -> None:
    """Register one SuperNode public key with our SuperLink, as `flwr supernode register` does (over its
    control API on loopback)."""
    pub = work / f"node{k}.pub"
    pub.write_text(key + "\n")
    exe = Path(sys.executable).parent / "flwr"
    done = subprocess.run([str(exe) if exe.exists() else "flwr", "supernode", "register", str(pub), "bigmodel"],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 or "registered" not in done.stdout + done.stderr:
        log = work / "register.log"
        log.write_text(done.stdout + done.stderr)
        raise DataError(f"--authorized-keys {keys_file}: Flower did not register key {k + 1}: {last_line(log)}")


@dataclass(frozen=True)
class JoinOptions:
    """What `federated join` is asked to do."""

    prep: Path  # the prep folder the server uses (its fitted preprocessing encodes `data`)
    data: Path  # this client's own rows (CSV or Parquet), with the target
    server: str  # the server's HOST:PORT
    seed: int = 0  # this client's seed
    wait: float = 600.0  # seconds to keep retrying to reach the server
    tls_ca: Path | None = None  # the CA that signed the server's certificate
    key: Path | None = None  # this client's private key, for a server with authorized keys
    verbose: bool = False  # Flower's logs on stderr


def join(options: JoinOptions, on_event: Any = None) -> JoinResult:
    """`bigmodel federated join`: a SuperNode connected to the SuperLink at `server`, whose client trains on
    its own CSV or Parquet file encoded with the prep folder's fitted preprocessing; with `key`, it
    authenticates with that private key (the server must have its public key). Returns its row count and the
    rounds it trained in when the server says it is done."""
    prep, data, address, seed, wait = options.prep, options.data, options.server, options.seed, options.wait
    tls_ca, verbose, key = options.tls_ca, options.verbose, options.key
    need_flwr()
    _host_port(address, "--server")
    if tls_ca is not None:
        Tls(tls_ca).check()
    if key is not None:
        auth.private_key(key)
        if tls_ca is None:
            raise ConfigError("--key needs --tls-ca: Flower authenticates SuperNodes only over TLS")
    from .. import features
    from ..config import load_config
    from ..data import read_table
    from ..keras_env import import_keras

    prepared = open_prep(Path(prep))
    schema = prepared.schema
    cfg = load_config(prepared.folder / artifacts.CONFIG)
    df = read_table(Path(data), cfg.data)
    source = str(data)
    schema.check_columns(df, source, need_target=True)
    import_keras(seed)
    x = features.apply(features.preprocessing_model(schema), features.to_inputs(df, schema, source))
    y = schema.labels(df, source)
    with workdir(Path(tempfile.gettempdir()), "bigmodel-join-") as work:
        np.savez(work / "data.npz", x=x, y=y)
        status = work / "status.jsonl"
        status.touch()
        node = work / "node.json"
        node.write_text(json.dumps({"prep": str(prepared.path.resolve()), "data": str(work / "data.npz"),
                                    "seed": seed, "status": str(status)}))
        _wait_for(address, wait)
        security = ["--root-certificates", str(tls_ca)] if tls_ca else ["--insecure"]
        # --max-wait-time: a SuperNode that cannot talk to the server (say, TLS on one side only) stops
        with process(["flower-supernode", *security, "--superlink", address, "--port", str(_free_port()),
                       "--max-wait-time", str(CONNECT_SECONDS),
                       *(["--auth-supernode-private-key", str(key)] if key is not None else []),
                       "--node-config", f"bigmodel={json.dumps(str(node))}"],
                      work / "supernode.log", _flower_env(work), verbose) as supernode:
            rounds = _until_done(status, supernode, work / "supernode.log", address, key)
    return JoinResult(address, len(y), rounds)


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
serverapp = "bigmodel_cli.federated.app:server_app"
clientapp = "bigmodel_cli.federated.app:client_app"

[tool.flwr.app.config]
job = {job}
"""


def _until_done(status: Path, supernode: Any, log: Path, address: str, key: Path | None,
                patience: float = 60.0) -> int:
    """Wait for the server's "done"; count the rounds this node trained in. Fails if the SuperNode stops
    (its key refused, say) or the server is unreachable for `patience` seconds."""
    host, port = _host_port(address, "--server")
    lost_since = None
    while True:
        records = read_status(status)
        rounds = sum(1 for r in records if "round" in r)
        if any(r.get("done") for r in records):
            return rounds
        if supernode.poll() is not None:
            _refused(log, address, key)
            if not records:
                raise DataError(f"federated join: no connection to the server at {address} in {CONNECT_SECONDS} s "
                                f"({last_line(log)}); if the server uses TLS, pass the CA that signed its "
                                "certificate with --tls-ca, and only then")
            raise DataError(f"federated join: Flower's SuperNode stopped: {last_line(log)}")
        if _reachable(host, port) is None:
            lost_since = None
        else:
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > patience:
                raise DataError(f"federated join: lost the server at {address} after {rounds} round(s)")
        time.sleep(1)


def _refused(log: Path, address: str, key: Path | None) -> None:
    """The one-line error for a SuperNode that Flower refused to admit (its activation answered 412)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    if "[code: 2001]" in text:  # no key, and the server admits only registered SuperNodes
        raise DataError(f"federated join: the server at {address} admits only registered clients; pass --key "
                        f"with a private key whose .pub its operator listed in --authorized-keys")
    if "[code: 2004]" in text or "Failed to activate SuperNode" in text:
        raise DataError(f"federated join: the server at {address} refused this client's key {key}: its public "
                        f"key is not in the server's --authorized-keys")
    if "[code: 23]" in text:
        raise DataError(f"federated join: the server at {address} has a client with key {key} already connected")


def _flower_env(work: Path, superlinks: str = "") -> dict[str, str]:
    """Flower's programs with their own FLWR_HOME in `work` (apps, state, the SuperLink connection), our
    environment's bin first on PATH (the SuperLink and SuperNode start flwr-serverapp / flwr-clientapp)."""
    home = work / "flwr"
    home.mkdir(exist_ok=True)
    if superlinks:
        (home / "config.toml").write_text(superlinks)
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "FLWR_HOME": str(home), "PATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"}


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
            raise DataError(f"federated serve: Flower's SuperLink stopped: {last_line(log) if log else 'no log'}")
        if time.monotonic() > deadline:
            raise DataError(f"federated: no server at {address} after {seconds:g} s ({why})")
        time.sleep(0.5)
