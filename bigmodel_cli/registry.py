"""Names in the config -> Keras objects, through Keras' own lookups (no tables of ours)."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from .errors import ConfigError, one_line
from .keras_env import import_keras


def _close(name: str, choices: list[str]) -> str:
    near = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    return f"; did you mean {', '.join(near)}?" if near else ""


def layer(spec: dict[str, Any], where: str) -> Any:
    """Build one layer from `{type: Dense, units: 64, ...}`; errors name `where` (e.g. model.layers[2])."""
    keras = import_keras()
    kwargs = dict(spec)
    name = kwargs.pop("type")
    if name == "Lambda":
        raise ConfigError(f"{where}: Lambda layers run arbitrary code and cannot be saved safely; use a built-in layer")
    if name == "TFSMLayer":
        raise ConfigError(f"{where}: TFSMLayer loads another model from disk, which a run cannot save or export; "
                          f"use built-in layers")
    from .layers import LAYERS

    cls = LAYERS.get(name) or getattr(keras.layers, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, keras.layers.Layer)) or name == "InputLayer":
        names = [*LAYERS, *(n for n in dir(keras.layers) if n[:1].isupper())]
        raise ConfigError(f"{where}: unknown layer type '{name}'{_close(name, names)}")
    try:
        return cls(**kwargs)
    except Exception as e:  # noqa: BLE001  (a layer's constructor on the config's arguments: the config's to fix)
        raise ConfigError(f"{where} ({name}): {one_line(e)}") from e


def _get(family: Any, name: str, where: str, what: str) -> Any:
    """`keras.<family>.get(name)`, its ValueError turned into a ConfigError with close matches."""
    try:
        return family.get(name)
    except ValueError:
        names = [n for n in dir(family) if not n.startswith("_") and n.islower()]
        raise ConfigError(f"{where}: unknown {what} '{name}'{_close(name, names)}") from None


def activation(name: str, where: str) -> Any:
    return _get(import_keras().activations, name, where, "activation")


def loss(name: str, where: str) -> Any:
    return _get(import_keras().losses, name, where, "loss")


def optimizer(name: str, learning_rate: float, where: str, defaults: dict[str, Any] | None = None,
              **settings: Any) -> Any:
    """`keras.optimizers.get(name)` made again with `learning_rate` and the `settings` that are set (None: the
    optimizer's default); a setting the optimizer does not take is an error naming it. `defaults` apply where the
    optimizer takes them and no setting says otherwise."""
    keras = import_keras()
    try:
        opt = keras.optimizers.get(name)
    except Exception:  # noqa: BLE001  (ValueError; a base or wrapper class without its arguments: other types)
        names = [n.lower() for n in dir(keras.optimizers) if n[:1].isupper()]
        raise ConfigError(f"{where}: unknown optimizer '{name}'{_close(name.lower(), names)}") from None
    settings = {k: v for k, v in settings.items() if v is not None}
    takes = inspect.signature(type(opt)).parameters
    settings = {**{k: v for k, v in (defaults or {}).items() if k in takes}, **settings}
    for key in settings:
        if key not in takes:
            raise ConfigError(f"{where.rsplit('.', 1)[0]}.{key}: optimizer '{name}' has no setting '{key}'")
    try:
        return type(opt)(learning_rate=learning_rate, **settings)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where.rsplit('.', 1)[0]}: optimizer '{name}': {one_line(e)}") from e
