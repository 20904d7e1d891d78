"""Who may talk to a deployed federation: registered SuperNodes, and nobody to the control API from outside.

- `bigmodel federated keygen --out NAME` writes a SuperNode key pair as Flower expects it: an EC P-384 key,
  the private half in OpenSSH format (NAME.key), the public half as one OpenSSH line (NAME.pub).
- `federated serve --authorized-keys FILE` runs the SuperLink with Flower's `--enable-supernode-auth` and
  registers each public key of FILE with `flwr supernode register` before the run starts; a SuperNode whose
  key is not registered is refused when it connects (Flower answers its activation with HTTP 412).
- Flower 1.42 serves its Control API (`/v1/control/*`: list, start and stop runs, register SuperNodes) from the
  same HTTP server as the Fleet API, with no authentication in the open-source build (its account-auth plugin
  is Enterprise-only and cannot be supplied from outside Flower). So the SuperLink always listens on
  127.0.0.1 only, and `Front` listens on `--address`: it forwards `POST /v1/fleet/<name>` (what a SuperNode
  sends: protobuf over HTTP/1.1) to the SuperLink and answers 404 to everything else.
"""

from __future__ import annotations

import contextlib
import re
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

FLEET = re.compile(r"^/v1/fleet/[a-z-]+$")
# hop-by-hop headers (RFC 9110 §7.6.1) and those the proxy recomputes; Flower's own (flwr-public-key,
# flwr-timestamp, flwr-signature: the node's signature covers the timestamp only) pass unchanged
MAX_BODY = 1 << 30  # a fleet message carries model weights; beyond 1 GiB it is not one of ours: 413
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization",
       "proxy-authenticate", "host", "content-length"}


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path

    def to_dict(self) -> dict[str, str]:
        return {"private": str(self.private), "public": str(self.public)}


def keygen(out: Path) -> KeyPair:
    """Write OUT.key (private, OpenSSH, owner-only) and OUT.pub (public, one OpenSSH line); refuse to overwrite."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from .. import artifacts

    out = Path(out)
    if out.name in ("", ".", ".."):
        raise ConfigError(f"--out {out}: give a name for the key files, e.g. --out client_a")
    pair = KeyPair(out.with_name(out.name + ".key"), out.with_name(out.name + ".pub"))
    for path in (pair.private, pair.public):
        if path.exists():
            raise ConfigError(f"{path} exists; remove it or choose another --out (a key is never overwritten)")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    with artifacts.atomic_path(pair.private, mode=0o600) as tmp:  # the temp file is 0600 from the start
        tmp.write_bytes(private)
    artifacts.write_text(pair.public, public.decode() + "\n")
    return pair


def authorized_keys(path: Path) -> list[str]:
    """The public keys of an authorized-keys file: one OpenSSH EC public key per line (`.pub` files
    concatenated); blank lines and `#` comments are skipped. Each is checked, naming the line."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--authorized-keys {path}: cannot read it ({e})") from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = load_ssh_public_key(line.encode())
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigError(f"--authorized-keys {path}: line {number} is not an OpenSSH public key (make keys "
                              f"with `bigmodel federated keygen`)") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ConfigError(f"--authorized-keys {path}: line {number} is not an elliptic-curve key (Flower "
                              f"needs ecdsa-sha2-nistp*; make keys with `bigmodel federated keygen`)")
        keys.append(" ".join(line.split()[:2]))  # the comment is not part of the key
    if not keys:
        raise ConfigError(f"--authorized-keys {path}: no public key in it")
    if len(set(keys)) < len(keys):
        raise ConfigError(f"--authorized-keys {path}: a key is listed twice (Flower registers each key once)")
    return keys


def private_key(path: Path) -> Path:
    """Check that `join --key` names an EC private key in OpenSSH format, as Flower's SuperNode loads it."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    try:
        key = load_ssh_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"--key {path}: not an unencrypted OpenSSH private key ({e}); make one with "
                          f"`bigmodel federated keygen`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"--key {path}: not an elliptic-curve key; make one with `bigmodel federated keygen`")
    return Path(path)


def front_app(upstream: str, ca: Path | None) -> Any:
    """The ASGI app of the front: POST /v1/fleet/<name> (no query) goes to the SuperLink at `upstream` (https
    verified with `ca`, or http), anything else — any other path or method — is a 404; a body over MAX_BODY is
    a 413; an unreachable SuperLink is a 503, which a SuperNode retries. Proxy variables are ignored: the
    SuperLink is on this host."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    verify: Any = ssl.create_default_context(cafile=str(ca)) if ca else False
    client = httpx.AsyncClient(base_url=upstream, verify=verify, trust_env=False,
                               timeout=httpx.Timeout(300.0, connect=10.0))
    not_found = Response(b"not found\n", status_code=404, media_type="text/plain")

    async def forward(request: Request) -> Response:
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return Response(b"too large\n", status_code=413, media_type="text/plain")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return Response(b"too large\n", status_code=413, media_type="text/plain")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        try:
            up = await client.post(request.url.path, content=bytes(body), headers=headers)
        except httpx.TransportError:
            return Response(b"the SuperLink is not reachable\n", status_code=503, media_type="text/plain")
        return Response(up.content, status_code=up.status_code,
                        headers={k: v for k, v in up.headers.items() if k.lower() not in HOP | {"content-encoding"}})

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> Any:
        yield
        await client.aclose()

    fleet = Starlette(routes=[Route("/{path:path}", forward, methods=["POST"])], lifespan=lifespan)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not (scope["method"] == "POST" and FLEET.match(scope["path"])
                                            and not scope.get("query_string")):
            await not_found(scope, receive, send)  # before any routing: every other method and path alike
            return
        await fleet(scope, receive, send)

    return app


@contextlib.contextmanager
def front(host: str, port: int, upstream: str, ca: Path | None = None, cert: Path | None = None,
          key: Path | None = None) -> Iterator[None]:
    """The front listening at host:port (TLS with cert/key) while the block runs, in a thread of this process."""
    import uvicorn

    config = uvicorn.Config(front_app(upstream, ca), host=host, port=port, log_level="warning", access_log=False,
                            ssl_certfile=str(cert) if cert else None, ssl_keyfile=str(key) if key else None,
                            lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="bigmodel-front", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ConfigError(f"--address {host}:{port}: the front could not listen there")
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)
