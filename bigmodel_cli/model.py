"""The network: a `keras.Sequential` built from the `model` and `train` sections of the config."""

from __future__ import annotations

from typing import Any

from . import registry
from .config import Config
from .errors import ConfigError, one_line
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


def dropout(cfg: Config, schema: Schema) -> float:
    """model.dropout: auto is 0.15 for classification (RealMLP-TD's rate), 0 for regression and when model.layers
    has a Dropout of its own."""
    rate = cfg.model.dropout
    if rate != "auto":
        return rate
    own = any(spec["type"] == "Dropout" for spec in cfg.model.layers)
    return 0.15 if schema.is_classification and not own else 0.0


def _layers(cfg: Config, schema: Schema) -> list[Any]:
    """The configured hidden layers, each Dense followed by a Dropout of model.dropout's rate; a
    `PeriodicEmbeddings` named without `columns` embeds the numeric columns (and is left out when the table has
    none)."""
    from .features import numeric_columns

    out = []
    rate = dropout(cfg, schema)
    for i, spec in enumerate(cfg.model.layers):
        if spec["type"] == "PeriodicEmbeddings" and spec.get("columns") is None:
            numeric = numeric_columns(schema)
            if not numeric:
                continue
            spec = {**spec, "columns": numeric}
        out.append(registry.layer(spec, f"model.layers[{i}]"))
        if rate > 0 and spec["type"] == "Dense":
            out.append(registry.layer({"type": "Dropout", "rate": rate}, "model.dropout"))
    return out


def loss(cfg: Config, schema: Schema) -> Any:
    """train.loss, or the task's (with train.label_smoothing for classification)."""
    smoothing = cfg.train.label_smoothing if schema.is_classification else 0.0
    if cfg.train.loss != "auto":
        if smoothing:
            raise ConfigError("train.label_smoothing applies to the default loss: set train.loss: auto, or "
                              "train.label_smoothing: 0")
        return _fits(registry.loss(cfg.train.loss, "train.loss"), cfg.train.loss, schema)
    if not smoothing:
        return registry.loss(default_loss(schema.task), "train.loss")
    keras = registry.import_keras()
    if schema.task == "binary":
        return keras.losses.BinaryCrossentropy(label_smoothing=smoothing)
    from .layers import SmoothedSparseCrossentropy

    return SmoothedSparseCrossentropy(len(schema.classes), smoothing)


def _fits(fn: Any, name: str, schema: Schema) -> Any:
    """A named loss, tried once on two labels as training gives them (class indices, or float values) and the
    network's output shape: one that cannot take them is refused now, not at the first step of training."""
    import numpy as np

    keras = registry.import_keras()
    units = output_units(schema)
    # two classes' indices, or two values that are no class index (a sparse loss on a regression target)
    y = np.array([0, 1], "int32") if schema.is_classification else np.array([0.5, 3.0], "float32")
    if not isinstance(fn, keras.losses.Loss) and units == 1:
        y = y[:, None]  # as compile's wrapper of a loss function matches (n,) labels to an (n, 1) output
    try:
        keras.ops.convert_to_numpy(fn(y, np.full((2, units), 1 / max(units, 2), "float32")))
    except Exception as e:  # noqa: BLE001  (any error of the loss on well-formed labels: the wrong loss)
        task = f"{schema.task} target ({units} output{'s' if units > 1 else ''}; labels as " \
               f"{'class indices' if schema.is_classification else 'values'})"
        raise ConfigError(f"train.loss: '{name}' does not fit a {task}: {one_line(e)}; "
                          f"train.loss: auto picks the task's") from e
    return fn


def members(cfg: Config) -> int:
    """model.ensemble: auto is 8 members, or one where a training step takes one loss per example (DP-SGD's
    clipping, multi_worker's loop)."""
    k = cfg.model.ensemble
    if k != "auto":
        return k
    return 1 if cfg.train.privacy is not None or cfg.train.strategy == "multi_worker" else 8


def build(cfg: Config, schema: Schema, n_inputs: int) -> Any:
    """Input -> the configured hidden layers -> an output layer chosen from the task; compiled."""
    keras = registry.import_keras()
    layers = _layers(cfg, schema)
    act = cfg.model.output_activation
    act = default_activation(schema.task) if act == "auto" else act
    registry.activation(act, "model.output_activation")
    # the output stays float32 under a mixed-precision policy, for stable losses and probabilities
    out = keras.layers.Dense(output_units(schema), activation=act, name="output", dtype="float32")
    from .features import Embeddings, embedded_columns

    embedded = embedded_columns(schema)
    first = [Embeddings(embedded, n_inputs, name="embeddings")] if embedded else []
    k = members(cfg)
    if k > 1:  # the adapter after the embeddings, k heads, their mean last (after the target's units)
        from .layers import EnsembleAdapter, EnsembleDense, EnsembleMean

        at = next((i for i, layer in enumerate(layers) if type(layer).__name__ != "PeriodicEmbeddings"), len(layers))
        layers.insert(at, EnsembleAdapter(k, name="ensemble"))
        out = EnsembleDense(output_units(schema), k, activation=act, name="output", dtype="float32")
    last = [EnsembleMean(name="ensemble_mean", dtype="float32")] if k > 1 else []
    stack = [keras.Input(shape=(n_inputs,), name="features"), *first, *layers, out, *target_units(schema), *last]
    if k > 1 and cfg.train.privacy is not None:
        raise ConfigError("model.ensemble cannot be combined with train.privacy (DP-SGD clips each example's "
                          "gradient of one loss); set model.ensemble: 1")
    try:
        if k > 1:
            from .layers import EnsembleSequential

            net = EnsembleSequential(stack, name="network")
        elif cfg.train.privacy is not None:
            from .training.privacy import DPSequential

            p = cfg.train.privacy
            net = DPSequential(stack, name="network", l2_norm_clip=p.l2_norm_clip,
                               noise_multiplier=p.noise_multiplier, microbatches=p.microbatches)
        else:
            net = keras.Sequential(stack, name="network")
        if k > 1:  # the ensemble's head is built on first call: call it once, so a layer that cannot feed it
            import numpy as np  # (an LSTM wants 3-D input) is refused here, not at the first training step

            net(np.zeros((1, n_inputs), "float32"))
    except Exception as e:  # noqa: BLE001  (building the configured layers on the input: the config's to fix)
        raise ConfigError(f"model.layers: the layers do not fit together: {one_line(e)}") from e
    opt = cfg.train.optimizer
    net.compile(
        optimizer=registry.optimizer(opt.name, opt.learning_rate, "train.optimizer.name",
                                     defaults={"beta_2": 0.95} if opt.beta_2 == "auto" else None,
                                     beta_2=None if opt.beta_2 == "auto" else opt.beta_2,
                                     weight_decay=opt.weight_decay),
        loss=loss(cfg, schema),
        metrics=["accuracy"] if schema.is_classification else ["mae"],
        steps_per_execution=cfg.train.steps_per_execution,
        jit_compile=cfg.train.jit_compile,
    )
    return net


def initial_state(net: Any) -> list[Any]:
    """The values of a compiled, untrained network's variables — its weights, the dropout layers' random states,
    and its optimizer's (built here: Adam's moments, the step count, the learning rate) — for `reset`."""
    import numpy as np

    net.optimizer.build(net.trainable_variables)
    return [np.array(v) for v in (*net.variables, *net.optimizer.variables)]


def reset(net: Any, state: list[Any]) -> None:
    """Put `net` back as `initial_state` found it, so it trains as a fresh build would, but with the train step
    Keras has already traced (~1-3 s a fit saved, most of a small table's training time)."""
    for v, value in zip((*net.variables, *net.optimizer.variables), state, strict=True):
        v.assign(value)
