"""The Flower App of `bigmodel federated serve` / `join`: the code that runs inside Flower's deployment runtime.

`serve` (deploy.py, which starts the processes) submits an app whose pyproject names the two objects below; the
SuperLink starts the ServerApp in a process of its own (flwr-serverapp), each SuperNode a ClientApp process per
message (flwr-clientapp). Each reads its job, a JSON file our command wrote, named in the run config (server) or
the node config (client), and reports through the job's status file. Flower is imported at the top: only Flower's
processes import this module.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import ClientApp
from flwr.common import Context
from flwr.server import Grid, ServerApp

from ..schema import Schema
from . import client, run_folder
from .client import KerasClient, note_status
from .server import Federation

server_app = ServerApp()


@server_app.main()
def _server(grid: Grid, context: Context) -> None:
    serve_rounds(grid, context, json.loads(Path(str(context.run_config["job"])).read_text()))


def _client(context: Context) -> Any:
    job = json.loads(Path(str(context.node_config["bigmodel"])).read_text())
    return node_client(job).to_client()


client_app = ClientApp(client_fn=_client, mods=[client.client_mod])


def serve_rounds(grid: Any, context: Any, job: dict[str, Any]) -> None:
    """The ServerApp's main (in Flower's flwr-serverapp process): the rounds with `federated.clients` nodes,
    the run folder, and the outcome as the status file's last record; "done" to every node at the end."""
    from ..config import validate
    from ..errors import BigModelError

    status = Path(job["status"])
    if job["verbose"]:
        logging.basicConfig(level=logging.INFO)
    try:
        import yaml

        cfg = validate(yaml.safe_load(job["config"]), "the server's config")
        fed = Federation.open(Path(job["prep"]), Path(job["out"]), cfg,
                              lambda r, n, m: note_status(status, {"round": r, "rounds": n, "metrics": m}),
                              bool(job["verbose"]), bool(job.get("resume")))
        fed.on_warning = lambda message: note_status(status, {"warning": message})
        n, f = cfg.federated.clients, cfg.federated
        max_weight = 1.0  # SecAgg+ scales each update by rows / max_weight: ask the nodes for their rows
        if f.secure_aggregation and f.privacy is None:
            max_weight = float(max(int(p["rows"]) for p in ask(grid, {}, wait_for=n).values()))
        fed.run_rounds(grid, context, n, max_weight)
        done = run_folder.write(fed, {"clients": n, "partition": "deployment"})
        record: dict[str, Any] = {"result": done.to_dict()}
    except BigModelError as e:
        record = {"error": str(e)}
    finally:
        ask(grid, {"done": True})  # even after a crash: the clients need not wait for a lost server
    note_status(status, record)


def node_client(job: dict[str, Any]) -> KerasClient:
    """The ClientApp's client (in Flower's flwr-clientapp process, one per message): the rows `join` encoded."""
    schema = Schema.load(Path(job["prep"]))
    with np.load(job["data"]) as d:
        return KerasClient(schema, d["x"], d["y"], int(job["seed"]), Path(job["status"]))


def ask(grid: Any, config: dict[str, Any], wait_for: int = 0, timeout: float = 120.0) -> dict[int, dict[str, Any]]:
    """Send a get_properties message with `config` to every node (after `wait_for` nodes joined); their answers."""
    from flwr.common import GetPropertiesIns
    from flwr.common.constant import MessageTypeLegacy
    from flwr.compat.common import recorddict_compat as compat

    while len(nodes := list(grid.get_node_ids())) < wait_for:
        time.sleep(1)
    content = compat.getpropertiesins_to_recorddict(GetPropertiesIns(config=config))
    replies = grid.send_and_receive([grid.create_message(content, MessageTypeLegacy.GET_PROPERTIES, node, "bigmodel")
                                     for node in nodes], timeout=timeout)
    return {r.metadata.src_node_id: compat.recorddict_to_getpropertiesres(r.content).properties
            for r in replies if not r.has_error()}
