"""Data and outputs at fsspec URLs (`s3://`, `gs://`, `az://`, `https://` for reading): staged through local files.

A DATA argument (or a prep/run folder) given as a URL is copied to a local temporary file in blocks of
BLOCK bytes (never the whole object in memory), and the stage reads that copy exactly as it reads a local file
(the delimiter sniffed, the streaming path's chunks, the hash). An `--out` given as a URL is written locally as
always, then uploaded *aside* (a hidden `.NAME.tmp-…` key beside it) and copied into place in one server-side copy
per object, a folder's `manifest.json` last (and the old one deleted first), so a reader never takes a half-written
folder for a finished one, and a failed upload leaves the old object whole.

Credentials and endpoints come from the environment as each filesystem expects (s3fs: AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_ENDPOINT_URL; gcsfs: GOOGLE_APPLICATION_CREDENTIALS; adlfs:
AZURE_STORAGE_CONNECTION_STRING / AZURE_STORAGE_ACCOUNT_NAME …). Every failure is one DataError naming the URL.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .artifacts import MANIFEST
from .errors import BigModelError, DataError

BLOCK = 8 << 20  # bytes read from (and written to) an object store at a time
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]+)://")
# what each scheme needs installed: the `cloud` extra holds them all
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
             "abfss": "adlfs", "http": "aiohttp", "https": "aiohttp"}
_CREDENTIALS = {"s3fs": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE",
                "gcsfs": "GOOGLE_APPLICATION_CREDENTIALS", "adlfs": "AZURE_STORAGE_CONNECTION_STRING"}
_names: dict[str, str] = {}  # local copy -> the URL it came from (what manifests and messages name)


def is_url(location: str | Path) -> bool:
    """A `scheme://…` location other than a local `file://` one."""
    m = _URL.match(str(location))
    return m is not None and m.group(1).lower() != "file"


def name_of(path: str | Path) -> str:
    """The URL a local copy (or a file inside a copied folder) stands for, or the path itself: what manifests
    record and messages show."""
    text = str(path)
    for local, url in _names.items():
        if text == local or text.startswith(local + "/"):
            return url.rstrip("/") + text[len(local):]
    return text


def local_of(url: str) -> Path | None:
    """This process's local copy of a URL (downloaded, or written and not yet uploaded), if there is one."""
    for local, source in _names.items():
        if url == source or url.startswith(source.rstrip("/") + "/"):
            path = Path(local + url[len(source.rstrip("/")):])
            if path.exists():
                return path
    return None


def public(doc: Any) -> Any:
    """A result document with every local copy's path told as its URL (--json output)."""
    if not _names:
        return doc
    if isinstance(doc, dict):
        return {k: public(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [public(v) for v in doc]
    return name_of(doc) if isinstance(doc, str | Path) and str(doc).startswith("/") else doc


def _scheme(url: str) -> str:
    m = _URL.match(url)
    return m.group(1).lower() if m else ""


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for a URL and the path within it; a missing package is a one-line error."""
    package = _PACKAGES.get(_scheme(url), "fsspec")
    try:
        import fsspec.core
    except ImportError:
        raise DataError(f"{url}: reading and writing URLs needs fsspec: pip install 'bigmodel[cloud]'") from None
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError:
        raise DataError(f"{url}: {_scheme(url)}:// needs the {package} package: pip install 'bigmodel[cloud]'") \
            from None
    except ValueError as e:  # "Protocol not known"
        raise DataError(f"{url}: {e}") from None
    return fs, path


@contextlib.contextmanager
def _errors(url: str) -> Iterator[None]:
    """A filesystem's exceptions as one line naming the URL: missing, denied, unreachable, or what it said."""
    try:
        yield
    except BigModelError:
        raise
    except FileNotFoundError as e:
        why = _unreachable(e)
        raise DataError(f"{url}: cannot reach the server ({why})" if why else f"{url}: no such object") from None
    except PermissionError:
        creds = _CREDENTIALS.get(_PACKAGES.get(_scheme(url), ""), "")
        raise DataError(f"{url}: access denied; check the credentials" + (f" ({creds})" if creds else "")) from None
    except Exception as e:
        why = _unreachable(e)
        if why:
            raise DataError(f"{url}: cannot reach the server ({why})") from None
        raise DataError(f"{url}: {type(e).__name__}: {_line(e)}") from None


def _unreachable(e: BaseException) -> str | None:
    """Why a connection failed, if that is what `e` (or what caused it) says."""
    seen: BaseException | None = e
    for _ in range(4):
        if seen is None:
            return None
        name = type(seen).__name__
        if isinstance(seen, ConnectionError) or name in (
                "EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ServerDisconnectedError",
                "ClientConnectorDNSError", "gaierror"):
            return _line(seen)
        seen = seen.__cause__ or seen.__context__
    return None


def _line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def download(url: str, dest: Path) -> Path:
    """Copy the object (or, when `url` is a folder, every object under it) to `dest`, BLOCK bytes at a time."""
    fs, path = filesystem(url)
    with _errors(url):
        info = fs.info(path)
        if info.get("type") == "directory":
            dest.mkdir(parents=True, exist_ok=True)
            for key in fs.find(path):
                rel = key[len(path.rstrip("/")) + 1:]
                if rel and not any(part.startswith(".") and ".tmp" in part for part in rel.split("/")):
                    _copy(fs, key, dest / rel)
        else:
            _copy(fs, path, dest)
    _names[str(dest)] = url
    return dest


def _copy(fs: Any, key: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    # HTTP: one streamed GET (many servers answer no range requests); object stores: ranged reads of BLOCK bytes
    with fs.open(key, "rb", block_size=0 if "http" in protocols else BLOCK) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst, BLOCK)


_cache: Path | None = None


def cached(url: str) -> Path | None:
    """One object downloaded once per process (a run's prep folder at a URL: the split it is evaluated on), or
    None if there is no such object. The copies go when the process ends."""
    global _cache
    if _cache is None:
        import atexit

        _cache = Path(tempfile.mkdtemp(prefix="bigmodel-remote-"))
        atexit.register(shutil.rmtree, _cache, True)
    dest = _cache / secrets.token_hex(8) / url.rstrip("/").rpartition("/")[2]
    here = local_of(url)
    if here is not None:
        return here
    fs, path = filesystem(url)
    with _errors(url):
        if not fs.exists(path):
            return None
    return download(url, dest)


def _stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file under `folder` by its relative path: (size, mtime_ns)."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def upload_changes(local: Path, url: str, before: dict[str, tuple[int, int]]) -> None:
    """Put back into the folder at `url` only the files of `local` that are new or changed since `before` (evaluate
    writing metrics.json into a run: not the model again), each uploaded aside and copied into place."""
    fs, path = filesystem(url)
    path = path.rstrip("/")
    with _errors(url):
        for rel, stamp in sorted(_stamps(local).items(), key=lambda kv: (kv[0].endswith(MANIFEST), kv[0])):
            if before.get(rel) != stamp:
                aside = f"{path}/.{rel.replace('/', '_')}.tmp-{secrets.token_hex(4)}"
                try:
                    fs.put_file(str(local / rel), aside)
                    fs.copy(aside, f"{path}/{rel}")
                finally:
                    with contextlib.suppress(Exception):
                        fs.rm_file(aside)


def upload(local: Path, url: str) -> None:
    """Put a finished local file or folder at `url`: uploaded aside, then copied into place object by object
    (a folder's manifest.json last, its old one deleted first; objects the new folder no longer has removed)."""
    fs, path = filesystem(url)
    path = path.rstrip("/")
    parent, _, name = path.rpartition("/")
    aside = f"{parent}/.{name}.tmp-{secrets.token_hex(4)}" if parent else f".{name}.tmp-{secrets.token_hex(4)}"
    with _errors(url):
        if local.is_dir():
            files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (p.name == MANIFEST,
                                                                                           str(p)))
            try:
                for f in files:
                    fs.put_file(str(f), f"{aside}/{f.relative_to(local).as_posix()}")
                old = set(fs.find(path)) if fs.exists(path) else set()
                if f"{path}/{MANIFEST}" in old:
                    fs.rm_file(f"{path}/{MANIFEST}")
                new = set()
                for f in files:
                    rel = f.relative_to(local).as_posix()
                    fs.copy(f"{aside}/{rel}", f"{path}/{rel}")
                    new.add(f"{path}/{rel}")
                for key in old - new:
                    fs.rm_file(key)
            finally:
                with contextlib.suppress(Exception):
                    fs.rm(aside, recursive=True)
        else:
            try:
                fs.put_file(str(local), aside)
                fs.copy(aside, path)
            finally:
                with contextlib.suppress(Exception):
                    fs.rm_file(aside)


class Staging(contextlib.ExitStack):
    """A command's URL locations as local paths: `read` downloads now, `write` hands out a local path that is
    uploaded when the block ends without an error, or with one of `complete` (the CLI's failed gate, whose outputs
    are whole); errors that name a local copy are told with its URL instead."""

    def __init__(self, complete: tuple[type[BaseException], ...] = ()) -> None:
        super().__init__()
        self._complete = complete
        self._tmp: Path | None = None
        self._uploads: list[tuple[Path, str]] = []
        self._updates: list[tuple[Path, str, dict[str, tuple[int, int]]]] = []

    def _dir(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="bigmodel-remote-"))
            self.callback(shutil.rmtree, self._tmp, True)
            self.callback(self._forget, str(self._tmp))
        return self._tmp

    @staticmethod
    def _forget(root: str) -> None:
        for local in [k for k in _names if k.startswith(root + "/")]:
            del _names[local]

    def _slot(self, url: str) -> Path:
        name = url.rstrip("/").rpartition("/")[2] or "data"
        slot = self._dir() / secrets.token_hex(4)
        slot.mkdir()
        return slot / name

    def read(self, location: str | Path) -> Path:
        if not is_url(location):
            return Path(location)
        return download(str(location), self._slot(str(location)))

    def read_optional(self, location: str | Path | None) -> Path | None:
        return None if location is None else self.read(location)

    def update(self, location: str | Path) -> Path:
        """A folder read now and, being written into, uploaded again when the block ends."""
        local = self.read(location)
        if is_url(location):
            self._updates.append((local, str(location), _stamps(local)))
        return local

    def write(self, location: str | Path) -> Path:
        if not is_url(location):
            return Path(location)
        url = str(location)
        if _scheme(url) in ("http", "https"):
            raise DataError(f"{url}: {_scheme(url)}:// is for reading; write to a local path or to s3://, gs://, az://")
        filesystem(url)  # (a missing package before any work)
        local = self._slot(url)
        _names[str(local)] = url
        self._uploads.append((local, url))
        return local

    def commit(self) -> None:
        """Upload what was written (before the result is shown: "wrote s3://…" only once it is there)."""
        uploads, self._uploads = self._uploads, []
        for local, url in uploads:
            if local.exists():
                upload(local, url)
        updates, self._updates = self._updates, []
        for local, url, before in updates:
            upload_changes(local, url, before)

    def __exit__(self, kind: Any, e: Any, tb: Any) -> bool:
        try:
            if e is None or isinstance(e, self._complete):
                self.commit()
            if isinstance(e, BigModelError) and _names:
                text = str(e)
                for copy, url in sorted(_names.items(), key=lambda kv: -len(kv[0])):
                    text = text.replace(copy, url)
                if text != str(e):
                    e.args = (text, *e.args[1:])
        except BaseException:
            super().__exit__(None, None, None)
            raise
        return bool(super().__exit__(kind, e, tb))
