"""The HTTP side of `serve`: a Starlette app of a few routes in TensorFlow Serving's REST API, its limits under
overload, and the bearer-token check.

Starlette (FastAPI's request validation would answer bad input with its own 422 format, and TF Serving's clients
expect `{"error": ...}`). At most `max_concurrency` predictions are computed at once and `max_queue` more wait (their
bodies read, or a slot); beyond that a predict request gets 503 with `Retry-After` at once instead of waiting without
limit; a body must arrive within `client_timeout` (else 408). `/healthz`, `/readyz` and `/metrics` skip the queue.
`/metrics`: Prometheus' text format (prometheus_client, a registry of the server's own): predict requests by status,
their latency, rows predicted, the model's load time and readiness, the process's memory and CPU.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import one_line
from .models import Model
from .requests import BadRequest, compute

VERSION = "1"
RETRY_AFTER = 1  # seconds, in a 503's Retry-After


@dataclass(frozen=True)
class Limits:
    """What one server promises to hold at most (the config's serve section: the --max-* and --client-timeout
    options)."""

    max_body: int  # bytes of one request body
    max_concurrency: int  # predictions computed at once
    max_queue: int  # predict requests admitted beyond those, waiting for a slot
    client_timeout: float  # seconds for a request's headers, and again for its body


# seconds: a predict of a few rows takes ~1 ms on onnxruntime, ~5-30 ms on TensorFlow; a queue under overload, seconds
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (a second app in one process counts apart); by
    model and version (the version that answered)."""

    def __init__(self, name: str, in_flight: Any, served: Any) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        from .window import Collector

        self.registry = r = CollectorRegistry()
        self.name = name
        self.requests = Counter("bigmodel_requests", "Predict requests answered, by HTTP status code",
                                ["model", "version", "code"], registry=r)
        self.latency = Histogram("bigmodel_request_seconds", "Predict requests: seconds from arrival to answer",
                                 ["model", "version"], buckets=BUCKETS, registry=r)
        self.rows = Counter("bigmodel_rows_predicted", "Rows predicted (in answered requests)", ["model", "version"],
                            registry=r)
        self.load_seconds = Gauge("bigmodel_model_load_seconds", "Seconds the version took to load and warm up",
                                  ["model", "version"], registry=r)
        self.ready = Gauge("bigmodel_model_ready", "1 while the version is loaded and serving, else 0",
                           ["model", "version"], registry=r)
        Gauge("bigmodel_requests_in_flight", "Predict requests admitted and not yet answered (reading, waiting "
              "or computing)", registry=r).set_function(in_flight)
        ProcessCollector(registry=r)
        r.register(Collector(served, name))  # drift of the last rows predicted, computed when scraped

    def answered(self, version: str, code: int, seconds: float) -> None:
        self.requests.labels(self.name, version, str(code)).inc()
        self.latency.labels(self.name, version).observe(seconds)

    def text(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _metrics(name: str, in_flight: Any, served: Any) -> Metrics | None:
    try:
        return Metrics(name, in_flight, served)
    except ImportError:  # (an install of the serve extra from before it held prometheus-client): no /metrics
        return None


@dataclass(frozen=True)
class Served:
    """The version answering requests; a request takes it once, so a swap to a new version never splits one."""

    version: str
    model: Model
    window: Any = None  # window.Window: its last rows predicted, for drift in /metrics (None: no reference.json)


@dataclass
class State:
    """What the server holds: the versions loaded (a dict replaced whole on every change, so a request that read it
    once is never split by a swap), every version's status, the labels, the counters."""

    name: str
    token: str | None
    limits: Limits
    loader: Any  # (version) -> (Model, window or None)
    labels: dict[str, str] = field(default_factory=dict)  # label -> version (serve.labels)
    loaded: dict[str, Served] = field(default_factory=dict)  # version -> Served
    error: str | None = None  # nothing could be loaded: why
    status: dict[str, tuple[str, str]] = field(default_factory=dict)  # version -> (LOADING|AVAILABLE|END, error)
    answered: int = 0
    admitted: int = 0  # predict requests between admission and answer (reading, waiting or computing)
    refused: int = 0  # predict requests answered 503 because the queue was full
    started: float = field(default_factory=time.monotonic)
    slots: asyncio.Semaphore | None = None  # made in the server's event loop, on the first request
    metrics: Metrics | None = None

    def __post_init__(self) -> None:
        self.metrics = _metrics(self.name, lambda: self.admitted, lambda: list(self.loaded.values()))

    @property
    def served(self) -> Served | None:
        """The newest version loaded: what a request without a version gets."""
        return newest(self.loaded)

    @property
    def model(self) -> Model | None:
        served = self.served
        return served.model if served is not None else None

    def load(self, version: str = VERSION) -> bool:
        """Load and warm up a version aside, then add it to those serving (requests in flight finish on the version
        they took); a version that fails is reported in its status and the ones serving go on."""
        self.status[version] = ("LOADING", "")
        t0 = time.perf_counter()
        try:
            model, window = self.loader(version)
            warm = {f.key: np.array([[np.nan]], dtype="float32") if f.takes_number else np.array([[""]], dtype=object)
                    for f in model.schema.features}
            model.predict(warm)  # traces the graph / allocates the runtime before the first request
        except Exception as e:  # noqa: BLE001  (reported by /readyz and the model status; the process stays up)
            self.status[version] = ("END", one_line(e))
            if not self.loaded:
                self.error = one_line(e)
            return False
        self.loaded = {**self.loaded, version: Served(version, model, window)}
        self.status[version], self.error = ("AVAILABLE", ""), None
        if self.metrics is not None:
            self.metrics.load_seconds.labels(self.name, version).set(time.perf_counter() - t0)
            self.metrics.ready.labels(self.name, version).set(1)
        return True

    def unload(self, version: str) -> None:
        """Stop serving a version (requests that already took it finish on it); END, as TF Serving reports it."""
        self.loaded = {v: s for v, s in self.loaded.items() if v != version}
        self.status[version] = ("END", "")
        if self.metrics is not None:
            self.metrics.ready.labels(self.name, version).set(0)

    def follow(self, wanted: Any, present: list[int]) -> list[tuple[str, bool]]:
        """Make the loaded versions those `wanted(present)` picks (versions.Policy.pick), newest first; a version
        that failed to load is not tried again while its folder is there, and is left out of the pick, so the ones
        serving stay. A version
        serving is unloaded only once its successors are loaded. Returns (version, loaded?) for each load tried."""
        tried: list[tuple[str, bool]] = []
        for v, (_, why) in list(self.status.items()):  # a failed version that is gone: a new one of that number
            if why and v.isdigit() and int(v) not in present and v not in self.loaded:  # is tried afresh
                del self.status[v]
        failed = {v for v, (st, why) in self.status.items() if st == "END" and why}
        while True:
            pick = [str(v) for v in wanted([v for v in present if str(v) not in failed])]
            todo = [v for v in reversed(pick) if v not in self.loaded]
            if not todo:
                break
            ok = self.load(todo[0])
            tried.append((todo[0], ok))
            if not ok:
                failed.add(todo[0])
        for v in list(self.loaded):
            if v not in pick and pick:
                self.unload(v)
        return tried


def newest(loaded: dict[str, Served]) -> Served | None:
    return loaded[max(loaded, key=lambda v: int(v) if v.isdigit() else 0)] if loaded else None


def app(state: State) -> Any:
    """The ASGI app: the routes over `state`, behind the token check when the state has a token."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    api = _Api(state)
    inner = Starlette(routes=[
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/v1/models/{rest:path}", api.models, methods=["GET", "POST"]),
    ], exception_handlers={404: api.not_found, 405: api.not_allowed, 500: api.internal})
    return inner if state.token is None else _with_token(inner, state.token)


def _error(message: str, status: int) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


class _Api:
    """The routes: health, readiness, and /v1/models/NAME[/versions/N][:predict]."""

    def __init__(self, state: State) -> None:
        self.state = state

    async def healthz(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "up"})

    async def readyz(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        state = self.state
        if state.model is not None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "failed" if state.error else "loading", "error": state.error},
                            status_code=503)

    async def metrics(self, request: Any) -> Any:
        from starlette.responses import Response

        if self.state.metrics is None:
            return _error("/metrics needs the prometheus-client package: pip install 'bigmodel[serve]'", 404)
        body, media_type = self.state.metrics.text()
        return Response(body, media_type=media_type)

    async def models(self, request: Any) -> Any:
        """/v1/models/NAME[/versions/N | /labels/LABEL][:predict]: a version's status (GET) or a prediction."""
        from starlette.responses import JSONResponse

        state = self.state
        name, _, verb = request.path_params["rest"].partition(":")
        name, _, version = name.partition("/versions/")
        name, _, label = name.partition("/labels/")
        loaded = state.loaded  # (read once: a swap does not split this request)
        if label and name == state.name:
            if label not in state.labels:
                return _error(f"Unrecognized servable version label: {label} (serve.labels has "
                              f"{', '.join(sorted(state.labels)) or 'none'})", 404)
            version = state.labels[label]
        if name != state.name or "/" in name or (version and version not in state.status and not label):
            return _error(f"Servable not found for request: {'Specific' if version else 'Latest'}({name}"
                          f"{', ' + version if version else ''})", 404)
        if request.method == "GET":
            if verb:
                return _error(f"unknown method :{verb}; POST :predict", 404)
            shown = sorted(dict(state.status).items(), key=lambda kv: -int(kv[0]) if kv[0].isdigit() else 0)
            return JSONResponse({"model_version_status": [{
                "version": v, "state": st, "status": {"error_code": "UNKNOWN" if why else "OK", "error_message": why}}
                for v, (st, why) in shown if not version or v == version]})
        if verb != "predict":
            return _error(f"unknown method :{verb}; this server answers :predict", 404)
        served = loaded.get(version) if version else newest(loaded)
        if version and loaded and served is None:  # known, but not (or no longer) loaded
            which = f"label {label} is version {version}, which" if label else f"version {version}"
            return _error(f"Servable not found for request: Specific({name}, {version}); {which} is not loaded "
                          f"(serving: {', '.join(sorted(loaded, key=int))})", 404)
        return await self.admit(request, served)

    async def admit(self, request: Any, served: Served | None) -> Any:
        """A predict request, answered and counted (its status and latency in /metrics, by the version serving)."""
        started = time.perf_counter()
        response = await self._admit(request, served)
        if self.state.metrics is not None:
            self.state.metrics.answered(served.version if served else "", response.status_code,
                                        time.perf_counter() - started)
        return response

    async def _admit(self, request: Any, served: Served | None) -> Any:
        """A predict request: refused at once (413, 503) or admitted to the queue and answered."""
        from starlette.responses import JSONResponse

        state, limits = self.state, self.state.limits
        if served is None:
            return _error(state.error or "the model is still loading; GET /readyz says when it is ready", 503)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body:
            return _error(f"the body is {int(length)} bytes; the limit is {limits.max_body} (--max-body-mb)", 413)
        if state.admitted >= limits.max_concurrency + limits.max_queue:
            state.refused += 1
            return JSONResponse({"error": f"the server is busy ({limits.max_concurrency} predictions at once and "
                                          f"{limits.max_queue} waiting: --max-concurrency, --max-queue); retry "
                                          f"after {RETRY_AFTER} s"},
                                status_code=503, headers={"Retry-After": str(RETRY_AFTER)})
        state.admitted += 1
        try:
            return await self.answer(request, served)
        finally:
            state.admitted -= 1

    async def answer(self, request: Any, served: Served) -> Any:
        """An admitted predict request: its body (within the client timeout), a slot, the prediction by `served`."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse

        state, limits = self.state, self.state.limits
        body = bytearray()
        try:
            async with asyncio.timeout(limits.client_timeout):
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limits.max_body:
                        return _error(f"the body is over the limit of {limits.max_body} bytes (--max-body-mb)", 413)
        except TimeoutError:
            return JSONResponse({"error": f"the request body did not arrive within {limits.client_timeout:g} s "
                                          f"(--client-timeout)"}, status_code=408, headers={"Connection": "close"})
        if state.slots is None:
            state.slots = asyncio.Semaphore(limits.max_concurrency)
        async with state.slots:
            try:  # parsing too, off the event loop: /healthz answers while a large body is read into arrays
                fmt, x, out = await run_in_threadpool(compute, served.model, bytes(body))
            except BadRequest as e:
                return _error(str(e), e.status)
            except Exception as e:  # noqa: BLE001  (one line, and the server keeps serving)
                return _error(f"the model failed: {one_line(e)}", 500)
        values = np.asarray(out, dtype="float64")
        # JSON has no NaN or inf (a value far outside the training range can overflow the scaling): null
        values = np.where(np.isfinite(values), values, np.array(None)).tolist()
        state.answered += 1
        if state.metrics is not None:
            state.metrics.rows.labels(state.name, served.version).inc(len(values))
        if served.window is not None:
            served.window.add(x)
        return JSONResponse({"predictions" if fmt == "instances" else "outputs": values})

    async def not_found(self, request: Any, exc: Exception) -> Any:
        return _error(f"no such endpoint: {request.method} {request.url.path}", 404)

    async def not_allowed(self, request: Any, exc: Exception) -> Any:
        return _error(f"{request.method} is not allowed on {request.url.path}", 405)

    async def internal(self, request: Any, exc: Exception) -> Any:
        return _error(f"internal error: {type(exc).__name__}", 500)


def _with_token(inner: Any, token: str) -> Any:
    """`inner` behind a check that every HTTP request carries `Authorization: Bearer TOKEN` (compared in
    constant time)."""
    from starlette.responses import JSONResponse

    expected = token.encode()

    async def with_token(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scheme, _, given = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), expected):
                response = JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer ...)"},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await inner(scope, receive, send)

    return with_token
