"""`bigmodel serve`: real-time predictions over HTTP, speaking TensorFlow Serving's REST API.

Starlette on uvicorn (an ASGI app of a few routes; FastAPI's request validation would answer bad input with its
own 422 format, and TF Serving's clients expect `{"error": ...}`). The model is loaded and warmed up in a thread
once the socket listens, so `/healthz` answers at once and `/readyz` says 503 until the model can answer.

Under overload it keeps its promises (`Limits`): at most `max_concurrency` predictions are computed at once and
`max_queue` more wait (their bodies read, or a slot); beyond that a predict request gets 503 with `Retry-After` at
once instead of waiting without limit. A client must send a request's headers within `client_timeout` seconds of
connecting (or of its previous answer) and its body within as long again, or the connection is closed (slow loris)
or answered 408. So memory is bounded by (max_concurrency + max_queue) x max_body plus the open connections, which
uvicorn caps at MAX_CONNECTIONS (beyond that it answers 503 itself). `/healthz` and `/readyz` skip the queue.

Runtimes: `tf` (the run's or export's Keras model with its preprocessing, in one traced `tf.function`), `onnx`
(an export's model.onnx in onnxruntime) and `tflite` (model.tflite in LiteRT): these two never import
TensorFlow, so no TensorFlow is in the request loop.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import ipaddress
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts
from .errors import ConfigError, DataError, one_line
from .schema import Schema, to_inputs

RUNTIMES = ("tf", "onnx", "tflite")
VERSION = "1"
MAX_CONNECTIONS = 2048  # open connections (uvicorn's limit_concurrency); each holds a few kB until its deadline
RETRY_AFTER = 1  # seconds, in a 503's Retry-After


@dataclass(frozen=True)
class Limits:
    """What one server promises to hold at most (the --max-* and --client-timeout options)."""

    max_body: int = 10 * 2**20  # bytes of one request body
    max_concurrency: int = 4  # predictions computed at once
    max_queue: int = 60  # predict requests admitted beyond those (64 in flight at most), waiting for a slot
    client_timeout: float = 10.0  # seconds for a request's headers, and again for its body


@dataclass(frozen=True)
class ServeOptions:
    """What `serve` is asked to do: the folder and runtime, where to listen, who may ask, how much to hold."""

    folder: Path  # a run or export folder
    host: str = "127.0.0.1"
    port: int = 8501
    name: str = "model"  # NAME in /v1/models/NAME:predict
    runtime: str = "tf"  # one of RUNTIMES
    token_file: Path | None = None  # a bearer token every request must send
    insecure: bool = False  # a non-loopback host without a token
    tls: tuple[Path, Path] | None = None  # (certificate, key), PEM
    limits: Limits = field(default_factory=Limits)
    verbose: bool = False  # uvicorn's access log on stderr
    unsafe: bool = False  # load a model with code in it

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


class BadRequest(Exception):
    """A request the model cannot answer: 4xx with TF Serving's {"error": message}."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Model:
    """What a request needs: the schema (columns in), a function of the input arrays (predictions out)."""

    schema: Schema
    predict: Any  # dict[key, (n, 1) array] -> (n, k) array


def check(path: Path, runtime: str) -> str:
    """The folder's kind ("run" or "export") if `runtime` can serve it; the cheap checks, before listening."""
    path = Path(path)
    manifest = path / artifacts.MANIFEST
    if not path.is_dir():
        raise DataError(f"{path}: no such folder (expected a run or export folder)")
    kind = artifacts.read_json(manifest).get("kind") if manifest.exists() else None
    if kind not in ("run", "export"):
        raise DataError(f"{path}: not a run or export folder (no complete {artifacts.MANIFEST})")
    artifacts.Folder(path, kind).manifest()  # of this version
    if runtime in ("onnx", "tflite"):
        file = path / (artifacts.ONNX if runtime == "onnx" else artifacts.TFLITE)
        if kind != "export" or not file.exists():
            raise ConfigError(f"--runtime {runtime} needs an export folder with {file.name}: bigmodel export RUN_DIR "
                              f"--format {runtime} --out EXPORT_DIR")
    return kind


def load(path: Path, runtime: str, unsafe: bool = False) -> Model:
    """A run folder (tf runtime) or an export folder (any runtime its files allow)."""
    kind = check(path, runtime)
    if runtime in ("onnx", "tflite"):
        from . import runtimes

        file = Path(path) / (artifacts.ONNX if runtime == "onnx" else artifacts.TFLITE)
        schema = Schema.load(Path(path))
        model = runtimes.load(file)
        if runtime == "tflite":  # a LiteRT interpreter is not thread-safe
            lock = threading.Lock()

            def predict(x: dict[str, np.ndarray]) -> np.ndarray:
                with lock:
                    return model(x)

            return Model(schema, predict)
        return Model(schema, model)
    return _tf_model(Path(path), kind, unsafe)


def _tf_model(path: Path, kind: str, unsafe: bool) -> Model:
    from .keras_env import tensorflow

    tf = tensorflow()
    if kind == "run":
        from .folders import load_run

        loaded = load_run(path, unsafe)
        schema, serving = loaded.schema, loaded.serving
    else:
        from . import features  # noqa: F401  (registers the preprocessing layers for loading)
        from .folders import load_network

        schema, serving = Schema.load(path), load_network(path / artifacts.MODEL, unsafe)
    spec = {f.key: tf.TensorSpec((None, 1), tf.float32 if f.takes_number else tf.string, name=f.key)
            for f in schema.features}
    call = tf.function(lambda x: serving(x, training=False), input_signature=[spec])

    def predict(x: dict[str, np.ndarray]) -> np.ndarray:
        return call({k: tf.constant(v) for k, v in x.items()}).numpy()

    return Model(schema, predict)


# ---- requests: TF Serving's row ("instances") and columnar ("inputs") formats -> the model's input arrays

def parse(body: bytes, schema: Schema) -> tuple[dict[str, np.ndarray], str]:
    """The input arrays of a predict request, and which format it used ("instances" or "inputs")."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested beyond reason
        raise BadRequest(f"the body is not JSON: {str(e)[:200] or type(e).__name__}") from None
    if not isinstance(doc, dict):
        raise BadRequest('the body must be a JSON object with "instances" or "inputs"')
    if doc.get("signature_name", "serving_default") != "serving_default":
        raise BadRequest(f"unknown signature_name {doc['signature_name']!r}; the model has serving_default")
    given = [k for k in ("instances", "inputs") if k in doc]
    if len(given) != 1:
        raise BadRequest('give exactly one of "instances" (rows) or "inputs" (columns)'
                         + (", not both" if given else ""))
    fmt = given[0]
    if fmt == "instances":
        rows = doc["instances"]
        if not isinstance(rows, list) or not rows:
            raise BadRequest('"instances" must be a non-empty list of {column: value} objects')
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise BadRequest(f"instances[{i}] must be an object of column: value")
        columns = {f.name: [_scalar(row.get(f.name), f"instances[{i}].{f.name}") for i, row in enumerate(rows)]
                   for f in schema.features}
        missing = [f.name for f in schema.features if any(f.name not in row for row in rows)]
    else:
        cols = doc["inputs"]
        if not isinstance(cols, dict):
            raise BadRequest('"inputs" must be an object of column: [values]')
        missing = [f.name for f in schema.features if f.name not in cols]
        columns = {}
        for f in schema.features:
            if f.name in missing:
                continue
            values = cols[f.name] if isinstance(cols[f.name], list) else [cols[f.name]]
            columns[f.name] = [_scalar(v, f"inputs.{f.name}[{i}]") for i, v in enumerate(values)]
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise BadRequest(f'"inputs" columns differ in length ({", ".join(map(str, sorted(lengths)))})')
    if missing:
        raise BadRequest(f"missing column(s) the model needs: {', '.join(missing)}")
    df = pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})
    try:
        for f in schema.features:
            if f.is_numeric:
                bad = [v for v in df[f.name] if isinstance(v, bool) or
                       (isinstance(v, str) and v.strip() and pd.isna(pd.to_numeric(v, errors="coerce")))]
                if bad:
                    raise BadRequest(f"column '{f.name}' is numeric; got {bad[0]!r}")
        return to_inputs(df, schema, fmt), fmt
    except DataError as e:
        raise BadRequest(str(e).removeprefix(f"{fmt}: ")) from None
    except (OverflowError, ValueError, UnicodeError) as e:  # a 400-digit integer, a lone surrogate
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise BadRequest(f"a value cannot be read: {first}") from None


def _scalar(v: Any, where: str) -> Any:
    if isinstance(v, list):  # TF Serving's one-element list per column
        if len(v) != 1:
            raise BadRequest(f"{where}: one value per row (a scalar or a one-element list), got {len(v)}")
        v = v[0]
    if isinstance(v, dict | list):
        raise BadRequest(f"{where}: a value must be a number, a string or null")
    return v


# ---- the app

@dataclass
class State:
    name: str
    token: str | None
    limits: Limits
    loader: Any  # () -> Model
    model: Model | None = None
    error: str | None = None
    answered: int = 0
    admitted: int = 0  # predict requests between admission and answer (reading, waiting or computing)
    refused: int = 0  # predict requests answered 503 because the queue was full
    started: float = field(default_factory=time.monotonic)
    slots: asyncio.Semaphore | None = None  # made in the server's event loop, on the first request

    def load(self) -> None:
        try:
            model = self.loader()
            warm = {f.key: np.array([[np.nan]], dtype="float32") if f.takes_number else np.array([[""]], dtype=object)
                    for f in model.schema.features}
            model.predict(warm)  # traces the graph / allocates the runtime before the first request
            self.model = model
        except Exception as e:  # noqa: BLE001  (reported by /readyz and the model status; the process stays up)
            self.error = one_line(e)


def compute(model: Model, body: bytes) -> tuple[str, Any]:
    """The request body parsed (BadRequest: a 4xx) and predicted: its format and the model's outputs."""
    x, fmt = parse(body, model.schema)
    return fmt, model.predict(x)


def app(state: State) -> Any:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    def error(message: str, status: int) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "up"})

    async def readyz(request: Request) -> JSONResponse:
        if state.model is not None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "failed" if state.error else "loading", "error": state.error},
                            status_code=503)

    async def models(request: Request) -> JSONResponse:
        rest = request.path_params["rest"]
        name, _, verb = rest.partition(":")
        name, _, version = name.partition("/versions/")
        if name != state.name or (version and version != VERSION) or "/" in name:
            return error(f"Servable not found for request: {'Specific' if version else 'Latest'}({name}"
                         f"{', ' + version if version else ''})", 404)
        if request.method == "GET":
            if verb:
                return error(f"unknown method :{verb}; POST :predict", 404)
            state_name = "AVAILABLE" if state.model else ("END" if state.error else "LOADING")
            return JSONResponse({"model_version_status": [{
                "version": VERSION, "state": state_name,
                "status": {"error_code": "UNKNOWN" if state.error else "OK", "error_message": state.error or ""}}]})
        if verb != "predict":
            return error(f"unknown method :{verb}; this server answers :predict", 404)
        if state.model is None:
            return error(state.error or "the model is still loading; GET /readyz says when it is ready", 503)
        limits = state.limits
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body:
            return error(f"the body is {int(length)} bytes; the limit is {limits.max_body} (--max-body-mb)", 413)
        if state.admitted >= limits.max_concurrency + limits.max_queue:
            state.refused += 1
            return JSONResponse({"error": f"the server is busy ({limits.max_concurrency} predictions at once and "
                                          f"{limits.max_queue} waiting: --max-concurrency, --max-queue); retry "
                                          f"after {RETRY_AFTER} s"},
                                status_code=503, headers={"Retry-After": str(RETRY_AFTER)})
        state.admitted += 1
        try:
            return await answer(request)
        finally:
            state.admitted -= 1

    async def answer(request: Request) -> JSONResponse:
        """An admitted predict request: its body (within the client timeout), a slot, the prediction."""
        limits = state.limits
        body = bytearray()
        try:
            async with asyncio.timeout(limits.client_timeout):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limits.max_body:
                        return error(f"the body is over the limit of {limits.max_body} bytes (--max-body-mb)", 413)
        except TimeoutError:
            return JSONResponse({"error": f"the request body did not arrive within {limits.client_timeout:g} s "
                                          f"(--client-timeout)"}, status_code=408, headers={"Connection": "close"})
        model = state.model
        assert model is not None  # admitted only once loaded; a model is never unloaded
        if state.slots is None:
            state.slots = asyncio.Semaphore(limits.max_concurrency)
        async with state.slots:
            try:  # parsing too, off the event loop: /healthz answers while a large body is read into arrays
                fmt, out = await run_in_threadpool(compute, model, bytes(body))
            except BadRequest as e:
                return error(str(e), e.status)
            except Exception as e:  # noqa: BLE001  (one line, and the server keeps serving)
                line = one_line(e)
                return error(f"the model failed: {line}", 500)
        values = np.asarray(out, dtype="float64")
        # JSON has no NaN or inf (a value far outside the training range can overflow the scaling): null
        values = np.where(np.isfinite(values), values, np.array(None)).tolist()
        state.answered += 1
        return JSONResponse({"predictions" if fmt == "instances" else "outputs": values})

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return error(f"no such endpoint: {request.method} {request.url.path}", 404)

    async def not_allowed(request: Request, exc: Exception) -> JSONResponse:
        return error(f"{request.method} is not allowed on {request.url.path}", 405)

    async def internal(request: Request, exc: Exception) -> JSONResponse:
        return error(f"internal error: {type(exc).__name__}", 500)

    inner = Starlette(routes=[
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/v1/models/{rest:path}", models, methods=["GET", "POST"]),
    ], exception_handlers={404: not_found, 405: not_allowed, 500: internal})

    if state.token is None:
        return inner
    expected = state.token.encode()

    async def with_token(scope: dict, receive: Any, send: Any) -> None:
        """Every HTTP request must carry `Authorization: Bearer TOKEN` (the token compared in constant time)."""
        if scope["type"] == "http":
            scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), expected):
                response = JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer ...)"},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await inner(scope, receive, send)

    return with_token


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
    o = options
    token = read_token(o.token_file)
    if not is_loopback(o.host) and token is None and not o.insecure:
        raise ConfigError(f"--host {o.host} is reachable from the network: pass --token-file FILE (clients send "
                          f"'Authorization: Bearer TOKEN'), or --insecure-no-auth to serve without authentication")
    if o.tls is not None:
        _check_tls(o.tls)
    check(o.folder, o.runtime)
    url = o.url
    sock = _bind(o.host, o.port, url)
    state = State(o.name, token, o.limits, lambda: load(o.folder, o.runtime, o.unsafe))
    logs = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    logs["handlers"]["access"]["stream"] = "ext://sys.stderr"  # stdout is for results; uvicorn logs access there
    tls = o.tls
    config = uvicorn.Config(app(state), log_level="info" if o.verbose else "warning", access_log=o.verbose,
                            log_config=logs,
                            lifespan="off", timeout_graceful_shutdown=30, limit_concurrency=MAX_CONNECTIONS,
                            http=_with_deadlines(o.limits.client_timeout),
                            ssl_certfile=str(tls[0]) if tls else None, ssl_keyfile=str(tls[1]) if tls else None)
    server = _Server(config)

    def start_loading() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.01)
        if on_event is not None:
            on_event("listening", url)
        state.load()
        if state.error is not None:
            server.should_exit = True  # a model that cannot load: stop, and say why
        elif on_event is not None:
            on_event("ready", f"{url}/v1/models/{o.name}:predict")

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
    answer. uvicorn alone waits for them forever (its keep-alive timeout stops at the first byte)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class Protocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        deadline: asyncio.TimerHandle | None = None

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

        def _arm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
            if not self.transport.is_closing():
                self.deadline = self.loop.call_later(seconds, self._expire)

        def _expire(self) -> None:
            self.deadline = None
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
