"""Federated training on Flower: one capability, one folder.

- budget.py      how many rounds, early stopping's patience in rounds, the privacy budget (no Flower import)
- server.py      the server: FedAvg (with DP wrappers) over the rounds, early stopping
- checkpoint.py  the rounds so far, and their checkpoint for --resume
- run_folder.py  the run folder a federation ends with (the one `train` writes)
- client.py      the client: a Keras model trained on its own rows; the SecAgg+ / clipping mods
- simulation.py  `bigmodel federated run`: K clients on Flower's simulation engine (Ray)
- deploy.py      `bigmodel federated serve` / `join`: starts Flower's SuperLink and SuperNodes, waits on them
- auth.py        `bigmodel federated keygen`, registered SuperNodes, and the front that keeps the control API local
- app.py         the Flower App: what runs inside Flower's own processes (the server's rounds, a node's client)

Flower (`flwr[simulation]`) is the optional `federated` extra: nothing here imports it at module level but app.py.
"""
