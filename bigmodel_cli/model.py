"""The network: a `keras.Sequential` built from the `model` and `train` sections of the config."""

from __future__ import annotations

from typing import Any

from . import registry
from .config import Config
from .errors import ConfigError
from .schema import Schema


def output_units(schema: Schema) -> int:
    return len(schema.classes) if schema.task == "multiclass" else 1


def default_activation(task: str) -> str:
    return {"binary": "sigmoid", "multiclass": "softmax", "regression": "linear"}[task]


def default_loss(task: str) -> str:
    return {"binary": "binary_crossentropy", "multiclass": "sparse_categorical_crossentropy",
            "regression": "mean_squared_error"}[task]


def target_units(schema: Schema) -> list[Any]:
    """Regression with a scaled target: a fixed Rescaling layer (y = out * std + mean) after the output layer,
    so that the network learns a standardized target and predicts in target units. Adam's steps do not depend
    on the loss's scale, so fitting the raw-unit loss through this layer is fitting the standardized target."""
    if schema.task != "regression" or schema.target_std is None:
        return []
    keras = registry.import_keras()
    return [keras.layers.Rescaling(scale=schema.target_std, offset=schema.target_mean, name="target_units",
                                   dtype="float32")]


def build(cfg: Config, schema: Schema, n_inputs: int) -> Any:
    """Input -> the configured hidden layers -> an output layer chosen from the task; compiled."""
    keras = registry.import_keras()
    layers = [registry.layer(spec, f"model.layers[{i}]") for i, spec in enumerate(cfg.model.layers)]
    act = cfg.model.output_activation
    act = default_activation(schema.task) if act == "auto" else act
    registry.activation(act, "model.output_activation")
    # the output stays float32 under a mixed-precision policy, for stable losses and probabilities
    out = keras.layers.Dense(output_units(schema), activation=act, name="output", dtype="float32")
    from .features import Embeddings, embedded_columns

    embedded = embedded_columns(schema)
    first = [Embeddings(embedded, n_inputs, name="embeddings")] if embedded else []
    stack = [keras.Input(shape=(n_inputs,), name="features"), *first, *layers, out, *target_units(schema)]
    try:
        if cfg.train.privacy is not None:
            from .privacy import DPSequential

            p = cfg.train.privacy
            net = DPSequential(stack, name="network", l2_norm_clip=p.l2_norm_clip,
                               noise_multiplier=p.noise_multiplier, microbatches=p.microbatches)
        else:
            net = keras.Sequential(stack, name="network")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.layers: the layers do not fit together: {e}") from None
    loss_name = default_loss(schema.task) if cfg.train.loss == "auto" else cfg.train.loss
    opt = cfg.train.optimizer
    net.compile(
        optimizer=registry.optimizer(opt.name, opt.learning_rate, "train.optimizer.name"),
        loss=registry.loss(loss_name, "train.loss"),
        metrics=["accuracy"] if schema.is_classification else ["mae"],
        steps_per_execution=cfg.train.steps_per_execution,
        jit_compile=cfg.train.jit_compile,
    )
    return net
