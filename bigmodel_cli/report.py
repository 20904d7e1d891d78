"""`bigmodel report`: one self-contained HTML page per run (images embedded, no network needed)."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import artifacts

SECTIONS = ["data", "config", "training", "metrics", "plots", "explain", "drift", "gates", "manifest"]
CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}pre{background:#f6f6f6;padding:.8em;overflow:auto;font-size:.85em}
img{max-width:100%;border:1px solid #eee;margin:.3em 0}.fail{color:#b00;font-weight:bold}.pass{color:#070}
nav a{margin-right:1em}
"""


@dataclass(frozen=True)
class ReportResult:
    out: Path
    sections: list[str]
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "sections": self.sections, "images": self.images}


def _e(v: Any) -> str:
    return html.escape(str(v))


def _num(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else _e(v))


def _table(head: list[str], rows: list[list[Any]]) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{_e(path.stem)}" src="data:image/png;base64,{data}"><figcaption>{_e(path.stem)}' \
           f"</figcaption></figure>"


def render(run: Path, evaluation: Path | None = None, explanation: Path | None = None,
           drift: Path | None = None) -> tuple[str, int]:
    """The page for a run folder, and how many images it embeds; its metrics from `evaluation` (an `evaluate --out`
    folder; None: the run folder), its explanation from `explanation` (None: RUN_DIR/explain) and a drift check
    from `drift` (a `drift --out` folder; None: RUN_DIR/drift.json if `drift --out RUN_DIR` wrote one, else the
    drift section of `evaluate --drift`)."""
    folder = artifacts.Folder(Path(run), "run")
    manifest = folder.manifest()
    evaluated = Path(evaluation) if evaluation is not None else folder.path
    metrics = artifacts.read_metrics(evaluated)
    report_files = [folder / artifacts.REPORT, Path(manifest.get("prep_dir", "")) / artifacts.REPORT]
    report = next((p for p in report_files if p.is_file()), None)
    metrics_file = evaluated / artifacts.METRICS
    explain = Path(explanation) if explanation is not None else folder.path / artifacts.EXPLAIN
    with artifacts.damaged(metrics_file, f"evaluate {run}"):
        plots = [evaluated / p for p in metrics.get("plots", []) if (evaluated / p).exists()]
        metrics_html, gates_html = _metrics_section(metrics), _gates_section(metrics.get("gates") or [])
    curve = folder / artifacts.CURVE
    with artifacts.damaged(report or folder / artifacts.REPORT, "preprocess"):
        data_html = _data_section(artifacts.read_json(report) if report else None)
    with artifacts.damaged(folder / artifacts.CONFIG, f"train ... --out {run}"):
        config_html = f"<pre>{_e((folder / artifacts.CONFIG).read_text(encoding='utf-8'))}</pre>"
    with artifacts.damaged(folder / artifacts.HISTORY, f"train ... --out {run}"):
        training_html = _training_section(folder, manifest)
    with artifacts.damaged(explain / artifacts.IMPORTANCE, f"explain {run}"):
        explain_html = _explain_section(explain)
    # the drift check: --drift DIR's, else evaluate --drift's section (of the evaluation shown), else RUN_DIR's
    drift_file = (Path(drift) if drift is not None else folder.path) / artifacts.DRIFT
    evaluated_drift = isinstance(metrics.get("drift"), dict) and drift is None
    redo = f"evaluate {run} --drift" if evaluated_drift else f"drift {run} DATA --out {drift_file.parent}"
    with artifacts.damaged(metrics_file if evaluated_drift else drift_file, redo):
        drift_doc: dict[str, Any] | None
        if evaluated_drift:
            drift_doc = {**metrics["drift"], "data": (metrics.get("data") or {}).get("source", "")}
        else:
            drift_doc = artifacts.read_json(drift_file) if drift_file.is_file() else None
        drift_html = _drift_section(drift_doc)
    parts = {
        "data": data_html,
        "config": config_html,
        "training": training_html,
        "metrics": metrics_html,
        "plots": "".join(_img(p) for p in plots) or "<p>No plots (run evaluate with --plots).</p>",
        "explain": explain_html,
        "drift": drift_html,
        "gates": gates_html,
        "manifest": f"<pre>{_e(json.dumps(manifest, indent=2, sort_keys=True))}</pre>",
    }
    title = f"bigmodel report: {Path(run).resolve().name}"
    nav = "".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS)
    body = "".join(f'<section id="{s}"><h2>{s.capitalize()}</h2>{parts[s]}</section>' for s in SECTIONS)
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1><nav>{nav}</nav>{body}</body></html>\n")
    importance_plot = explain / artifacts.IMPORTANCE_PLOT
    return page, len(plots) + int(curve.exists()) + int(importance_plot.is_file())


def _drift_section(doc: dict[str, Any] | None) -> str:
    """`bigmodel drift`'s verdicts: each column's PSI, Jensen-Shannon distance, missing rates, out-of-range share."""
    if not doc:
        return "<p>No drift check (bigmodel drift RUN_DIR DATA --out DIR, then report --drift DIR).</p>"
    rows = [[_e(name), _e(c["kind"]), _num(c["psi"]), _num(c["js"]),
             f"{c['missing']['reference']:.1%} &rarr; {c['missing']['data']:.1%}",
             f"{c['out_of_range']:.1%}" if "out_of_range" in c else "",
             f'<span class="fail">DRIFT: {_e("; ".join(c["why"]))}</span>' if c["drift"]
             else '<span class="pass">ok</span>'] for name, c in doc["columns"].items()]
    head = f"<p>{_e(doc['data'])}: {doc['rows']} rows, against the train split ({doc['reference_rows']} rows).</p>"
    return head + _table(["column", "kind", "psi", "js", "missing", "out of range", "verdict"], rows)


def _data_section(data: dict[str, Any] | None) -> str:
    """The prep folder's data report: row counts, columns, class balance, notes."""
    if not data:
        return "<p>No data report in this run folder.</p>"
    counts = [[k.replace("_", " "), data[k]] for k in ("rows_in", "duplicates_dropped", "missing_target_dropped",
                                                       "rows_out")]
    counts += [[f"{n} split", k] for n, k in data["splits"].items()]
    cols = [[_e(c), _e(v["kind"]), v["missing"], _num(v["unique"]),
             _e("" if v["imputed_with"] is None else v["imputed_with"])] for c, v in data["columns"].items()]
    html_ = _table(["", "count"], counts) + _table(["column", "kind", "missing", "unique", "imputed with"], cols)
    if data.get("class_balance"):
        classes = list(next(iter(data["class_balance"].values())))
        html_ += _table(["split", *classes], [[s, *b.values()] for s, b in data["class_balance"].items()])
    return html_ + "".join(f"<p>note: {_e(n)}</p>" for n in data.get("notes", []))


def _training_section(folder: artifacts.Folder, manifest: dict[str, Any]) -> str:
    """The training curves and the epoch count."""
    training = []
    if (folder / artifacts.CURVE).exists():
        training.append(_img(folder / artifacts.CURVE))
    if (folder / artifacts.HISTORY).exists():
        h = pd.read_csv(folder / artifacts.HISTORY)
        training.append(f"<p>{len(h)} epochs; best epoch {manifest.get('best_epoch')}.</p>")
    return "".join(training) or "<p>No training history.</p>"


def _metrics_section(metrics: dict[str, Any]) -> str:
    """The metrics with their bootstrap intervals, per class and the confusion matrix."""
    ci = (metrics.get("bootstrap") or {}).get("intervals") or {}
    rows = [[_e(k), _num(v), "" if ci.get(k) is None else f"[{ci[k][0]:.4f}, {ci[k][1]:.4f}]"]
            for k, v in metrics["metrics"].items()]
    d = metrics["data"]
    out = (f"<p>{_e(metrics['task'])} on <code>{_e(metrics['target'])}</code>, "
           f"{_e(d.get('split') or d['source'])} ({d['rows']} rows)"
           + (f"; decision threshold {metrics['threshold']:.4f}" if metrics.get("threshold") else "")
           + "</p>" + _table(["metric", "value", "95% interval" if ci else ""], rows))
    if "per_class" in metrics:
        out += _table(["class", "precision", "recall", "f1", "support"],
                      [[_e(c), *(_num(x) for x in v.values())] for c, v in metrics["per_class"].items()])
        cm = metrics["confusion_matrix"]
        out += _table(["true \\ predicted", *cm["labels"]],
                      [[_e(label), *row] for label, row in zip(cm["labels"], cm["matrix"], strict=True)])
    return out


def _explain_section(folder: Path) -> str:
    """`bigmodel explain`'s permutation importance, with its chart, if it was run."""
    path = folder / artifacts.IMPORTANCE
    if not path.is_file():
        return "<p>Not explained (run <code>bigmodel explain RUN_DIR</code>).</p>"
    doc = artifacts.read_json(path)
    ig = doc["integrated_gradients"]
    rows = [[_e(r["column"]), _e(r["kind"]), _num(r["importance"]), _num(r["std"]), _num(r["loss_increase"])]
            for r in doc["importance"]]
    head = ["column", "kind", f"{doc['score']} drop" if doc["score"] != "rmse" else "RMSE rise", "std",
            "log loss rise" if doc["score"] != "rmse" else "RMSE rise"]
    chart = _img(folder / artifacts.IMPORTANCE_PLOT) if (folder / artifacts.IMPORTANCE_PLOT).is_file() else ""
    return (f"<p>Permutation importance on {doc['rows']} rows of the {_e(doc['source'])}, {doc['repeats']} repeats; "
            f"per-row integrated gradients in <code>explain/attributions.csv</code> (completeness error max "
            f"{ig['completeness_abs_max']:.2e}).</p>" + chart + _table(head, rows))


def _gates_section(gates: list[dict[str, Any]]) -> str:
    if not gates:
        return "<p>No gates were set.</p>"
    return _table(["gate", "threshold", "value", "verdict"], [
        [_e(g["gate"]), _num(g["threshold"]), _num(g["value"]),
         '<span class="pass">pass</span>' if g["passed"] else '<span class="fail">FAIL</span>'] for g in gates])


@dataclass(frozen=True)
class ReportOptions:
    """What `report` is asked to do."""

    run: Path  # the run folder
    out: Path | None = None  # the HTML file; None: RUN_DIR/report.html
    evaluation: Path | None = None  # an `evaluate --out` folder; None: the run folder's metrics.json
    explanation: Path | None = None  # an `explain --out` folder; None: RUN_DIR/explain
    drift: Path | None = None  # a `drift --out` folder; None: RUN_DIR (its drift.json, if any)


def run(options: ReportOptions, on_event: Any = None) -> ReportResult:
    """One self-contained HTML page of the run."""
    run_dir = options.run
    page, images = render(run_dir, options.evaluation, options.explanation, options.drift)
    out = Path(options.out) if options.out else Path(run_dir) / artifacts.HTML_REPORT
    artifacts.write_text(out, page)
    return ReportResult(out, SECTIONS, images)
