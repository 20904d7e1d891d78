"""The Flower App of `bigmodel federated serve` / `join`: the components Flower's deployment runtime loads.

`serve` (deploy.py) submits an app whose pyproject names these two objects; the SuperLink starts the ServerApp in a
process of its own (flwr-serverapp), each SuperNode a ClientApp process per message (flwr-clientapp). Each
reads its job, a JSON file our command wrote, named in the run config (server) or the node config (client).
Flower is imported at the top: only Flower's processes import this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flwr.client import ClientApp
from flwr.common import Context
from flwr.server import Grid, ServerApp

from . import client, deploy

server_app = ServerApp()


@server_app.main()
def _server(grid: Grid, context: Context) -> None:
    deploy.serve_rounds(grid, context, json.loads(Path(str(context.run_config["job"])).read_text()))


def _client(context: Context) -> Any:
    job = json.loads(Path(str(context.node_config["bigmodel"])).read_text())
    return deploy.node_client(job).to_client()


client_app = ClientApp(client_fn=_client, mods=[client.client_mod])
