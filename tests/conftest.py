"""Shared fixtures: real (tiny) trainings on the sample data, made once per session through the CLI."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from bigmodel_cli.cli import app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data"
PENGUINS = SAMPLE / "penguins.csv"
CANCER = SAMPLE / "breast_cancer.csv"
FAST = ["--set", "train.epochs=3"]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under `make test` (--dist loadgroup) pytest-xdist marks each grouped test's id with its group; where it does
    not (pytest 9.2 with pytest-xdist 3.8: pytest-dev/pytest-xdist#1386) the groups are silently lost, each module's
    fixtures are made on both workers and the simulations run side by side: refuse, rather than run slowly."""
    if getattr(session.config.option, "loadgroup", False):
        lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
        if lost:
            raise pytest.UsageError(f"--dist loadgroup did not group {lost[0]} (and {len(lost) - 1} more): this "
                                    f"pytest and pytest-xdist do not work together (pytest-xdist#1386); "
                                    f"reinstall the dev extras")


def bm(*args: object, code: int | None = 0):
    """Run the CLI in-process; check the exit code (None: any)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if code is not None and result.exit_code != code:
        raise AssertionError(
            f"bigmodel {' '.join(map(str, args))}: exit {result.exit_code}, expected {code}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}\nexception: {result.exception!r}"
        )
    return result


def free_port() -> int:
    """A TCP port free on loopback now (for a server a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="session")
def penguins_prep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("penguins") / "prep"
    bm("preprocess", PENGUINS, "--target", "species", "--out", out)
    return out


@pytest.fixture(scope="session")
def penguins_run(penguins_prep: Path) -> Path:
    out = penguins_prep.parent / "run"
    bm("train", penguins_prep, "--out", out, *FAST)
    return out


@pytest.fixture(scope="session")
def cancer_prep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cancer") / "prep"
    bm("preprocess", CANCER, "--config", SAMPLE / "breast_cancer.yaml", "--out", out)
    return out


@pytest.fixture(scope="session")
def cancer_run(cancer_prep: Path) -> Path:
    out = cancer_prep.parent / "run"
    bm("train", cancer_prep, "--out", out, *FAST)
    return out
