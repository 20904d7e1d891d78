"""The client side of `bigmodel federated`: a Keras client and the Flower mods every client runs.

The same client serves the simulation (one per partition, in Ray's actors) and the deployment (one per
message, in a SuperNode's flwr-clientapp process); the server sends it the config with every round. The
status file is the channel from Flower's app processes back to our commands (rounds, results, "done").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..schema import Schema


class KerasClient:
    """One Flower client: trains the model the server's config describes on its own (encoded) rows.

    The server sends the config with every round, so a client needs only the prep folder's schema and
    its data; it answers with its weights and example count (1 under DP: every client weighs alike)."""

    def __init__(self, schema: Schema, x: np.ndarray, y: np.ndarray, seed: int, status: Path | None = None,
                 attack: Any = None) -> None:
        self.schema, self.x, self.y, self.seed, self.status = schema, x, y, seed, status
        self.attack = attack  # config.AttackConfig: this simulated client is dishonest (tests, benchmarks)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        import yaml

        from ..config import validate

        text = str(config["config"])
        cfg = validate(yaml.safe_load(text), "the server's config")
        seed = self.seed + 1000 * int(config["round"])
        net, anchors = _network(text, cfg, self.schema, self.x.shape[1], seed)
        net.set_weights(parameters)
        for v, anchor in anchors:  # FedProx: the proximal term pulls towards this round's global weights
            anchor.assign(v)
        y = self.y
        if self.attack is not None and self.attack.kind == "labels":
            y = (len(self.schema.classes) - 1 - y) if self.schema.classes else -y
        h = net.fit(self.x, y, epochs=cfg.federated.local_epochs, batch_size=cfg.train.batch_size,
                    verbose=0, shuffle=True)
        weight = 1 if cfg.federated.privacy is not None else len(self.y)
        note_status(self.status, {"round": int(config["round"])})
        weights = net.get_weights()
        if self.attack is not None:
            weights = tampered(weights, parameters, self.attack)
        return weights, weight, {"train_loss": float(h.history["loss"][-1]), "rows": len(self.y)}

    def properties(self, config: dict[str, Any]) -> dict[str, Any]:
        """The server's questions outside the rounds: the row count, and "done" at the end."""
        if config.get("done"):
            note_status(self.status, {"done": True})
        return {"rows": len(self.y)}

    def to_client(self) -> Any:
        from flwr.client import NumPyClient

        outer = self

        class _Client(NumPyClient):  # type: ignore[misc]
            def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> Any:
                return outer.fit(parameters, config)

            def get_properties(self, config: dict[str, Any]) -> Any:
                return outer.properties(config)

        return _Client().to_client()


def tampered(weights: list[np.ndarray], start: list[np.ndarray], attack: Any) -> list[np.ndarray]:
    """A dishonest client's answer (config.AttackConfig): sign-flipped and scaled, NaN, or mis-shaped."""
    weights = [w.copy() for w in weights]
    if attack.kind == "sign_flip":
        return [g - attack.scale * (w - g) for w, g in zip(weights, start, strict=True)]
    if attack.kind == "nan":
        weights[0][...] = np.nan
    elif attack.kind == "shape":
        weights[0] = np.zeros((weights[0].shape[0] + 1, *weights[0].shape[1:]), dtype=weights[0].dtype)
    return weights


_cached: list[Any] = []  # [key, network, model.initial_state, anchors]: the last network this process built


def _proximal(net: Any, mu: float) -> list[tuple[Any, Any]]:
    """FedProx (Li et al. 2020): mu/2 |w - w_global|^2 added to the loss, as a regularizer on each trainable
    variable; (variable, anchor) pairs, the anchors set to the global weights every round."""
    from ..keras_env import import_keras

    keras = import_keras()

    class Proximal(keras.regularizers.Regularizer):  # type: ignore[misc, name-defined]
        def __init__(self, anchor: Any, before: Any) -> None:
            self.anchor, self.before = anchor, before  # before: the variable's own regularizer (l2, ...), kept

        def __call__(self, w: Any) -> Any:
            term = 0.5 * mu * keras.ops.sum(keras.ops.square(w - self.anchor))
            return term if self.before is None else term + self.before(w)

    pairs = []
    for v in net.trainable_weights:
        anchor = keras.Variable(np.zeros(v.shape, dtype=v.dtype), trainable=False, name="proximal_anchor")
        v.regularizer = Proximal(anchor, v.regularizer)
        pairs.append((v, anchor))
    return pairs


def _network(text: str, cfg: Any, schema: Schema, n_inputs: int, seed: int) -> tuple[Any, list[tuple[Any, Any]]]:
    """The compiled network for a round, as freshly built: built (and its train step traced, ~1 s) once per
    process and config, then reset every round — the optimizer's variables to their initial values (Adam's
    moments, the step count), the dropout layers' random states from `seed`, Keras' global seeds to `seed`.
    The caller sets the weights (and FedProx's anchors). What a round computes then depends on its seed alone,
    not on which client this process ran before (Ray's actors serve any client)."""
    import json

    from .. import model
    from ..keras_env import import_keras

    key = (text, n_inputs, json.dumps(schema.to_dict(), sort_keys=True))
    if not _cached or _cached[0] != key:
        import_keras(seed)
        net = model.build(cfg, schema, n_inputs)
        f = cfg.federated
        anchors = _proximal(net, f.proximal_mu) if f.strategy == "fedprox" and f.proximal_mu > 0 else []
        _cached[:] = [key, net, model.initial_state(net), anchors]
    net, start, anchors = _cached[1], _cached[2], _cached[3]
    import_keras(seed)
    model.reset(net, start)
    weights = {id(v) for v in net.weights}
    rng = np.random.default_rng(seed)
    for v in net.variables:  # beyond the weights: the seed generators' states (dropout's)
        if id(v) not in weights and v.name == "seed_generator_state":
            v.assign(np.array([rng.integers(1, 10**9), 0], dtype=v.dtype))
    return net, anchors


def client_mod(msg: Any, context: Any, call_next: Any) -> Any:
    """The clients' Flower mod: SecAgg+ when the server's message runs that protocol, then client-side
    clipping when the server's DP wrapper asks for it (it does only under SecAgg+: the server never sees
    one client's update). One mod for every config, since a client learns the config from the server."""
    from flwr.client import mod
    from flwr.common import MessageType
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return mod.secaggplus_mod(msg, context, lambda m, c: _clipping_mod(m, c, call_next))
    return _clipping_mod(msg, context, call_next)


def _clipping_mod(msg: Any, context: Any, call_next: Any) -> Any:
    import yaml
    from flwr.client import mod
    from flwr.compat.common import recorddict_compat as compat
    from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

    config = compat.recorddict_to_fitins(msg.content, keep_input=True).config
    if KEY_CLIPPING_NORM not in config:
        return call_next(msg, context)
    fixed = yaml.safe_load(str(config["config"]))["federated"]["privacy"]["clipping"] == "fixed"
    return (mod.fixedclipping_mod if fixed else mod.adaptiveclipping_mod)(msg, context, call_next)


def note_status(status: Path | None, record: dict[str, Any]) -> None:
    """Append one JSON record to a status file (the channel from Flower's app processes to ours)."""
    if status is not None:
        with open(status, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_status(status: Path) -> list[dict[str, Any]]:
    """The status file's complete records (a line still being written is left for the next read)."""
    text = status.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]
