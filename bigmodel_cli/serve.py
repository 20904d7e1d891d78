"""`bigmodel serve`: real-time predictions over HTTP, speaking TensorFlow Serving's REST API — its options and the
server's lifecycle. What it serves is in serving/ (the model for a runtime, the request formats, the app).

uvicorn runs the app (serving/http.py). The model is loaded and warmed up in a thread once the socket listens, so
`/healthz` answers at once and `/readyz` says 503 until the model can answer.

Under overload it keeps its promises (`Limits`): see serving/http.py for the queue. A client must send a request's
headers within `client_timeout` seconds of connecting (or of its previous answer), or the connection is closed (slow
loris; `_with_deadlines`). So memory is bounded by (max_concurrency + max_queue) x max_body plus the open
connections, which uvicorn caps at MAX_CONNECTIONS (beyond that it answers 503 itself).
"""

from __future__ import annotations

import asyncio
import copy
import ipaddress
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import artifacts
from .config import Config
from .errors import ConfigError, DataError
from .serving.http import VERSION, Limits, State, app
from .serving.models import RUNTIMES, check, load
from .serving.versions import parse
from .serving.window import open_window

__all__ = ["RUNTIMES", "Limits", "ServeOptions", "ServeResult", "run"]

MAX_CONNECTIONS = 2048  # open connections (uvicorn's limit_concurrency); each holds a few kB until its deadline


@dataclass(frozen=True)
class ServeOptions:
    """What `serve` is asked to do: the folder, the resolved config (its `serve` section: where to listen, the
    runtime, how much to hold), who may ask."""

    folder: Path  # a run or export folder
    config: Config = field(default_factory=Config)
    token_file: Path | None = None  # a bearer token every request must send
    insecure: bool = False  # a non-loopback host without a token
    tls: tuple[Path, Path] | None = None  # (certificate, key), PEM
    verbose: bool = False  # uvicorn's access log on stderr
    unsafe: bool = False  # load a model with code in it

    @property
    def limits(self) -> Limits:
        s = self.config.serve
        return Limits(int(s.max_body_mb * 2**20), s.max_concurrency, s.max_queue, s.client_timeout)

    @property
    def url(self) -> str:
        s = self.config.serve
        host = f"[{s.host}]" if ":" in s.host else s.host
        return f"{'https' if self.tls else 'http'}://{host}:{s.port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the token file: {getattr(e, 'strerror', None) or e}") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise DataError(f"{path}: the token must be one line of at least 16 characters without spaces")
    return token


@dataclass(frozen=True)
class ServeResult:
    url: str
    stopped_by: str  # "SIGTERM" or "SIGINT"
    predictions: int  # predict requests answered with 200
    refused: int  # predict requests answered 503: the queue was full
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "stopped_by": self.stopped_by, "predictions": self.predictions,
                "refused": self.refused, "seconds": round(self.seconds, 3)}


def run(options: ServeOptions, on_event: Any = None) -> ServeResult:
    """Serve until SIGTERM / SIGINT: the socket stops accepting, requests in flight finish, then return.
    `on_event(what, detail)` hears "listening" (the URL) and "ready" (the predict URL)."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("serve needs starlette and uvicorn: pip install 'bigmodel[serve]'") from None
    o, s = options, options.config.serve
    token = read_token(o.token_file)
    if not is_loopback(s.host) and token is None and not o.insecure:
        raise ConfigError(f"--host {s.host} is reachable from the network: pass --token-file FILE (clients send "
                          f"'Authorization: Bearer TOKEN'), or --insecure-no-auth to serve without authentication")
    if o.tls is not None:
        _check_tls(o.tls)
    # a TF Serving base (NAME/1, NAME/2, ...): the versions its policy picks are served, and new ones picked up
    found = artifacts.version_folders(o.folder)
    policy = parse(s.versions)
    if not found and (str(policy) != "latest" or s.labels):
        raise ConfigError(f"{o.folder}: serve.versions and serve.labels need a base of versions (NAME/1, NAME/2, "
                          f"...: bigmodel export RUN --out NAME --version next)")
    picked = policy.pick(found)
    if found and not picked:
        raise ConfigError(f"{o.folder}: serve.versions {policy} picks none of its versions "
                          f"({', '.join(map(str, found))})")
    absent = {label: v for label, v in s.labels.items() if v not in found}
    if found and absent:
        label, v = next(iter(absent.items()))
        raise ConfigError(f"{o.folder}: serve.labels.{label} is version {v}, which is not there "
                          f"(versions: {', '.join(map(str, found))})")
    labelled = set(s.labels.values())

    def wanted(present: list[int]) -> list[int]:
        """The policy's pick, and every labelled version present (a label keeps its version loaded)."""
        return sorted(set(policy.pick(present)) | (labelled & set(present)))

    def folder_of(version: str) -> Path:
        return Path(o.folder) / version if found else Path(o.folder)

    check(folder_of(str(picked[-1]) if found else VERSION), s.runtime)
    url = o.url
    sock = _bind(s.host, s.port, url)
    d = o.config.drift
    limits = {"psi": d.psi, "missing": d.missing, "out_of_range": d.out_of_range}

    def loader(version: str) -> tuple[Any, Any]:
        folder = folder_of(version)
        check(folder, s.runtime)
        model = load(folder, s.runtime, o.unsafe)
        return model, open_window(folder, model.schema, limits)

    state = State(s.model_name, token, o.limits, loader, labels={k: str(v) for k, v in s.labels.items()})
    logs = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    logs["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout is for results; uvicorn logs access there
    tls = o.tls
    config = uvicorn.Config(app(state), log_level="info" if o.verbose else "warning", access_log=o.verbose,
                            log_config=logs,
                            lifespan="off", timeout_graceful_shutdown=30, limit_concurrency=MAX_CONNECTIONS,
                            http=_with_deadlines(s.client_timeout),
                            ssl_certfile=str(tls[0]) if tls else None, ssl_keyfile=str(tls[1]) if tls else None)
    server = _Server(config)

    def start_loading() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.01)
        if on_event is not None:
            on_event("listening", url)
        for version, ok in state.follow(wanted, found) if found else [(VERSION, state.load())]:
            if on_event is not None and found:
                on_event("version", f"{version} {'serving' if ok else 'failed: ' + state.status[version][1]}")
        if not state.loaded:
            server.should_exit = True  # a model that cannot load: stop, and say why
            return
        if on_event is not None:
            on_event("ready", f"{url}/v1/models/{s.model_name}:predict")
        while found and not server.should_exit:  # a versioned base: load new versions aside, then swap
            time.sleep(s.poll_seconds)
            try:
                present = artifacts.version_folders(o.folder)
            except OSError:
                continue
            if not present:  # (the base is gone or being rewritten: keep what is serving)
                continue
            for version, ok in state.follow(wanted, present):
                if on_event is not None:
                    on_event("version", f"{version} {'serving' if ok else 'failed: ' + state.status[version][1]}")

    threading.Thread(target=start_loading, daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    if state.error is not None:
        raise DataError(f"{o.folder}: cannot serve the model: {state.error}")
    return ServeResult(url, server.stopped_by, state.answered, state.refused, time.monotonic() - state.started)


def _check_tls(tls: tuple[Path, Path]) -> None:
    """What uvicorn will do with --tls-cert / --tls-key, here: a missing file or a bad PEM is one line, not a
    crash inside the server."""
    import ssl

    for p in tls:
        if not Path(p).is_file():
            raise DataError(f"{p}: no such file (--tls-cert / --tls-key)")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(tls[0]), str(tls[1]))
    except (ssl.SSLError, OSError) as e:
        raise DataError(f"{tls[0]}, {tls[1]}: not a usable TLS certificate and key: {e}") from None


def _bind(host: str, port: int, url: str) -> Any:
    """The listening socket, bound here so that a port in use is one line, not uvicorn's log and exit."""
    import socket

    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        raise DataError(f"{url}: cannot listen there: {e.strerror or e}") from None
    return sock


def _with_deadlines(seconds: float) -> Any:
    """uvicorn's HTTP protocol (httptools, else h11) with a deadline for each request's headers: a connection that
    sends nothing, or trickles its headers (slow loris), is closed `seconds` after it opened or after its last
    answer. uvicorn alone waits for them forever (its keep-alive timeout stops at the first byte). The deadline counts
    time the server was running: a timer that fires late (the server stalled) waits as long again, so a request that
    arrived during the stall is read before it is judged."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class Protocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        deadline: asyncio.TimerHandle | None = None
        due = 0.0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            super().connection_lost(exc)

        def _arm(self, after: float = seconds) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            if not self.transport.is_closing():
                self.due = self.loop.time() + after
                self.deadline = self.loop.call_later(after, self._expire)

        def _expire(self) -> None:
            self.deadline = None
            late = self.loop.time() - self.due
            if late > 0.05:  # the server stalled (starved of CPU, stopped): the client may have sent in time, and
                self._arm(min(late, seconds))  # libuv runs due timers before it reads, so read first, then judge
                return
            busy = self.cycle is not None and not self.cycle.response_complete  # headers in: the app's to time
            if not busy and not self.transport.is_closing():
                self.transport.close()

    return Protocol


class _Server:
    """uvicorn's Server, made to exit normally after a graceful stop (uvicorn re-raises the signal at the end,
    which would make SIGTERM an exit 143 even though every request was answered)."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            stopped_by = ""

            def handle_exit(self, sig: int, frame: Any) -> None:
                self.stopped_by = self.stopped_by or signal.Signals(sig).name
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True  # a second Ctrl-C: do not wait for requests in flight
                self.should_exit = True

        return Server(config)
