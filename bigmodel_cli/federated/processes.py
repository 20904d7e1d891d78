"""Child processes of `bigmodel federated`: started with their output in a log, stopped with everything they
started, and the status file through which they report (rounds, then the result or the error).

Both engines run the rounds outside our process: the deployment in Flower's flwr-serverapp, the simulation in
a child of ours (simulation.py), since Ray's driver in our process would own its signals (ray.init replaces
the SIGTERM handler; its worker threads can block the interpreter's exit).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .client import read_status


def follow(status: Path, run: Any, log: Path, on_round: Any, what: str = "the Flower run") -> dict[str, Any]:
    """Pass the server's round records to on_round until its last record (result or error) arrives; a
    BigModelError for an error record, RuntimeError (a bug) if `run`, the process, ends without either."""
    from ..errors import BigModelError

    seen = 0
    while True:
        finished = run.poll() is not None
        records = read_status(status)
        for record in records[seen:]:
            if "round" in record:
                if on_round is not None:
                    on_round(record["round"], record["rounds"], record["metrics"])
            elif "warning" in record:
                from ..console import err

                err.print(f"warning: {record['warning']}", highlight=False, markup=False, soft_wrap=True)
            elif "error" in record:
                raise BigModelError(record["error"])
            else:
                return record
        seen = len(records)
        if finished:  # the ServerApp crashed: a bug (exit 3), not a user error
            raise RuntimeError(f"federated: {what} ended without a result: {last_line(log)} "
                               "(run with --verbose to see Flower's logs)")
        time.sleep(0.5)


@contextlib.contextmanager
def process(cmd: list[str], log: Path, env: dict[str, str], verbose: bool,
            gentle: int | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A program (ours, or one of Flower's) as a child process, its output in `log` (on stderr with --verbose),
    stopped with everything it started when the block ends, whatever ends it (first with signal `gentle`
    to the child alone, if given)."""
    exe = Path(sys.executable).parent / cmd[0]
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(exe) if exe.exists() else cmd[0], *cmd[1:]], env=env, stdin=subprocess.DEVNULL,
                                stdout=2 if verbose else f, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        _stop(proc, gentle)


def _stop(proc: subprocess.Popen[bytes], gentle: int | None = None) -> None:
    """SIGTERM, then SIGKILL after 10 s, to `proc` and all its descendants. Flower's SuperLink and SuperNode
    start their app processes in sessions of their own, which outlive them (a ServerApp left waiting for
    clients polls a SuperLink that is gone, forever), so a process group is not enough: the family is
    read from /proc (Linux; elsewhere only `proc` itself is signalled)."""
    import signal

    # a second Ctrl-C / SIGTERM must not cut the clean-up short (it would leave the processes running): noted
    # while the family is stopped, then raised by the handler it would have met (main thread only: elsewhere
    # Python runs no signal handler)
    if threading.current_thread() is not threading.main_thread():
        _stop_family(proc, gentle)
        return
    pending: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _stop_family(proc, gentle)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
    if pending:
        signal.raise_signal(pending[0])


def _stop_family(proc: subprocess.Popen[bytes], gentle: int | None) -> None:
    import signal

    family = [proc.pid, *descendants(proc.pid)]
    if gentle is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, gentle)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
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


def descendants(pid: int) -> list[int]:
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


@dataclass(frozen=True)
class Job:
    """A federated run handed to another process: its temporary folder in RUN_DIR, the job file it reads and
    the status file it reports to."""

    work: Path
    file: Path
    status: Path


@contextlib.contextmanager
def job_folder(prep: Path, out: Path, config_yaml: str, verbose: bool, resume: bool) -> Iterator[Job]:
    """RUN_DIR made and locked for the block, with a temporary folder in it holding the job file (prep, out,
    config, status, verbose, resume, work) and an empty status file; both gone when the block ends."""
    from .. import artifacts

    folder = artifacts.Folder(Path(out), "run")
    folder.prepare()
    with folder.lock(), workdir(folder.path, ".federated.") as work:
        status, file = work / "status.jsonl", work / "job.json"
        status.touch()
        file.write_text(json.dumps({"prep": str(Path(prep).resolve()), "out": str(folder.path.resolve()),
                                    "config": config_yaml, "status": str(status), "verbose": verbose,
                                    "resume": resume, "work": str(work)}))
        yield Job(work, file, status)


@contextlib.contextmanager
def workdir(parent: Path, prefix: str) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def last_line(log: Path) -> str:
    """The log's last exception line (`ValueError: ...`), else its last line."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace")) if log.exists() else ""  # colours
    lines = [re.sub(r"\s+", " ", ln).strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception): ", ln)]
    return (errors or lines or ["no output"])[-1]
