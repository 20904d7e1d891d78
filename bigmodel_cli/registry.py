"""Names in the config -> Keras objects, through Keras' own lookups (no tables of ours)."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from .errors import ConfigError
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
    cls = getattr(keras.layers, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, keras.layers.Layer)) or name == "InputLayer":
        names = [n for n in dir(keras.layers) if n[:1].isupper()]
        raise ConfigError(f"{where}: unknown layer type '{name}'{_close(name, names)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where} ({name}): {e}") from None


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


def optimizer(name: str, learning_rate: float, where: str) -> Any:
    keras = import_keras()
    try:
        opt = keras.optimizers.get(name)
    except ValueError:
        names = [n.lower() for n in dir(keras.optimizers) if n[:1].isupper()]
        raise ConfigError(f"{where}: unknown optimizer '{name}'{_close(name.lower(), names)}") from None
    opt.learning_rate = learning_rate
    return opt
