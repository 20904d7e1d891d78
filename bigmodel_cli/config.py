"""The experiment config: typed sections with defaults, loaded from YAML, overridden by --set.

No Keras import here: names of layers, losses and optimizers are checked by `registry` when the
model is built, so `bigmodel --help` and config errors stay fast.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

ColumnKind = Literal["numeric", "categorical", "boolean", "text", "date", "id", "ignore"]
Task = Literal["auto", "binary", "multiclass", "regression"]
MAX_YAML_ALIASES = 100


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitConfig(_Section):
    # 80/10/10: on small tables every training row counts (breast cancer, 4 seeds: accuracy 0.956 vs 0.941 with
    # 70/15/15; hmda 0.916 vs 0.910; benchmarks/quality.py), and 10% is what a hand-written script validates on
    train: float = Field(0.80, gt=0, lt=1)
    val: float = Field(0.10, ge=0, lt=1)
    test: float = Field(0.10, ge=0, lt=1)  # 0: no test split (evaluate on your own file with --data)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class DataConfig(_Section):
    target: str | None = None
    task: Task = "auto"
    columns: dict[str, ColumnKind] = Field(default_factory=dict)
    id_columns: list[str] = Field(default_factory=list)
    # a date column's strftime format, e.g. {day: "%d/%m/%Y"} (the column is then a date); ISO 8601 dates
    # (2024-03-01, 2024-03-01T12:30:00Z) are found without one
    date_formats: dict[str, str] = Field(default_factory=dict)
    delimiter: str | None = None
    encoding: str = "utf-8"
    split: SplitConfig = Field(default_factory=SplitConfig)
    # bounded memory: read in chunks, write row-grouped splits, train from an on-disk feature matrix;
    # auto: for files over 512 MiB
    streaming: bool | Literal["auto"] = "auto"
    chunk_rows: int = Field(200_000, ge=10)  # rows per chunk when streaming


class PreprocessConfig(_Section):
    # robust: (x - median) / IQR, then the smooth clip x / sqrt(1 + (x/3)^2) (RealMLP's numeric inputs: outliers
    # and heavy tails stay within about +-3 without a hard cut)
    scaling: Literal["minmax", "standard", "robust"] = "standard"
    # > 0: each numeric column also gets a piecewise-linear encoding over up to this many quantile bins of the
    # train split (Gorishniy et al. 2022): bin t is 0 below its edges, 1 above, linear between; 0: off.
    # 16 with model.ensemble (#28): hpc_jobs 0.800 -> 0.828, concrete RMSE 5.93 -> 4.90 (benchmarks/quality.py)
    numeric_bins: int = Field(16, ge=0, le=256)
    # regression: the network learns the target standardized by the train split's mean and std, and a fixed
    # Rescaling layer at its end turns that back into target units (so every consumer sees raw units)
    target_scaling: Literal["standard", "none"] = "standard"
    categorical_encoding: Literal["one_hot", "embedding"] = "one_hot"
    max_categories: int = Field(50, ge=1)
    text_max_tokens: int = Field(1000, ge=2)
    text_output: Literal["tf_idf", "multi_hot", "count"] = "tf_idf"
    # identical rows are usually distinct observations (half of statsmodels' randhie): dropping them biases the
    # model (RMSE 4.56 vs 3.85 kept, benchmarks/quality.py); true removes them, e.g. for a leak-free test split
    drop_duplicates: bool = False


def _default_layers() -> list[dict[str, Any]]:
    # two ReLU layers of 128 (#28; one of 64 before): with the bins and the ensemble, means of 3 seeds
    # (benchmarks/quality.py): storms RMSE 3.54 -> 2.81, diamonds 547 -> 537, randhie 3.79 -> 3.74, concrete
    # 4.51 -> 4.34, hpc_jobs 0.817 -> 0.823
    return [{"type": "Dense", "units": 128, "activation": "relu"} for _ in range(2)]


class ModelConfig(_Section):
    layers: list[dict[str, Any]] = Field(default_factory=_default_layers)
    output_activation: str = "auto"
    # k > 1: a parameter-efficient ensemble of k members in the one network (TabM-mini): the layers after any
    # embeddings see k scaled copies of the input, with shared weights; k output heads, trained on the mean of
    # their losses; the prediction is the mean of theirs. auto: 8, or 1 under DP-SGD and multi_worker (whose
    # training steps take one loss per example)
    ensemble: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = "auto"
    # a Dropout of this rate after each Dense of model.layers. auto: 0.15 for classification (RealMLP-TD's), 0 for
    # regression and when model.layers has a Dropout of its own. Classification, 5 seeds on 12 tables
    # (benchmarks/quality_sweep.py): hpc_jobs 0.826 -> 0.838 (15 seeds 0.837), median lead over HistGB 0.63 -> 0.90
    # points; breast_cancer 0.960 -> 0.947 at 5 seeds, 0.965 -> 0.960 at 15; the rest within +-0.4
    dropout: Annotated[float, Field(ge=0, lt=1)] | Literal["auto"] = "auto"

    @field_validator("layers")
    @classmethod
    def _each_has_type(cls, layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, spec in enumerate(layers):
            if not isinstance(spec.get("type"), str):
                raise ValueError(f"layers[{i}] needs a 'type' such as Dense or Dropout")
        return layers


class OptimizerConfig(_Section):
    name: str = "adam"
    learning_rate: float = Field(0.002, gt=0)  # with batch 128 (#28; 0.001 at batch 32 before)
    # the optimizer's own settings, passed when set (Adam/AdamW/...: beta_2; AdamW's weight_decay); beta_2 auto:
    # 0.95 (RealMLP's) where the optimizer takes one, else its default
    beta_2: Annotated[float, Field(gt=0, lt=1)] | Literal["auto"] | None = "auto"
    weight_decay: float | None = Field(None, ge=0)
    # the learning rate over the epochs: constant, or cosine from learning_rate down to ~0 at the last epoch
    schedule: Literal["constant", "cosine"] = "constant"


class EarlyStoppingConfig(_Section):
    enabled: bool = True
    monitor: str = "val_loss"
    # auto (the default): 100 optimiser steps within 10..30 epochs (TrainConfig.budget), so a small table, a few
    # steps an epoch, is not stopped while it still improves: 5 seeds, breast_cancer 0.947 -> 0.968, concrete RMSE
    # 4.318 -> 4.152, diabetes 59.86 -> 61.23; the tables of >= 1,280 training rows keep 10 (#28)
    patience: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    min_delta: float = Field(0.0, ge=0)


class ReduceLrConfig(_Section):
    """Keras' ReduceLROnPlateau on the early-stopping monitor: the learning rate times `factor` after
    `patience` epochs without improvement, down to `min_lr`."""

    factor: float = Field(0.5, gt=0, lt=1)
    patience: int = Field(5, ge=0)
    min_lr: float = Field(1e-5, ge=0)


class PrivacyConfig(_Section):
    """Record-level DP-SGD (bigmodel_cli/training/privacy.py)."""

    l2_norm_clip: float = Field(1.0, gt=0)
    noise_multiplier: float = Field(1.1, ge=0)
    microbatches: int | None = Field(None, ge=1)  # None: one example per microbatch
    delta: float = Field(1e-5, gt=0, lt=1)


# train.epochs / early_stopping.patience auto: a budget in optimiser steps, so that a small table (a few steps
# per epoch) gets as many updates as a large one, and patience as many steps to show an improvement. epochs auto is
# not the default: measured on penguins / breast cancer / wine (3 seeds each) it bought -0.5 / +0.6 / 0 accuracy
# points for 2.5x / 1.5x / 2x the training time; with standard scaling, 100 epochs no longer stop them underfitted.
# patience auto is (EarlyStoppingConfig).
AUTO_STEPS, AUTO_EPOCHS = 2000, (100, 500)
AUTO_PATIENCE_STEPS, AUTO_PATIENCE = 100, (10, 30)


class TrainConfig(_Section):
    epochs: Annotated[int, Field(ge=1)] | Literal["auto"] = 100  # auto: see budget()
    batch_size: int = Field(128, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    loss: str = "auto"
    # classification: the targets are smoothed toward uniform by this much (the default loss only)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    class_weight: Literal["none", "balanced"] | dict[str, float] = "none"
    tensorboard: bool = True  # TensorBoard logs in RUN_DIR/logs/
    # RUN_DIR/checkpoint/ (for --resume) after the first epoch, then at most this often (0: every epoch): saving
    # costs ~30 ms, as much as a small table's whole epoch
    checkpoint_seconds: float = Field(1.0, ge=0)
    steps_per_execution: int = Field(64, ge=1)  # batches per compiled call: 4.1x at batch 32 (bench_train.py)
    jit_compile: bool | Literal["auto"] = "auto"
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"  # multi_worker: by TF_CONFIG
    mixed_precision: Literal["off", "bf16", "fp16"] = "off"
    privacy: PrivacyConfig | None = None  # DP-SGD when set, e.g. {l2_norm_clip: 1.0, noise_multiplier: 1.1}
    reduce_lr: ReduceLrConfig | None = None  # a learning-rate schedule on plateaus, e.g. {factor: 0.5, patience: 5}
    # after early stopping has chosen the epoch count, train a fresh network on train + val for that many epochs
    # (as AutoGluon's refit_full): 4 seeds, breast cancer 0.956 vs 0.947, anes96 0.892 vs 0.890, slid RMSE +0.3%;
    # hpc_jobs +0.6 points (3 seeds); about +40% training time
    refit: bool = True
    # model.onnx in the run folder, parity-checked, so predict / evaluate / serve run without TensorFlow; auto: when
    # tf2onnx and onnxruntime are installed (the onnx extra) and no column is free text
    portable: bool | Literal["auto"] = "auto"

    def budget(self, rows: int) -> tuple[int, int]:
        """(epochs, patience) for `rows` training rows. `auto` epochs: enough for AUTO_STEPS optimiser steps,
        within 100..1000 epochs (tables over ~128k rows at batch 32 get 100 epochs, as before); `auto`
        patience: AUTO_PATIENCE_STEPS steps, within 10..50 epochs."""
        steps = max(1, math.ceil(rows / self.batch_size))
        epochs = self.epochs if self.epochs != "auto" else min(max(math.ceil(AUTO_STEPS / steps), AUTO_EPOCHS[0]),
                                                                AUTO_EPOCHS[1])
        p = self.early_stopping.patience
        patience = p if p != "auto" else min(max(math.ceil(AUTO_PATIENCE_STEPS / steps), AUTO_PATIENCE[0]),
                                             AUTO_PATIENCE[1])
        return int(epochs), int(patience)

    @model_validator(mode="after")
    def _privacy_fits(self) -> TrainConfig:
        if self.reduce_lr is not None and self.optimizer.schedule != "constant":
            raise ValueError("reduce_lr and optimizer.schedule both set the learning rate: choose one")
        p = self.privacy
        if p is not None and p.microbatches and self.batch_size % p.microbatches:
            raise ValueError(f"privacy.microbatches ({p.microbatches}) must divide batch_size ({self.batch_size})")
        if p is not None and self.class_weight != "none":
            raise ValueError("class_weight cannot be combined with privacy (DP-SGD weighs every example alike)")
        if self.strategy == "multi_worker" and (p is not None or self.class_weight != "none"):
            raise ValueError("strategy multi_worker does not support privacy or class_weight yet")
        if self.strategy == "multi_worker" and self.optimizer.schedule != "constant":
            raise ValueError("strategy multi_worker does not support optimizer.schedule yet (set constant)")
        return self


class DriftConfig(_Section):
    """`bigmodel drift`: when a column of a data file has drifted from the train split."""

    psi: float = Field(0.2, gt=0)  # population stability index above this (0.1: a small shift, 0.25: a large one)
    missing: float = Field(0.1, gt=0, le=1)  # the missing rate changed by more than this (0.1: 10 points)
    out_of_range: float = Field(0.05, gt=0, le=1)  # more than this share of numbers outside the training range
    bins: int = Field(10, ge=2, le=100)  # quantile bins of a number in the reference statistics (train writes them)


class EvaluateConfig(_Section):
    split: Literal["train", "val", "test"] = "test"
    gates: list[str] = Field(default_factory=list)
    bootstrap: int = Field(0, ge=0, le=100_000)
    threshold: float | Literal["auto"] = Field(0.5)
    threshold_metric: Literal["f1", "accuracy", "balanced_accuracy", "mcc"] = "f1"
    plots: bool = True

    @field_validator("gates")
    @classmethod
    def _gate_syntax(cls, gates: list[str]) -> list[str]:
        from .gates import is_valid

        bad = [g for g in gates if not is_valid(g)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not METRIC OP NUMBER (OP: >=, <=, >, <), e.g. 'accuracy>=0.9'")
        return gates

    @field_validator("threshold")
    @classmethod
    def _probability(cls, t: float | str) -> float | str:
        if isinstance(t, float) and not 0 < t < 1:
            raise ValueError("must be 'auto' or a number between 0 and 1")
        return t


class ExportConfig(_Section):
    format: Literal["savedmodel", "keras", "onnx", "tflite"] = "savedmodel"
    parity_tolerance: float = Field(1e-5, gt=0)


class ServeConfig(_Section):
    """`bigmodel serve`: where to listen and how much one server holds (its options override these)."""

    host: str = "127.0.0.1"  # anything but loopback needs a token (or --insecure-no-auth)
    port: int = Field(8501, ge=0, le=65535)  # TF Serving's REST port
    model_name: str = Field("model", min_length=1)  # NAME in /v1/models/NAME:predict
    runtime: Literal["tf", "onnx", "tflite"] = "tf"
    max_body_mb: float = Field(10.0, ge=0.001)  # larger request bodies get 413
    max_concurrency: int = Field(4, ge=1)  # predictions computed at once
    max_queue: int = Field(60, ge=0)  # predict requests waiting beyond those; more get 503
    client_timeout: float = Field(10.0, ge=0.1)  # seconds for a request's headers, and again for its body
    poll_seconds: float = Field(2.0, gt=0)  # a versioned base (NAME/1, NAME/2, ...): how often to look for a new one
    # a versioned base: which versions stay loaded: latest, latest:N (the N newest), all, or a list such as 1,3
    versions: str = "latest"
    labels: dict[str, int] = Field(default_factory=dict)  # /v1/models/NAME/labels/LABEL -> a version: {stable: 3}

    @field_validator("versions", mode="before")
    @classmethod
    def _policy(cls, v: Any) -> str:
        if isinstance(v, int | float) and not isinstance(v, bool):  # (YAML reads `versions: 3` as a number)
            v = str(int(v)) if float(v).is_integer() else str(v)
        elif isinstance(v, list):  # [1, 3]
            v = ",".join(map(str, v))
        from .serving.versions import parse

        return str(parse(v))


class TrackingConfig(_Section):
    """MLflow tracking (bigmodel_cli/tracking.py; `train --track` sets mlflow: true)."""

    # true: log train (and evaluate) to the server, a server that is down or refuses is a warning; required: an error
    mlflow: bool | Literal["required"] = False
    uri: str | None = None  # the tracking server; None: MLFLOW_TRACKING_URI
    experiment: str | None = None  # None: MLFLOW_EXPERIMENT_NAME, else "bigmodel"


class TuneConfig(_Section):
    """`bigmodel tune`: an Optuna study over config paths, selected on the validation split.

    space: {config.path: {float: [lo, hi], log: bool} | {int: [lo, hi], log: bool} | {choice: [a, b, ...]}};
    empty: the default space of `tune.default_space`."""

    metric: str = "val_loss"
    direction: Literal["auto", "minimize", "maximize"] = "auto"  # auto: minimize losses and errors
    space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    trials: int = Field(20, ge=1)
    pruner: Literal["median", "halving", "none"] = "median"
    # a running trial writes a heartbeat this often; one silent for stale_after_seconds (its process died) is
    # marked failed and queued again
    heartbeat_seconds: int = Field(10, ge=1)
    stale_after_seconds: int = Field(60, ge=2)


class FederatedPrivacyConfig(_Section):
    """Client-level DP for `federated` (Flower's DP strategy wrappers): each client's update is clipped to
    `clipping_norm` in L2 norm and Gaussian noise of std noise_multiplier * clipping_norm / clients is added to
    the average; ε at `delta` after each round by dp-accounting's RDP accountant."""

    clipping: Literal["fixed", "adaptive"] = "fixed"
    clipping_norm: float = Field(1.0, gt=0)  # adaptive: the initial norm
    target_quantile: float = Field(0.5, gt=0, lt=1)  # adaptive: the share of updates left unclipped
    noise_multiplier: float = Field(1.0, gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    max_epsilon: float | None = Field(None, gt=0)  # stop (exit 1) before a round would exceed it


class AttackConfig(_Section):
    """Simulation only, to measure an aggregation against dishonest clients (the tests and the skew benchmark):
    the first `clients` clients misbehave every round. sign_flip: send global - scale x (local - global);
    labels: train on flipped labels; nan: a weight set to NaN; shape: a weight of the wrong shape."""

    clients: int = Field(1, ge=1)
    kind: Literal["sign_flip", "labels", "nan", "shape"] = "sign_flip"
    scale: float = Field(10.0, gt=0)


class FederatedConfig(_Section):
    """`bigmodel federated`: a Flower strategy over clients (simulation or deployment)."""

    clients: int = Field(4, ge=2)
    # auto: train.epochs / local_epochs rounds (as many local epochs as `train` runs), ended by early stopping
    rounds: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    # 5: penguins and breast cancer (4 IID clients) reach central training's test accuracy in 20 rounds at most,
    # as 1 local epoch does in 100 rounds (3.3x the time)
    local_epochs: int = Field(5, ge=1)
    fraction_fit: float = Field(1.0, gt=0, le=1)
    min_clients: int = Field(2, ge=1)
    partition: Literal["iid", "dirichlet", "by_column"] = "iid"
    alpha: float = Field(0.5, gt=0)  # Dirichlet label skew: small = skewed
    column: str | None = None  # by_column: one client per value of this column
    # Flower's server strategies: fedavg (McMahan et al.), fedprox (Li et al.: a proximal term mu/2 |w - w_global|^2
    # in each client's loss), fedavgm (server momentum, Hsu et al.), fedadam / fedyogi / fedadagrad (Reddi et al.).
    # fedprox: level with fedavg on IID and Dirichlet 0.5, ahead at 0.1 on breast cancer (0.982 vs 0.939), never
    # behind (benchmarks/federated_skew.py, 2 tables x 3 partitions x 2 seeds); fedavgm and fedadam fell behind
    strategy: Literal["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"] = "fedprox"
    proximal_mu: float = Field(0.1, ge=0)  # fedprox
    server_learning_rate: float | None = Field(None, gt=0)  # fedavgm, fedadam/yogi/adagrad; None: 1.0 / 0.01
    server_momentum: float = Field(0.9, ge=0, lt=1)  # fedavgm
    # how the server combines the clients' updates: mean (weighted by rows), or robust to dishonest clients:
    # coordinate-wise median, trimmed_mean (cutting `trim` at each end), krum (Flower's, assuming `malicious`)
    aggregation: Literal["mean", "median", "trimmed_mean", "krum"] = "mean"
    trim: float = Field(0.2, gt=0, lt=0.5)
    malicious: int = Field(1, ge=0)  # krum: clients assumed dishonest
    attack: AttackConfig | None = None  # simulation only: dishonest clients, to measure the aggregation
    secure_aggregation: bool = False  # Flower's SecAgg+: the server only sees masked updates
    privacy: FederatedPrivacyConfig | None = None  # client-level DP when set
    engine: Literal["simulation", "deployment"] = "simulation"  # deployment: `federated serve` + `federated join`
    # simulation: clients trained at once (Ray actors, each its own TensorFlow); auto: min(clients, CPUs)
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    address: str = "127.0.0.1:9092"  # deployment: where the SuperLink listens and clients connect

    @model_validator(mode="after")
    def _column_given(self) -> FederatedConfig:
        if self.partition == "by_column" and not self.column:
            raise ValueError("partition: by_column needs column (e.g. island)")
        if self.attack is not None and self.engine == "deployment":
            raise ValueError("attack is for the simulation only (it makes simulated clients dishonest)")
        if self.secure_aggregation and self.aggregation != "mean":
            raise ValueError(f"aggregation: {self.aggregation} needs each client's update, and under "
                             f"secure_aggregation the server only sees their masked sum; use aggregation: mean")
        if self.privacy is not None and (self.aggregation != "mean" or self.strategy not in ("fedavg", "fedprox")):
            raise ValueError("privacy (client-level DP) sizes its noise for the weighted mean of clipped updates: "
                             "use strategy fedavg or fedprox with aggregation mean (a median, Krum or a server "
                             "optimiser moves further on one client's update, and the reported epsilon would be wrong)")
        if self.aggregation != "mean" and self.strategy not in ("fedavg", "fedprox"):
            raise ValueError(f"aggregation: {self.aggregation} replaces the weighted mean that strategy "
                             f"{self.strategy}'s server step starts from; use strategy fedavg or fedprox with it")
        if self.secure_aggregation and self.partition != "by_column" and self.clients < 3:
            raise ValueError("secure_aggregation needs clients >= 3 (SecAgg+ shares each client's keys among the "
                             f"others), got {self.clients}")
        return self


class Config(_Section):
    seed: int = Field(42, ge=0, le=2**31 - 1)  # (NumPy takes < 2**32; tune and federated add offsets to it)
    data: DataConfig = Field(default_factory=DataConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    federated: FederatedConfig = Field(default_factory=FederatedConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and alias bombs."""

    aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} YAML aliases (an alias bomb?)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if not isinstance(key, str | int | float | bool | None):
                raise yaml.YAMLError(f"a key must be a plain word or number, not {type(key).__name__} (line {line})")
            if key in seen:
                raise yaml.YAMLError(f"duplicate key '{key}' on line {line}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).split("\n")[0]
        problem = " ".join(str(problem).split())
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: the YAML is nested too deeply to be a config") from None


def load_config(path: Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config (or start from defaults) and apply `key.path=value` overrides."""
    source = str(path) if path else "config"
    raw: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config: {e}") from None
        raw = parse_yaml(text, source)
        if raw is None:  # nothing but blanks and comments: a failed write or the wrong file, not "all defaults"
            raise ConfigError(f"{path}: the config file is empty; to use the defaults, omit --config")
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    return validate(raw, source)


def resolve(config: Path | None = None, overrides: Sequence[str] = (), prep: Path | None = None) -> Config:
    """The one way a verb gets its config: --config with every --set applied. With a prep folder (train, tune,
    federated), --config defaults to the prep folder's own, and its data and preprocess sections always come from
    there, since they were applied there; without one (init, preprocess), --config defaults to the defaults."""
    if prep is None:
        return load_config(config, overrides)
    from . import artifacts

    prep_cfg_path = Path(prep) / artifacts.CONFIG
    artifacts.Folder(Path(prep), "prep").manifest()
    prep_cfg = load_config(prep_cfg_path)
    cfg = load_config(config or prep_cfg_path, overrides)
    return cfg.model_copy(update={"data": prep_cfg.data, "preprocess": prep_cfg.preprocess})


def with_overrides(cfg: Config, overrides: Sequence[str], source: str = "config") -> Config:
    """A resolved config with more `key.path=value` overrides (tune's trials); data and preprocess stay as they
    are, since a prep folder applied them."""
    raw = cfg.model_dump(mode="json")
    for item in overrides:
        apply_override(raw, item)
    return validate(raw, source).model_copy(update={"data": cfg.data, "preprocess": cfg.preprocess})


def validate(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{source}: {_describe(e)}") from None


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one `--set a.b.c=value` (value parsed as YAML) to a raw config dict."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=20")
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"--set {key}: '{part}' is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = parse_yaml(value, f"--set {key}")
            else:
                node = node[int(part)]
            continue
        if last:
            node[part] = parse_yaml(value, f"--set {key}")
        else:
            if node.get(part) is None:  # an absent or switched-off (null) section, e.g. train.privacy
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict | list):
                raise ConfigError(f"--set {key}: '{'.'.join(parts[: i + 1])}' is not a section")


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config document as {dotted key: value} (`train.optimizer.name`), for comparing configs."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section at `loc`, for 'did you mean' suggestions."""
    model: Any = Config
    for p in loc:
        field = getattr(model, "model_fields", {}).get(p)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _describe(e: ValidationError) -> str:
    msgs: list[str] = []
    for err in e.errors():
        # drop pydantic's union-branch markers such as 'literal[...]' or 'dict[str,float]'
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (
            "[" in p or p.startswith(("function-", "constrained-")))))
        key = _dotted(loc) or "(top level)"
        if any(m.startswith(f"{key}:") for m in msgs):
            continue
        if err["type"] == "extra_forbidden":
            near = difflib.get_close_matches(str(loc[-1]), _fields_at(loc[:-1]), n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; known keys: {', '.join(_fields_at(loc[:-1]))}"
            msgs.append(f"unknown key '{key}'{hint}")
            continue
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) else f", got {got!r}"
        msgs.append(f"{key}: {msg}{shown}")
    return "; ".join(dict.fromkeys(msgs))
