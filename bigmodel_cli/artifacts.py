"""Every artifact's file name, atomic writes, and the folder frame: manifest (with its schema_version), lock.

A folder is complete once its manifest.json exists. Reading and writing the contents of prep and run
folders is folders.py's job, on top of this.
"""

from __future__ import annotations

import contextlib
import fcntl
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
from .errors import DataError, one_line

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
DRIFT = "drift.json"  # `bigmodel drift --out DIR`'s verdicts (report --drift DIR shows them)
REFERENCE = "reference.json"  # the train split's statistics `drift` compares data with (train writes it)
EVAL = "eval"  # evaluation plots: the files below, those that apply to the task
PLOT_CONFUSION, PLOT_ROC, PLOT_PR, PLOT_CALIBRATION = ("confusion_matrix.png", "roc.png", "precision_recall.png",
                                                       "calibration.png")
PLOT_PRED_VS_ACTUAL, PLOT_RESIDUALS = "predicted_vs_actual.png", "residuals.png"
EXPLAIN = "explain"  # `bigmodel explain`: the files below
IMPORTANCE, IMPORTANCE_PLOT, ATTRIBUTIONS = "importance.json", "importance.png", "attributions.csv"
HTML_REPORT = "report.html"  # `bigmodel report`'s default output
LOGS = "logs"  # TensorBoard
LOGS_PARTIAL = ".logs.partial"  # TensorBoard logs of the training in progress, moved to LOGS when the run is complete
CHECKPOINT = "checkpoint"  # per-epoch state of an unfinished training, for --resume: the files below
CKPT_STATE, CKPT_NETWORK, CKPT_BEST = "state.json", "model.keras", "best.npz"  # train's
CKPT_SEEDS = "seeds.npz"  # train's: the random-seed states of the network's layers (its Dropouts')
FED_STATE, FED_WEIGHTS = "federated.json", "weights.npz"  # federated's
LOCK = ".lock"
# tune folder (its best run is a run folder in BEST_RUN)
STUDY, TRIALS_CSV, BEST_CONFIG, BEST_RUN = "study.db", "trials.csv", "best.yaml", "best"
PLOT_HISTORY, PLOT_IMPORTANCES = "optimization_history.png", "param_importances.png"
WORKER_LOG = ".worker-{}.log"  # a parallel worker's stderr, by its number (1, 2, ...)
# export folder
SAVEDMODEL = "savedmodel"
ONNX = "model.onnx"
TFLITE = "model.tflite"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: Path, mode: int | None = None) -> Iterator[Path]:
    """Yield a temp path beside `path` (same suffix); rename it into place only if the block succeeds.
    `mode`: the file's permissions (default: the usual umask-based ones). A device or pipe (`--out /dev/null`,
    `/dev/stdout`, a FIFO) is written to as it is: renaming a file over it would replace the device itself."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():
        with writing(path):
            yield path
        return
    with writing(path):  # (a file where a parent folder should be: one line, as any other write)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with writing(path):  # disk full, read-only, a folder in the way: the old file is untouched
            yield tmp_path
            os.chmod(tmp_path, _FILE_MODE if mode is None else mode)  # mkstemp makes 0600; artifacts: the usual mode
            os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def damaged(path: Path, stage: str) -> Iterator[None]:
    """A file bigmodel wrote, but that fails where it is used (edited by hand, truncated, from elsewhere): the
    one-line DataError naming it and the command that writes it again."""
    import yaml

    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, OSError, yaml.YAMLError) as e:
        raise DataError(f"{path}: missing or damaged ({type(e).__name__}: {one_line(e, 200)}); run `bigmodel {stage}` "
                        f"again") from e


@contextlib.contextmanager
def writing(path: Path) -> Iterator[None]:
    """An OSError in the block as the one-line DataError naming `path` (the file being written)."""
    try:
        yield
    except OSError as e:
        raise DataError(f"{path}: cannot write: {e.strerror or e}") from None


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


def replace_dir(src: Path, dst: Path) -> None:
    """Put the finished folder `src` at `dst` (same file system), replacing what was there."""
    old = previous_dir(dst)
    try:
        shutil.rmtree(old, ignore_errors=True)
        if dst.exists():
            os.replace(dst, old)
        os.replace(src, dst)
    except OSError as e:
        raise DataError(f"{dst}: cannot write: {e.strerror or e}") from None
    finally:
        shutil.rmtree(old, ignore_errors=True)


def previous_dir(path: Path) -> Path:
    """Where `atomic_dir` keeps the old folder while it swaps in the new one (a kill in between leaves it)."""
    return path.with_name(f".{path.name}.old")


def version_folders(folder: Path) -> list[int]:
    """The complete integer version folders of a TF Serving base (NAME/1, NAME/2, ...), oldest first; [] for a
    run or export folder itself."""
    folder = Path(folder)
    if not folder.is_dir() or (folder / MANIFEST).exists():
        return []
    return sorted(int(p.name) for p in folder.iterdir()
                  if p.name.isdigit() and p.is_dir() and (p / MANIFEST).exists())


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
    except RecursionError:
        raise DataError(f"{path}: cannot read: nested too deeply") from None


def sha256(path: Path, stop: Any = None) -> str:
    """A file's SHA-256 (hex); `stop` (a threading.Event, for a hash taken beside other work): give up ('')."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            if stop is not None and stop.is_set():
                return ""
            h.update(block)
    return h.hexdigest()


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """Versions of what produced an artifact (imports TensorFlow: call from stages that use it)."""
    from .keras_env import import_keras, tensorflow

    keras, tf = import_keras(), tensorflow()
    return {"bigmodel": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__}


_MANIFEST_KEYS: dict[str, dict[str, type]] = {  # what later stages read from a folder's manifest
    "prep": {"data": dict, "splits": dict},
    "run": {"prep_dir": str},
}


def read_metrics(folder: Path) -> dict[str, Any]:
    """A run folder's metrics.json (bigmodel evaluate), or a one-line error saying what to run."""
    path = Path(folder) / METRICS
    if not path.exists():
        raise DataError(f"{folder}: no {METRICS}; run `bigmodel evaluate {folder}` first")
    doc = read_json(path)
    ok = (isinstance(doc, dict) and isinstance(doc.get("metrics"), dict) and isinstance(doc.get("task"), str)
          and isinstance(doc.get("data"), dict)
          and all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                  for v in doc["metrics"].values()))
    if not ok:
        raise DataError(f"{path}: damaged (its 'metrics' numbers, 'task' or 'data'); run `bigmodel evaluate "
                        f"{folder}` again")
    return doc


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
        m = self.path / MANIFEST
        doc = read_json(m) if m.is_file() else None
        kind = doc.get("kind") if isinstance(doc, dict) else None
        if kind is not None and kind != self.kind:  # a prep folder never turns into a run folder, or back
            raise DataError(f"{self.path}: this is a {kind} folder; writing {'an' if self.kind[0] in 'aeiou' else 'a'} "
                            f"{self.kind} folder there would mix the two: choose another --out")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive kernel lock (flock) on `.lock` for the block; another holder makes us refuse.

        The kernel drops the lock when its process dies, however it dies, so there is no stale lock to take
        over and no PID to be reused. The file records the holder's pid for the message. After locking we
        check that the path still names the file we locked (a holder that was finishing may have removed
        it), so two processes can never both hold the lock."""
        path = self.path / LOCK
        for _ in range(10):
            try:
                fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError as e:
                raise DataError(f"{path}: cannot take the lock: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise DataError(f"{self.path}: in use by another bigmodel process (pid {owner}); wait for it "
                                f"to finish") from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # we locked a file its last holder had just removed: try the new one
        else:
            raise DataError(f"{path}: cannot take the lock")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            path.unlink(missing_ok=True)  # while still locked: a waiter that opened it sees another inode
            os.close(fd)

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
        if not isinstance(doc, dict) or doc.get("kind") != self.kind:
            kind = doc.get("kind") if isinstance(doc, dict) else None
            an = "an" if self.kind[0] in "aeiou" else "a"
            raise DataError(f"{self.path}: this is a {kind} folder, not {an} {self.kind} folder")
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise DataError(f"{self.path}: written by an incompatible bigmodel version (schema_version "
                            f"{doc.get('schema_version')}; this version reads {SCHEMA_VERSION}); run the stage "
                            f"again with this version")
        for key, kind in _MANIFEST_KEYS.get(self.kind, {}).items():
            if not isinstance(doc.get(key), kind):
                raise DataError(f"{m}: damaged ({key}: missing or not a {kind.__name__}); run the stage again")
        return doc

