"""Kills and interrupts: the previous model survives byte for byte, --resume finishes the run."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from .conftest import bm, read_json

# under `make test` (pytest -n 2 --dist loadgroup) one worker runs this module, so its module fixtures are made once
pytestmark = pytest.mark.xdist_group("kill")

EPOCHS = 24
LONG = ["--set", f"train.epochs={EPOCHS}", "--set", "train.early_stopping.enabled=false",
        "--set", "train.checkpoint_seconds=0"]  # a checkpoint every epoch: the kills land between known epochs


MANY = ["--set", "train.epochs=500"]  # a run the test's signal surely interrupts


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def start_train(prep: Path, run: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bigmodel_cli", "train", str(prep), "--out", str(run), *LONG, *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def epochs_done(run: Path) -> int:
    for folder in (run / "checkpoint", run / ".checkpoint.old"):
        try:
            return json.loads((folder / "state.json").read_text())["epoch"]
        except (OSError, ValueError):
            continue
    return 0


def wait_for_epoch(proc: subprocess.Popen, run: Path, epoch: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while epochs_done(run) < epoch:
        assert proc.poll() is None, f"train ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def previous(penguins_prep, tmp_path_factory):
    """A run folder holding a good, finished model, and an uninterrupted reference run."""
    run = tmp_path_factory.mktemp("kill") / "run"
    bm("train", penguins_prep, "--out", run, "--set", "train.epochs=2")
    reference = run.parent / "reference"
    bm("train", penguins_prep, "--out", reference, *LONG)
    return run, reference


def test_sigkill_at_several_points_then_resume(penguins_prep, previous):
    run, reference = previous
    model_sha, manifest = sha(run / "model.keras"), read_json(run / "manifest.json")
    for kill_at in (None, 1, 9):  # during start-up (no checkpoint yet), after the 1st epoch, mid-run
        proc = start_train(penguins_prep, run, *(["--resume"] if epochs_done(run) else []))
        if kill_at is None:
            time.sleep(1.0)
        else:
            wait_for_epoch(proc, run, kill_at)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert sha(run / "model.keras") == model_sha, f"model.keras changed after a kill at epoch {kill_at}"
        assert read_json(run / "manifest.json") == manifest
    done_before = epochs_done(run)
    assert done_before >= 9
    # a stale lock from the killed process is taken over
    assert (run / ".lock").exists()
    r = bm("train", penguins_prep, "--out", run, *LONG, "--resume", "--json")
    doc = json.loads(r.stdout)
    assert doc["epochs_run"] == EPOCHS
    m = read_json(run / "manifest.json")
    assert m["epochs_run"] == EPOCHS and m["resumed"] is True
    assert not (run / "checkpoint").exists() and not (run / ".lock").exists()
    # the resumed run saw the same batches and state: same history as the uninterrupted one
    got, want = pd.read_csv(run / "history.csv"), pd.read_csv(reference / "history.csv")
    assert list(got["epoch"]) == list(range(1, EPOCHS + 1))
    pd.testing.assert_frame_equal(got, want, atol=1e-5, rtol=1e-4)


def test_sigint_exits_130_and_keeps_checkpoint(penguins_prep, previous, tmp_path):
    run = tmp_path / "run"
    bm("train", penguins_prep, "--out", run, "--set", "train.epochs=1")
    model_sha = sha(run / "model.keras")
    # (500 epochs: penguins' 3 steps an epoch at batch 128 ran all 24 and exited 0 before a loaded machine
    # delivered the signal; the signal ends the run long before the 500th)
    proc = start_train(penguins_prep, run, *MANY)
    wait_for_epoch(proc, run, 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert sha(run / "model.keras") == model_sha
    assert epochs_done(run) >= 2 and not (run / ".lock").exists()
    shutil.rmtree(run / "checkpoint")
    proc = start_train(penguins_prep, run, *MANY)
    wait_for_epoch(proc, run, 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert sha(run / "model.keras") == model_sha


def test_second_trainer_is_refused_while_first_runs(penguins_prep, tmp_path):
    run = tmp_path / "run"
    proc = start_train(penguins_prep, run)
    try:
        wait_for_epoch(proc, run, 1)
        r = bm("train", penguins_prep, "--out", run, "--set", "train.epochs=1", code=2)
        assert "in use by another bigmodel process" in r.stderr and str(proc.pid) in r.stderr
    finally:
        proc.kill()
        proc.wait()


def test_resume_without_checkpoint_or_with_other_config(penguins_prep, tmp_path):
    run = tmp_path / "run"
    r = bm("train", penguins_prep, "--out", run, "--resume", code=2)
    assert "no checkpoint to resume from" in r.stderr
    proc = start_train(penguins_prep, run)
    wait_for_epoch(proc, run, 1)
    proc.kill()
    proc.wait()
    r = bm("train", penguins_prep, "--out", run, *LONG, "--resume", "--set", "train.batch_size=16",
           "--set", "train.optimizer.learning_rate=0.01", code=2)
    assert "another config (train.batch_size, train.optimizer.learning_rate differ)" in r.stderr
    assert "only train.epochs, train.early_stopping.patience" in r.stderr


def test_resume_with_a_new_epoch_budget(penguins_prep, tmp_path):
    """Interrupted, then resumed with more epochs: the stopping budget may change, the run finishes with it."""
    run = tmp_path / "run"
    proc = start_train(penguins_prep, run)
    wait_for_epoch(proc, run, 2)
    proc.kill()
    proc.wait()
    done = epochs_done(run)
    doc = json.loads(bm("train", penguins_prep, "--out", run, *LONG, "--resume", "--set", f"train.epochs={EPOCHS + 6}",
                        "--json").stdout)
    assert doc["epochs_run"] == EPOCHS + 6 > done
    assert read_json(run / "manifest.json")["resumed"] is True


def test_stale_lock_of_dead_process_is_taken_over(penguins_prep, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(f"{dead.pid}\n")
    bm("train", penguins_prep, "--out", run, "--set", "train.epochs=1")
    assert (run / "manifest.json").exists() and not (run / ".lock").exists()


def _tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN, as CI has): {r.stderr.strip()}")


def _fill(disk: Path) -> None:
    """Write until the file system says ENOSPC."""
    block = b"\0" * (1 << 16)
    with open(disk / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError as e:
            assert e.errno == 28, e  # ENOSPC


def test_disk_full_during_train_leaves_the_run_folder_as_it_was(penguins_prep, penguins_run, tmp_path):
    """The OS returns ENOSPC part-way through training (a real tmpfs, filled while train runs): exit 2 with one
    line, every earlier file byte-identical, no TensorBoard logs of the failed run (only the checkpoint, kept for
    --resume)."""
    disk = tmp_path / "disk"
    _tmpfs(disk, "16m")
    try:
        run = disk / "run"
        shutil.copytree(penguins_run, run)  # a good earlier run, its TensorBoard logs too

        def files() -> dict[str, str]:
            return {str(p.relative_to(run)): sha(p) for p in run.rglob("*") if p.is_file()
                    and not str(p.relative_to(run)).startswith(("checkpoint", ".checkpoint"))}

        before = files()
        assert any(name.startswith("logs/") for name in before)
        proc = start_train(penguins_prep, run, "--set", "train.tensorboard=true")
        wait_for_epoch(proc, run, 2)
        _fill(disk)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        errors = [line for line in err.splitlines() if line.startswith("error:")]  # the rest: epoch progress lines
        assert len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in err, err
        assert files() == before
        assert not (run / artifacts_partial()).exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def artifacts_partial() -> str:
    from bigmodel_cli import artifacts

    return artifacts.LOGS_PARTIAL


SCHEDULE = ["--set", "train.reduce_lr={patience: 2, factor: 0.5, min_lr: 0.0}",
            "--set", "train.optimizer.learning_rate=0.05"]


def test_resume_keeps_the_learning_rate_schedule(penguins_prep, tmp_path):
    """ReduceLROnPlateau's counters are in the checkpoint: a twice-killed run, resumed, reduces the learning rate
    at the same epochs and ends with the uninterrupted run's history."""
    reference = tmp_path / "reference"
    bm("train", penguins_prep, "--out", reference, *LONG, *SCHEDULE)
    want = pd.read_csv(reference / "history.csv")
    assert want["learning_rate"].nunique() >= 3, want["learning_rate"]  # the schedule reduced, more than once
    run = tmp_path / "run"
    for kill_at in (5, 12):
        proc = start_train(penguins_prep, run, *SCHEDULE, *(["--resume"] if epochs_done(run) else []))
        wait_for_epoch(proc, run, kill_at)
        proc.kill()
        proc.wait()
    bm("train", penguins_prep, "--out", run, *LONG, *SCHEDULE, "--resume")
    pd.testing.assert_frame_equal(pd.read_csv(run / "history.csv"), want, atol=1e-5, rtol=1e-4)


def test_a_signal_swallowed_where_it_was_raised_is_raised_again(monkeypatch):
    """Python raises a signal's exception wherever the main thread is; in a __del__ (TensorFlow has many) it is
    printed as "ignored" and lost. The handlers remember it, and each epoch's end (interrupts.check) raises it."""
    import os

    from bigmodel_cli import interrupts
    from bigmodel_cli.errors import Terminated

    class Sink:
        def __init__(self, sig: int) -> None:
            self.sig = sig

        def __del__(self) -> None:
            os.kill(os.getpid(), self.sig)  # the handler runs here, and its exception is ignored

    lost: list[type] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: lost.append(u.exc_type))
    for sig, exc in ((signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)):
        restore = interrupts.install()
        try:
            Sink(sig)
            assert lost[-1] is exc  # raised in __del__ and "ignored": the way it was lost
            with pytest.raises(exc):
                interrupts.check()
        finally:
            restore()
        interrupts.check()  # nothing pending once restored
