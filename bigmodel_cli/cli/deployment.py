"""`export`, `predict` and `serve`: a run folder's model outside bigmodel — as files, as predictions, over HTTP."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .. import remote
from ..console import emit_json, err, out, table
from ..errors import BigModelError, GateFailed
from .app import (
    ConfigOpt,
    DataLoc,
    DriftOpt,
    ExportFormat,
    JsonOpt,
    RowProgress,
    RunLoc,
    Runtime,
    SetOpt,
    UnsafeOpt,
    app,
    guard,
    notes,
    out_option,
    render,
    resolve,
    slow_path,
    staging,
    value,
)
from .app import verbose as verbose_of
from .evaluation import drifted, show_drift


@app.command()
def export(
    ctx: typer.Context,
    run_loc: RunLoc,
    out_loc: Annotated[str, out_option("The export folder to write.")],
    fmt: Annotated[ExportFormat | None, typer.Option(
        "--format", "-f", help="savedmodel: SavedModel + .keras; keras; onnx: model.onnx + .keras; tflite: "
                               "model.tflite + .keras (default: export.format).", show_default=False)] = None,
    register: Annotated[str | None, typer.Option(
        "--register", metavar="NAME", help="Also log the run as an MLflow model (pyfunc: raw columns in, predict's "
        "columns out) into the MLflow run of its training (train --track) and register it as NAME.",
        show_default=False)] = None,
    version: Annotated[str | None, typer.Option(
        "--version", metavar="N|next", help="Write OUT/N, a new version in TF Serving's layout (next: one after "
        "the newest there); `serve OUT` serves the newest and picks up new ones. A version is never overwritten.",
        show_default=False)] = None,
    unsafe: UnsafeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export RUN_DIR's model with its preprocessing inside; checks parity with `bigmodel predict`."""
    with guard(ctx), staging() as staged:
        from .. import export as stage

        if version is not None and remote.is_url(out_loc):
            raise BigModelError(f"{out_loc}: --version writes into a local base of versions; export to a local "
                                f"--out, or without --version")
        run_dir, out_dir = staged.read(run_loc), staged.write(out_loc)
        with contextlib.closing(RowProgress("export")) as progress:
            result = stage.run(stage.ExportOptions(run_dir, out_dir, value(fmt), unsafe, register, version), progress)

        def human() -> None:
            rows = [[f, ""] for f in result.files] + [
                [f"parity {k} (max diff, {result.rows_checked} rows)", f"{v:.2e}"]
                for k, v in result.max_abs_diff.items()]
            if result.registered:
                rows.append([f"registered {result.registered['name']} version {result.registered['version']}",
                             result.registered["model_uri"]])
            where = remote.name_of(result.out)
            out.print(table(f"exported {where}" if result.passed else f"not exported: {where}",
                            ["file", ""], rows))

        staged.commit()
        render(result, as_json, human)
        if not result.passed:
            raise GateFailed(str(result.mismatch))


@app.command()
def predict(
    ctx: typer.Context,
    run_loc: RunLoc,
    data_loc: DataLoc,
    out_loc: Annotated[str, out_option("Predictions file: .csv, .csv.gz or .parquet.")],
    check_drift: DriftOpt = False,
    unsafe: UnsafeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Batch predictions for DATA: id columns, class probabilities and label (or the value). With --drift, exit 1
    if a column drifted (the predictions are written first)."""
    with guard(ctx), staging() as staged:
        from .. import predict as stage

        run_dir, data, out_path = staged.read(run_loc), staged.read(data_loc), staged.write(out_loc)
        with contextlib.closing(RowProgress("predict")) as progress:
            result = stage.run(stage.PredictOptions(run_dir, data, out_path, unsafe, check_drift), progress)
        slow_path(result.why_tensorflow)

        def human() -> None:
            out.print(f"wrote {result.rows} predictions to {escape(remote.name_of(result.out))}", highlight=False)
            notes(result.unseen_categories, result.ignored_columns)
            if result.drift is not None:
                show_drift(result.drift, remote.name_of(data))

        staged.commit()
        render(result, as_json, human)
        if result.drifted:
            raise GateFailed(drifted(result.drifted))


@app.command("serve")
def serve(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(
        help="A run folder (bigmodel train) or export folder (bigmodel export), or a base of versions (export "
             "--version: NAME/1, NAME/2, ...): the newest is served, and a newer one is loaded and swapped in as it "
             "appears.", show_default=False)],
    host: Annotated[str | None, typer.Option(
        help="Address to listen on; anything but loopback needs --token-file or --insecure-no-auth "
             "[default: serve.host, 127.0.0.1].", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="TCP port [default: serve.port, 8501: TF Serving's REST port].",
                                             min=0, max=65535, show_default=False)] = None,
    model_name: Annotated[str | None, typer.Option(help="NAME in /v1/models/NAME:predict [default: "
                                                        "serve.model_name, model].", show_default=False)] = None,
    runtime: Annotated[Runtime | None, typer.Option(
        help="tf: a run or export folder; onnx, tflite: an export folder with model.onnx / model.tflite (no "
             "TensorFlow in the request loop) [default: serve.runtime, tf].", show_default=False)] = None,
    token_file: Annotated[Path | None, typer.Option(
        help="A file holding a bearer token: every request must send 'Authorization: Bearer TOKEN'.",
        show_default=False)] = None,
    insecure_no_auth: Annotated[bool, typer.Option(
        "--insecure-no-auth", help="Serve a non-loopback --host without authentication.")] = False,
    tls_cert: Annotated[Path | None, typer.Option(help="TLS certificate (PEM), with --tls-key: HTTPS.",
                                                  show_default=False)] = None,
    tls_key: Annotated[Path | None, typer.Option(help="TLS private key (PEM).", show_default=False)] = None,
    max_body_mb: Annotated[float | None, typer.Option(
        help="Larger request bodies get 413 [default: serve.max_body_mb, 10].", min=0.001, show_default=False)] = None,
    max_concurrency: Annotated[int | None, typer.Option(
        help="Predictions computed at once [default: serve.max_concurrency, 4].", min=1, show_default=False)] = None,
    max_queue: Annotated[int | None, typer.Option(
        help="Predict requests that may wait beyond --max-concurrency; more get 503 with Retry-After "
             "[default: serve.max_queue, 60].", min=0, show_default=False)] = None,
    client_timeout: Annotated[float | None, typer.Option(
        help="Seconds a client has to send a request's headers, and again its body (slower: closed, or 408) "
             "[default: serve.client_timeout, 10].", min=0.1, show_default=False)] = None,
    versions: Annotated[str | None, typer.Option(
        help="A base of versions: which stay loaded: latest, latest:N (the N newest), all, or a list such as 1,3 "
             "(TF Serving's version policies) [default: serve.versions, latest].", show_default=False)] = None,
    label: Annotated[list[str] | None, typer.Option(
        help="LABEL=VERSION: /v1/models/NAME/labels/LABEL:predict answers with that version (repeat for more; "
             "serve.labels).", show_default=False)] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    unsafe: UnsafeOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Real-time predictions over HTTP, with TensorFlow Serving's REST API.

    POST /v1/models/NAME:predict, GET /v1/models/NAME, /healthz, /readyz. Stops on SIGTERM / Ctrl-C after the
    requests in flight. Under overload: a full queue answers 503 with Retry-After at once, slow clients are cut
    off after --client-timeout, and /healthz and /readyz skip the queue. The options default to the config's
    serve section (--config, --set serve.port=8080)."""
    with guard(ctx):
        from .. import serve as stage

        if (tls_cert is None) != (tls_key is None):
            raise BigModelError("--tls-cert and --tls-key go together")
        given = {"host": host, "port": port, "model_name": model_name, "runtime": value(runtime),
                 "max_body_mb": max_body_mb, "max_concurrency": max_concurrency, "max_queue": max_queue,
                 "client_timeout": client_timeout}
        if versions is not None:
            given["versions"] = versions
        for text in label or []:
            name, eq, number = text.partition("=")
            if not eq or not name.strip() or not number.strip().isdigit():
                raise BigModelError(f"--label {text!r}: expected LABEL=VERSION, e.g. --label stable=3")
            given[f"labels.{name.strip()}"] = int(number)
        cfg = resolve(config, sets, fixed={f"serve.{k}": v for k, v in given.items()})
        s = cfg.serve

        def event(what: str, detail: str) -> None:
            if what == "listening":
                err.print(f"listening on {escape(detail)} (runtime {s.runtime}); loading the model",
                          highlight=False)
            elif what == "version":
                err.print(f"version {escape(detail)}", highlight=False)
            else:
                err.print(f"ready: POST {escape(detail)}", highlight=False)

        result = stage.run(stage.ServeOptions(
            folder, cfg, token_file, insecure_no_auth, (tls_cert, tls_key) if tls_cert and tls_key else None,
            verbose_of(ctx), unsafe), event)
        busy = f", {result.refused} refused as busy (503)" if result.refused else ""
        err.print(f"stopped ({result.stopped_by or 'shut down'}) after {result.predictions} prediction request(s)"
                  f"{busy}", highlight=False)
        if as_json:
            emit_json(result.to_dict())
