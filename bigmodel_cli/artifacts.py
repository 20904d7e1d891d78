"""Every artifact path, written atomically; a folder is complete once its manifest.json exists."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__
from .errors import DataError

SCHEMA_VERSION = 1

# prep folder
TRAIN, VAL, TEST = "train.parquet", "val.parquet", "test.parquet"
SPLIT_FILES = {"train": TRAIN, "val": VAL, "test": TEST}
SCHEMA = "schema.json"
REPORT = "report.json"
CONFIG = "config.yaml"
MANIFEST = "manifest.json"
# run folder
MODEL = "model.keras"
HISTORY = "history.csv"
CURVE = "training_curve.png"
METRICS = "metrics.json"
EVAL = "eval"  # evaluation plots
LOGS = "logs"  # TensorBoard
CHECKPOINT = "checkpoint"  # per-epoch state of an unfinished training, for --resume
LOCK = ".lock"
# export folder
SAVEDMODEL = "savedmodel"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path` (same suffix); rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)  # mkstemp makes 0600; artifacts get the usual umask-based mode
        os.replace(tmp_path, path)
    except OSError as e:  # disk full, read-only, a folder in the way: the old file is untouched
        raise DataError(f"{path}: cannot write: {e.strerror or e}") from None
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temp folder beside `path`; swap it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp"))
    try:
        yield tmp
        os.chmod(tmp, _DIR_MODE)  # mkdtemp makes 0700
        old = previous_dir(path)
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise DataError(f"{path}: cannot write: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def previous_dir(path: Path) -> Path:
    """Where `atomic_dir` keeps the old folder while it swaps in the new one (a kill in between leaves it)."""
    return path.with_name(f".{path.name}.old")


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, doc: Any) -> None:
    write_text(path, json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """Versions of what produced an artifact (imports TensorFlow: call from stages that use it)."""
    import keras
    import tensorflow as tf

    return {"bigmodel": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__}


@dataclass(frozen=True)
class Folder:
    """A prep, run or export folder: `kind` is recorded in its manifest."""

    path: Path
    kind: str

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def prepare(self) -> None:
        """Make the folder and mark it incomplete until `finish()` writes a new manifest."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".bigmodel-write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise DataError(f"{self.path}: cannot write here: {e.strerror or e}") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold `.lock` (with our pid) for the block; a live owner makes us refuse, a dead one is taken over."""
        path = self.path / LOCK
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    owner = int(path.read_text().strip() or 0)
                except (OSError, ValueError):
                    owner = 0
                if owner and owner != os.getpid() and alive(owner):
                    raise DataError(f"{self.path}: in use by another bigmodel process (pid {owner}, {path}); "
                                    f"wait for it or remove the lock if that process is gone") from None
                path.unlink(missing_ok=True)  # stale: its owner died
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            break
        else:
            raise DataError(f"{path}: cannot take the lock")
        try:
            yield
        finally:
            path.unlink(missing_ok=True)

    def finish(self, manifest: dict[str, Any]) -> None:
        write_json(self.path / MANIFEST, {"schema_version": SCHEMA_VERSION, "kind": self.kind, **manifest})

    def manifest(self) -> dict[str, Any]:
        """Read the manifest of a complete folder of this kind, or say what is wrong."""
        if not self.path.is_dir():
            raise DataError(f"{self.path}: not a folder (expected a {self.kind} folder)")
        m = self.path / MANIFEST
        if not m.exists():
            raise DataError(f"{self.path}: incomplete {self.kind} folder (no {MANIFEST}); run the stage again")
        doc = read_json(m)
        if doc.get("kind") != self.kind:
            raise DataError(f"{self.path}: this is a {doc.get('kind')} folder, not a {self.kind} folder")
        return doc


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie not yet reaped counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
