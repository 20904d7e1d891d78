"""The frame the stages share: the run-folder lock, the schema_version check, which way a metric is better,
one Keras entry point, one exit-code rule, and the README's command table against the real CLI."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bigmodel_cli import artifacts
from bigmodel_cli.gates import lower_is_better

from .conftest import FAST, PENGUINS, ROOT, bm, read_json

MODULES = sorted((ROOT / "bigmodel_cli").rglob("*.py"))  # the package and its subpackages

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from bigmodel_cli import artifacts
    from bigmodel_cli.errors import DataError
    folder, log, seconds = artifacts.Folder(Path(sys.argv[1]), "run"), Path(sys.argv[2]), float(sys.argv[3])
    try:
        with folder.lock():
            with log.open("a") as f:
                f.write(f"in {time.monotonic()}\\n")
            time.sleep(seconds)
            with log.open("a") as f:
                f.write(f"out {time.monotonic()}\\n")
    except DataError as e:
        print(e, file=sys.stderr)
        sys.exit(2)
""")


def _holder(folder: Path, log: Path, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(log), str(seconds)],
                            stderr=subprocess.PIPE, text=True)


def test_lock_dies_with_its_process(penguins_prep, tmp_path):
    """A kernel lock: refused while a live process holds it (naming its pid), free the moment it is killed."""
    run = tmp_path / "run"
    run.mkdir()
    holder = _holder(run, tmp_path / "log", 300)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "log").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        r = bm("train", penguins_prep, "--out", run, *FAST, code=2)
        assert "in use by another bigmodel process" in r.stderr and f"pid {holder.pid}" in r.stderr
        assert not (run / "manifest.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    bm("train", penguins_prep, "--out", run, *FAST)  # no stale lock to take over: the kernel dropped it
    assert (run / "manifest.json").exists() and not (run / ".lock").exists()


def test_lock_is_never_held_twice(tmp_path):
    """Processes racing for one folder (with a leftover lock file, as after a crash): the lock's holders
    never overlap, and the others are refused with the message."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".lock").write_text("12345\n")  # left by a process that died
    log = tmp_path / "log"
    for _ in range(3):
        procs = [_holder(folder, log, 0.3) for _ in range(6)]
        for p in procs:
            p.wait(timeout=60)
        refused = [p for p in procs if p.returncode == 2]
        assert all(p.returncode in (0, 2) for p in procs)
        assert all("in use by another bigmodel process" in p.stderr.read() for p in refused)
    spans = [line.split() for line in log.read_text().splitlines()]
    assert spans and [s[0] for s in spans] == ["in", "out"] * (len(spans) // 2)  # strictly one at a time


def test_folder_of_another_schema_version_is_refused(penguins_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(penguins_run, run)
    manifest = read_json(run / "manifest.json")
    (run / "manifest.json").write_text(json.dumps({**manifest, "schema_version": artifacts.SCHEMA_VERSION + 1}))
    r = bm("evaluate", run, code=2)
    assert "incompatible bigmodel version" in r.stderr and f"schema_version {artifacts.SCHEMA_VERSION + 1}" in r.stderr


def test_lower_is_better_agrees_with_keras():
    """One function says which way a metric is better; it agrees with every Keras metric that knows."""
    import inspect

    from bigmodel_cli.keras_env import import_keras

    keras = import_keras()
    checked = 0
    for name in dir(keras.metrics):
        cls = getattr(keras.metrics, name)
        if not (inspect.isclass(cls) and issubclass(cls, keras.metrics.Metric)):
            continue
        try:
            metric = cls()
        except (TypeError, ValueError):
            continue
        if getattr(metric, "_direction", None) in ("up", "down"):
            assert lower_is_better(metric.name) == (metric._direction == "down"), name
            assert lower_is_better(f"val_{metric.name}") == (metric._direction == "down"), name
            checked += 1
    assert checked >= 20
    for ours in ("log_loss", "rmse", "mae", "epsilon"):
        assert lower_is_better(ours)
    for ours in ("accuracy", "roc_auc", "macro_f1", "r2", "balanced_accuracy"):
        assert not lower_is_better(ours)


@pytest.mark.parametrize("target,monitor", [("body_mass_g", "val_mae"), ("species", "val_accuracy")])
def test_best_epoch_follows_the_monitor(target, monitor, tmp_path):
    """Early stopping on a metric where lower (val_mae) or higher (val_accuracy) is better keeps that epoch."""
    bm("preprocess", PENGUINS, "--target", target, "--out", tmp_path / "prep")
    bm("train", tmp_path / "prep", "--out", tmp_path / "run", "--set", "train.epochs=8",
       "--set", f"train.early_stopping.monitor={monitor}", "--set", "train.early_stopping.patience=50",
       "--set", "train.optimizer.learning_rate=0.05", "--set", "train.refit=false")
    h = pd.read_csv(tmp_path / "run" / "history.csv")
    values = h[monitor].to_numpy()
    want = int(np.argmin(values) if lower_is_better(monitor) else np.argmax(values)) + 1
    assert read_json(tmp_path / "run" / "manifest.json")["best_epoch"] == want
    if monitor == "val_mae":  # the weights kept are that epoch's: evaluate on val reproduces its MAE
        doc = json.loads(bm("evaluate", tmp_path / "run", "--split", "val", "--no-plots", "--json").stdout)
        assert doc["metrics"]["mae"] == pytest.approx(values[want - 1], rel=1e-3)


def test_keras_and_tensorflow_are_imported_in_one_place():
    """Every module reaches Keras and TensorFlow through keras_env (which silences TF's logs first)."""
    direct = re.compile(r"^\s*(import (keras|tensorflow)\b|from (keras|tensorflow)\b)", re.M)
    offenders = [p.name for p in MODULES if p.name != "keras_env.py" and direct.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_stage_modules_do_not_decide_exit_codes():
    """Only the face (cli/) turns verdicts into exit codes: no stage raises GateFailed, exits or prints (in the
    subpackages too; the exits are child processes' entry points: the federated simulation's, whose status file
    carries the result, and tune's helpers')."""
    stages = [p for p in MODULES if p.name not in ("console.py", "errors.py") and p.parent.name != "cli"]
    assert len(stages) > 35 and any(p.parent.name == "federated" for p in stages)
    for p in stages:
        text = p.read_text(encoding="utf-8")
        if p.relative_to(ROOT).as_posix() == "bigmodel_cli/federated/simulation.py":
            text = text.replace("except KeyboardInterrupt:\n        sys.exit(130)", "")
        if p.relative_to(ROOT).as_posix() == "bigmodel_cli/tune.py":  # its helper processes' entry point
            text = text.replace("    sys.exit(_helper(json.loads(sys.argv[1])))", "")
        assert "GateFailed" not in text and "sys.exit" not in text and not re.search(r"^\s*print\(", text, re.M), p.name


def test_every_file_name_is_spelled_once_in_artifacts():
    """A run, prep, export or tune folder's file names live in artifacts.py: no other module spells one."""
    import ast

    names = {node.value for node in ast.walk(ast.parse((ROOT / "bigmodel_cli" / "artifacts.py").read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and re.fullmatch(r"\.?[\w{}-]+\.(json|csv|png|db|yaml|keras|onnx|tflite|html|npz|parquet|log)",
                              node.value)}
    assert {"importance.json", "study.db", "weights.npz", "roc.png"} <= names
    spelled = {(p.relative_to(ROOT).as_posix(), node.value) for p in MODULES if p.name != "artifacts.py"
               for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
               if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names}
    assert spelled == set()


def test_export_mismatch_prints_the_result_and_exits_1(penguins_run, tmp_path, monkeypatch):
    """A parity mismatch is a verdict in ExportResult: printed (here as JSON), exit 1, nothing kept."""
    from bigmodel_cli import export

    real = export._check

    def off_by_one(name, got, want, tolerance, diffs):
        real(name, got + (1.0 if name == "savedmodel" else 0.0), want, tolerance, diffs)

    monkeypatch.setattr(export, "_check", off_by_one)
    r = bm("export", penguins_run, "--out", tmp_path / "export", "--json", code=1)
    doc = json.loads(r.stdout)
    assert doc["passed"] is False and doc["max_abs_diff"]["savedmodel"] == pytest.approx(1.0)
    assert "export parity" in r.stderr and "savedmodel" in doc["mismatch"]
    assert not (tmp_path / "export" / "manifest.json").exists() and not (tmp_path / "export" / "savedmodel").exists()


def _readme_commands() -> dict[str, dict[str, bool]]:
    """The README's command table: for each command, its options and whether the table shows them required."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("| command | reads | writes |")
    commands: dict[str, dict[str, bool]] = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cell = re.split(r"(?<!\\)\|", line)[1]
        for span in re.findall(r"`([^`]*)`", cell):
            span = span.replace("\\|", "|")
            words = span.split()
            name = words[0]
            if name == "federated":  # `federated PREP_DIR ...` is `federated run`
                name = f"federated {words[1] if words[1] in ('run', 'serve', 'join', 'keygen') else 'run'}"
            options, depth = {}, 0
            for m in re.finditer(r"\[|\]|--[a-z][a-z-]*", span):
                token = m.group()
                depth += {"[": 1, "]": -1}.get(token, 0)
                if token.startswith("--"):
                    options[token] = depth == 0
            commands[name] = options
    return commands


def _cli_commands() -> dict[str, list[tuple[set[str], bool]]]:
    """Each command's options as (its long names, e.g. {--plots, --no-plots}; required)."""
    import typer.main

    from bigmodel_cli.cli import app

    def walk(group, prefix=""):
        for name, c in group.commands.items():
            if hasattr(c, "commands"):
                yield from walk(c, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}", c

    return {name: [({o for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}, bool(p.required))
                   for p in c.params if p.param_type_name == "option" and p.name not in ("help", "as_json")]
            for name, c in walk(typer.main.get_command(app))}


def test_readme_command_table_matches_the_cli():
    """Every option in the README's command table exists in the CLI, with the same required-ness, and back
    (--json is on every command, which the table's note says once)."""
    readme, cli = _readme_commands(), _cli_commands()
    assert set(readme) == set(cli)
    for name, params in cli.items():
        documented = readme[name]
        for names, required in params:
            shown = [o for o in names if o in documented]
            assert shown, f"{name}: {sorted(names)} is not in the README's command table"
            assert all(documented[o] == required for o in shown), f"{name} {shown}: required is {required}"
        known = set().union(*(names for names, _ in params)) if params else set()
        assert set(documented) <= known, f"{name}: the README lists {sorted(set(documented) - known)}"
    cli_json = [name for name, c in _json_flags().items() if not c]
    assert cli_json == [], f"commands without --json: {cli_json}"


def _json_flags() -> dict[str, bool]:
    import typer.main

    from bigmodel_cli.cli import app

    root = typer.main.get_command(app)
    out = {}
    for name, c in root.commands.items():
        for sub, cc in (c.commands.items() if hasattr(c, "commands") else [(None, c)]):
            out[f"{name} {sub}" if sub else name] = any("--json" in p.opts for p in cc.params)
    return out


def test_cli_reference_is_generated_from_the_app():
    """docs/reference/cli.md is the Typer app's own Markdown: a changed option or help text without a regenerated
    page fails here (make docs regenerates it)."""
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import gen_cli_reference
    finally:
        sys.path.remove(str(ROOT / "docs"))
    committed = (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    assert committed == gen_cli_reference.render(), "docs/reference/cli.md is stale: python docs/gen_cli_reference.py"
    assert "## `bigmodel serve`" in committed and "--max-queue" in committed


def test_readme_is_the_front_door():
    """The README stays a front door (short, opens with the two set-up commands) and its links to the manual
    resolve (mkdocs build --strict checks the links inside docs/; this checks the README's)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    first_block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.splitlines()] == [["make", "demo"], ["make", "test"]]
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert len(links) >= 10
    missing = [link for link in links if "://" not in link and not (ROOT / link).exists()]
    assert missing == []


def _import_graph() -> dict[str, set[str]]:
    """bigmodel_cli's modules and the package modules each imports, at the top or inside a function."""
    import ast

    def name(p: Path) -> str:
        parts = list(p.with_suffix("").relative_to(ROOT).parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name(p): p for p in MODULES}
    graph = {}
    for mod, p in modules.items():
        package = mod if p.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                deps |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[mod] = {d for d in deps if d in modules and d != mod}
    return graph


def test_no_import_circles_and_no_verb_imports_another():
    """The house's arrows (lazy imports included) form no circle, and a verb's module never imports another
    verb's: what two verbs share lives in the frame, the data modules or the training core (training/)."""
    graph = _import_graph()
    assert "bigmodel_cli.training.rules" in graph["bigmodel_cli.federated.server"]
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(mod: str, path: list[str]) -> None:
        seen[mod] = 1
        for dep in sorted(graph[mod]):
            assert seen.get(dep) != 1, f"import circle: {' -> '.join([*path, dep])}"
            if dep not in seen:
                visit(dep, [*path, dep])
        seen[mod] = 2

    for mod in sorted(graph):
        if mod not in seen:
            visit(mod, [mod])
    verbs = {f"bigmodel_cli.{v}" for v in ("init preprocess train evaluate export predict explain tune serve compare "
                                           "report federated").split()}

    def verb(mod: str) -> str | None:
        return next((v for v in verbs if mod == v or mod.startswith(v + ".")), None)

    crossing = sorted((m, d) for m, deps in graph.items() for d in deps if verb(m) and verb(d) and verb(m) != verb(d))
    assert crossing == []
    # but one: `experiment` composes the stages, each through its own contract (and nothing imports it)
    assert {"bigmodel_cli.preprocess", "bigmodel_cli.train", "bigmodel_cli.report"} <= graph["bigmodel_cli.experiment"]
    assert not [m for m, deps in graph.items() if "bigmodel_cli.experiment" in deps and not m.startswith(
        "bigmodel_cli.cli")]


STAGES = {"init": "run", "preprocess": "run", "train": "run", "evaluate": "run", "export": "run", "predict": "run",
          "explain": "run", "tune": "run", "serve": "run", "compare": "run", "report": "run",
          "federated.simulation": "run", "federated.deploy": "serve", "federated.deploy ": "join",
          "experiment": "run"}


@pytest.mark.parametrize("module,function", [(m.strip(), f) for m, f in STAGES.items()])
def test_every_verb_has_one_contract(module, function):
    """`run(options, on_event=None) -> Result`: one frozen options dataclass of the verb's own, and a callback for
    progress; so a caller (the CLI, tune's trials, a later `experiment`) drives every stage the same way."""
    import dataclasses
    import importlib
    import inspect
    import typing

    mod = importlib.import_module(f"bigmodel_cli.{module}")
    fn = getattr(mod, function)
    params = list(inspect.signature(fn).parameters.values())
    assert [p.name for p in params] == ["options", "on_event"] and params[1].default is None, params
    hints = typing.get_type_hints(fn)
    options = hints["options"]
    assert dataclasses.is_dataclass(options) and options.__dataclass_params__.frozen, options
    assert options.__name__.endswith("Options") and hasattr(hints["return"], "to_dict"), hints
    if "config" in {f.name for f in dataclasses.fields(options)}:
        from bigmodel_cli.config import Config

        assert typing.get_type_hints(options)["config"] is Config  # resolved before the stage: config.resolve
