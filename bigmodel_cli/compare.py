"""`bigmodel compare`: runs side by side — metrics with deltas against the first, the config keys that
differ, data fingerprints, and regression checks for CI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import artifacts
from .config import flatten, load_config
from .errors import ConfigError
from .gates import lower_is_better


@dataclass(frozen=True)
class CompareResult:
    doc: dict[str, Any]

    @property
    def regressions(self) -> list[dict[str, Any]]:
        return self.doc["regressions"]

    def to_dict(self) -> dict[str, Any]:
        return self.doc


def _load(given: Path) -> dict[str, Any]:
    """A run folder evaluated, or an `evaluate --out` folder (its metrics, with the run it names)."""
    run = Path(given)
    if not (run / artifacts.MANIFEST).exists() and (run / artifacts.METRICS).exists():
        metrics = artifacts.read_metrics(run)
        with artifacts.damaged(run / artifacts.METRICS, f"evaluate RUN_DIR --out {given}"):
            run = Path(metrics["run_dir"])
    folder = artifacts.Folder(run, "run")
    manifest = folder.manifest()
    metrics = artifacts.read_metrics(Path(given))
    try:  # with today's defaults filled in, so that runs of older versions compare key by key
        config = load_config(folder / artifacts.CONFIG).model_dump(mode="json")
    except ConfigError:  # (an older version's keys): as written
        config = None
    if config is None:
        with artifacts.damaged(folder / artifacts.CONFIG, f"train ... --out {run}"):
            config = yaml.safe_load((folder / artifacts.CONFIG).read_text(encoding="utf-8"))
            if not isinstance(config, dict):
                raise TypeError(f"a mapping expected, got {type(config).__name__}")
    return {"path": str(given), "manifest": manifest, "metrics": metrics,
            "config": flatten(config)}


def parse_tolerance(text: str) -> tuple[str, float]:
    metric, sep, tol = text.partition(":")
    try:
        value = float(tol)
    except ValueError:
        value = -1.0
    if not sep or not metric or value < 0:
        raise ConfigError(f"--fail-on-regression {text!r}: expected METRIC:TOLERANCE, e.g. accuracy:0.01")
    return metric, value


def _within_noise(base: dict[str, Any], other: dict[str, Any], metric: str, value: float) -> bool | None:
    """True when the difference is within the bootstrap intervals (they overlap); None without intervals."""
    a = ((base.get("bootstrap") or {}).get("intervals") or {}).get(metric)
    b = ((other.get("bootstrap") or {}).get("intervals") or {}).get(metric)
    if a is None:
        return None
    if b is None:
        return a[0] <= value <= a[1]
    return a[0] <= b[1] and b[0] <= a[1]


@dataclass(frozen=True)
class CompareOptions:
    """What `compare` is asked to do."""

    runs: tuple[Path, ...]  # evaluated run folders (or `evaluate --out` folders); the first is the baseline
    fail_on: tuple[str, ...] = ()  # METRIC:TOLERANCE regressions that fail (exit 1)


def run(options: CompareOptions, on_event: Any = None) -> CompareResult:
    """Metrics side by side with deltas against the first run, config differences and data fingerprints."""
    runs, fail_on = list(options.runs), list(options.fail_on)
    if len(runs) < 2:
        raise ConfigError("compare needs at least two run folders")
    loaded = [_load(r) for r in runs]
    base = loaded[0]["metrics"]
    names = list(dict.fromkeys(k for r in loaded for k in r["metrics"]["metrics"]))
    metrics: dict[str, Any] = {}
    for name in names:
        values = [r["metrics"]["metrics"].get(name) for r in loaded]
        first = values[0]
        metrics[name] = {
            "values": values,
            "deltas": [None if v is None or first is None else v - first for v in values],
            "within_noise": [None if v is None or i == 0 else _within_noise(base, r["metrics"], name, v)
                             for i, (v, r) in enumerate(zip(values, loaded, strict=True))],
        }
    keys = sorted({k for r in loaded for k in r["config"]})
    config_diff = {k: [r["config"].get(k) for r in loaded] for k in keys
                   if len({repr(r["config"].get(k)) for r in loaded}) > 1}
    fingerprints = [r["metrics"]["data"].get("sha256") for r in loaded]
    warnings = []
    if len(set(fingerprints)) > 1:
        warnings.append("the runs were evaluated on different data (data.sha256 differs): deltas compare "
                        "different test sets")
    tasks = {r["metrics"]["task"] for r in loaded}
    if len(tasks) > 1:
        warnings.append(f"the runs have different tasks: {', '.join(sorted(tasks))}")
    regressions = []
    for text in fail_on or []:
        metric, tol = parse_tolerance(text)
        if metric not in metrics:
            raise ConfigError(f"--fail-on-regression {text!r}: no metric '{metric}'; valid metrics: {', '.join(names)}")
        sign = -1 if lower_is_better(metric) else 1
        for r, delta in zip(loaded[1:], metrics[metric]["deltas"][1:], strict=True):
            if delta is not None and sign * delta < -tol:
                regressions.append({"run": r["path"], "metric": metric, "delta": delta, "tolerance": tol})
    doc = {"runs": [r["path"] for r in loaded], "metrics": metrics, "config_diff": config_diff,
           "data_sha256": fingerprints, "warnings": warnings, "regressions": regressions}
    return CompareResult(doc)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _delta(d: float | None, noise: bool | None) -> str:
    if d is None:
        return ""
    return f" ({d:+.4f}{', within noise' if noise else ''})"


def rows(doc: dict[str, Any]) -> list[list[str]]:
    """The metrics table: one row per metric, the first run's value, then each other run's value and delta."""
    out = []
    for name, m in doc["metrics"].items():
        cells = [_fmt(m["values"][0])]
        for v, d, n in zip(m["values"][1:], m["deltas"][1:], m["within_noise"][1:], strict=True):
            cells.append(_fmt(v) + _delta(d, n))
        out.append([name, *cells])
    return out


def markdown(doc: dict[str, Any]) -> str:
    """A pull-request comment: metrics with deltas, config differences, warnings and regressions."""
    runs = [f"`{Path(r).name}`" for r in doc["runs"]]
    lines = ["| metric | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(doc)]
    if doc["config_diff"]:
        lines += ["", "Config differences:", "", "| key | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
        lines += [f"| `{k}` | " + " | ".join(f"`{v}`" for v in vals) + " |" for k, vals in doc["config_diff"].items()]
    for w in doc["warnings"]:
        lines += ["", f"> warning: {w}"]
    if doc["regressions"]:
        lines += ["", "**Regressions:**", ""]
        lines += [f"- `{Path(r['run']).name}`: {r['metric']} {r['delta']:+.4f} (tolerance {r['tolerance']})"
                  for r in doc["regressions"]]
    return "\n".join(lines) + "\n"
