"""The command itself: help, version, exit codes, no TensorFlow on --help, the installed script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bigmodel_cli import __version__

from .conftest import bm


def test_help_lists_every_stage():
    import typer.main

    from bigmodel_cli.cli import app

    registered = set(typer.main.get_command(app).commands)
    assert {"init", "preprocess", "train", "evaluate", "export", "predict", "compare", "report",
            "federated"} <= registered
    out = bm("--help").stdout
    listed = {line.split()[1] for line in out.splitlines() if line.startswith("│ ") and len(line.split()) > 2}
    assert registered <= listed, registered - listed


def test_version():
    assert bm("--version").stdout.strip() == f"bigmodel {__version__}"


def test_help_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from bigmodel_cli.cli import app\n"
        "from typer.testing import CliRunner\n"
        "for args in (['--help'], ['train', '--help'], ['--version']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'pandas', 'sklearn') if m in sys.modules)\n"
        "print(','.join(heavy) or 'none')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "none"


def test_installed_console_script_runs():
    script = shutil.which("bigmodel", path=str(Path(sys.executable).parent)) or shutil.which("bigmodel")
    assert script, "the bigmodel console script is not installed"
    done = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and __version__ in done.stdout
    done = subprocess.run([script, "evaluate", "/no/such/run"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "/no/such/run" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_missing_data_file_is_usage_error(tmp_path):
    r = bm("preprocess", tmp_path / "nope.csv", "--target", "y", "--out", tmp_path / "p", code=2)
    assert "nope.csv" in r.stderr and "no such file" in r.stderr
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback(tmp_path):
    r = bm("--debug", "preprocess", tmp_path / "nope.csv", "--target", "y", "--out", tmp_path / "p", code=2)
    assert "Traceback" in r.stderr


def test_choices_are_listed_and_match_the_stages():
    """The options with a fixed set of values list them in --help (Enums), and each set is the stage's own."""
    import typing

    from bigmodel_cli import export, serve
    from bigmodel_cli.cli.app import ExportFormat, Runtime, Strategy
    from bigmodel_cli.config import TrainConfig

    assert [f.value for f in ExportFormat] == list(export.FORMATS)
    assert [r.value for r in Runtime] == list(serve.RUNTIMES)
    strategies = typing.get_args(TrainConfig.model_fields["strategy"].annotation)
    assert [s.value for s in Strategy] == list(strategies)
    import typer.main

    from bigmodel_cli.cli import app

    fmt = next(p for p in typer.main.get_command(app).commands["export"].params if p.name == "fmt")
    assert list(fmt.type.choices) == list(export.FORMATS)  # what --help and completion list
    r = bm("evaluate", "/no/such/run", "--split", "holdout", code=2)
    assert "--split" in r.stderr and "holdout" in r.stderr


def test_shell_completion_lists_commands_and_choices():
    """Completion is on (bash, zsh, fish): the installed script completes command names and an option's choices."""
    script = shutil.which("bigmodel", path=str(Path(sys.executable).parent)) or shutil.which("bigmodel")
    assert script

    def complete(words: str) -> list[str]:
        env = {**os.environ, "_BIGMODEL_COMPLETE": "complete_bash", "COMP_WORDS": words,
               "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1))}
        done = subprocess.run([script], capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert {"preprocess", "train", "evaluate", "federated"} <= set(complete("bigmodel "))
    assert set(complete("bigmodel export run --format ")) == {"savedmodel", "keras", "onnx", "tflite"}
    assert "--install-completion" in bm("--help").stdout
