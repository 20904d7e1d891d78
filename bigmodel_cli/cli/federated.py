"""`federated run | serve | join | keygen`: training where the rows stay with their owners (Flower)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from ..console import out, table
from ..errors import GateFailed
from .app import (
    ConfigOpt,
    EpochProgress,
    JsonOpt,
    PrepDirArg,
    ResumeOpt,
    RunOutOpt,
    SetOpt,
    TrackOpt,
    app,
    guard,
    render,
    resolve,
    warn,
)
from .app import verbose as verbose_of


class _RunByDefault(TyperGroup):
    """`bigmodel federated PREP_DIR ...` means `bigmodel federated run PREP_DIR ...`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


federated_app = typer.Typer(
    cls=_RunByDefault, no_args_is_help=True, rich_markup_mode="markdown",
    help="Federated training on Flower: FedAvg, FedProx, FedAdam and other strategies, robust aggregation, "
         "SecAgg+, client-level DP; simulated or deployed.")
app.add_typer(federated_app, name="federated")


def _federate(prep_dir: Path, config: Path | None, overrides: list[str], as_json: bool,
              start: Callable[[Any, EpochProgress], Any], track: bool = False) -> None:
    """Resolve the config, run `start(cfg, progress)` with a progress line per round, print the run.
    A privacy budget that stopped training early still wrote a run: it is printed too, then exit 1."""
    cfg = resolve(config, overrides, prep_dir, track=track)
    with contextlib.closing(EpochProgress("round")) as progress:
        result = start(cfg, progress)

    def human() -> None:
        rows = [["rounds", result.rounds], ["kept round", result.kept_round],
                *[[k, v] for k, v in result.final.items()], ["seconds", round(result.seconds, 1)]]
        out.print(table(f"federated {result.out}", ["", "value"], rows))

    warn(result.warnings)
    render(result, as_json, human)
    if result.budget_stop:
        raise GateFailed(result.budget_stop)


@federated_app.command("run")
def run(
    ctx: typer.Context,
    prep_dir: PrepDirArg,
    out_dir: RunOutOpt,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    resume: ResumeOpt = False,
    track: TrackOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Simulate clients on one machine (Flower's simulation engine); writes a run folder.

    The `federated` config section sets clients, rounds (auto: train.epochs / local_epochs, ended by early
    stopping on the global model's validation loss, the best round kept), local_epochs, fraction_fit,
    min_clients, the partition (iid | dirichlet with alpha | by_column with column), secure_aggregation and
    privacy (client-level DP with max_epsilon: exit 1 when the budget stops training early). Every round is
    checkpointed, so an interrupted run continues with --resume. `bigmodel federated PREP_DIR` is this command.
    """
    def start(cfg: Any, progress: EpochProgress) -> Any:
        from ..federated import simulation as stage

        return stage.run(stage.SimulationOptions(prep_dir, out_dir, cfg, resume, verbose_of(ctx)), progress)

    with guard(ctx):
        _federate(prep_dir, config, list(sets or []), as_json, start, track)


AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="HOST:PORT to listen on; default: federated.address.")]
TlsCaOpt = Annotated[Path | None, typer.Option(
    "--tls-ca", exists=True, dir_okay=False, show_default=False,
    help="TLS: the CA certificate (PEM) that signed the server's certificate. Without TLS options: no TLS.")]


@federated_app.command()
def serve(
    ctx: typer.Context,
    prep_dir: PrepDirArg,
    out_dir: RunOutOpt,
    address: AddressOpt = None,
    tls_ca: TlsCaOpt = None,
    tls_cert: Annotated[Path | None, typer.Option(
        "--tls-cert", exists=True, dir_okay=False, show_default=False,
        help="TLS: the server's certificate (PEM), naming the hosts clients connect to and 127.0.0.1.")] = None,
    tls_key: Annotated[Path | None, typer.Option(
        "--tls-key", exists=True, dir_okay=False, show_default=False,
        help="TLS: the server's private key (PEM).")] = None,
    authorized_keys: Annotated[Path | None, typer.Option(
        "--authorized-keys", exists=True, dir_okay=False, show_default=False,
        help="Admit only clients whose public key is in this file (one per line; `federated keygen`'s .pub "
             "files concatenated). Needs TLS.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    resume: ResumeOpt = False,
    track: TrackOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The server of a deployment: a Flower SuperLink at --address; waits for clients, runs the rounds, writes
    the run folder.

    It starts Flower's SuperLink on 127.0.0.1 and, at --address, a front that passes on only what clients send
    (Flower's fleet API; its control API stays local), with TLS by the --tls-* options; --authorized-keys admits
    only registered clients. It submits bigmodel's Flower App, waits for `federated.clients` clients
    (`bigmodel federated join`), evaluates the global model on PREP_DIR's validation split after every round
    and sends the config (model, local_epochs, batch size) to the clients. secure_aggregation and privacy work as
    in simulation.
    """
    def start(cfg: Any, progress: EpochProgress) -> Any:
        from ..federated import deploy as stage

        return stage.serve(stage.ServerOptions(
            prep_dir, out_dir, cfg, address or cfg.federated.address, stage.server_tls(tls_ca, tls_cert, tls_key),
            authorized_keys, resume, verbose_of(ctx)), progress)

    with guard(ctx):
        _federate(prep_dir, config, [*(sets or []), "federated.engine=deployment"], as_json, start, track)


@federated_app.command()
def join(
    ctx: typer.Context,
    prep_dir: PrepDirArg,
    data: Annotated[Path, typer.Option("--data", "-d", help="This client's own rows (CSV or Parquet), with the "
                                       "target column.", show_default=False)],
    server: Annotated[str, typer.Option("--server", help="The server's HOST:PORT.", show_default=False)],
    seed: Annotated[int, typer.Option("--seed", help="This client's seed.")] = 0,
    wait: Annotated[float, typer.Option("--wait", help="Give up after retrying to reach the server this many "
                                        "seconds.")] = 600.0,
    tls_ca: TlsCaOpt = None,
    key: Annotated[Path | None, typer.Option(
        "--key", exists=True, dir_okay=False, show_default=False,
        help="This client's private key (`federated keygen`'s .key), for a server with --authorized-keys.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """A client of a deployment: a Flower SuperNode; trains on its own rows, sends only model weights.

    DATA is encoded with PREP_DIR's fitted preprocessing (the prep folder the server uses); the client trains in
    each round the server asks for and returns when the server is done (exit 2 if the server is unreachable
    for a minute).
    """
    with guard(ctx):
        from ..federated import deploy as stage

        result = stage.join(stage.JoinOptions(prep_dir, data, server, seed, wait, tls_ca, key, verbose_of(ctx)))
        render(result, as_json, lambda: out.print(
            f"federation finished; trained in {result.rounds} round(s) on {result.rows} local rows", highlight=False))


@federated_app.command()
def keygen(
    ctx: typer.Context,
    out_path: Annotated[Path, typer.Option("--out", "-o", help="Write OUT.key (private) and OUT.pub (public).",
                                           show_default=False)],
    as_json: JsonOpt = False,
) -> None:
    """Make a client's key pair: OUT.key stays with the client (`join --key`), OUT.pub goes to the server's
    --authorized-keys file. EC P-384 in OpenSSH format, as Flower's SuperNode authentication expects."""
    with guard(ctx):
        from ..federated import auth as stage

        result = stage.keygen(out_path)
        render(result, as_json, lambda: out.print(
            f"wrote {escape(str(result.private))} (keep it on the client) and {escape(str(result.public))} (add it "
            f"to the server's --authorized-keys)", highlight=False))
