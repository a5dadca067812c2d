"""TrainingJob: one distributed training run (short name `tj`).

The trainer reads this spec as its configuration (`TrainingJobSpec.model_validate(...)` or
`TrainingJob.model_validate(...)` for the full object); the operator parses every object
through it; the CRD schema is generated from it. docs/api.md is the field map.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from coxswain.api.common import (
    DEFAULT_CANARY_PERCENT,
    ApiModel,
    Conditions,
    DnsLabel,
    DnsSubdomain,
    EnvVar,
    Image,
    ObjectMeta,
    Quantity,
    RepositoryVolume,
    SecretKeyRef,
    Toleration,
    TrainingResources,
    VersionName,
    VolumeSource,
    object_name_rule,
)
from coxswain.api.conditions import TrainingJobPhase
from coxswain.api.rules import CelRule, RuleReason, immutable

DEFAULT_TRAINER_IMAGE = "ghcr.io/coxswain-dev/trainer:0.1.0"
MAX_NODES = 1024
# Attempts (first run plus every restart, charged or not) a TrainingJob may make: each names
# a batch Job "<name>-<attempt>" whose pods' hostnames "<name>-<attempt>-<rank>" must be DNS
# labels of at most 63 characters. The name's bound leaves room for both.
MAX_ATTEMPTS = 9999
MAX_NAME_LENGTH = 63 - len(f"-{MAX_ATTEMPTS}-{MAX_NODES - 1}")
DEFAULT_CHECKPOINT_SIZE = "1Gi"


class BuiltinModel(StrEnum):
    """Architectures built into the trainer."""

    LINEAR = "linear"
    MLP = "mlp"
    CNN = "cnn"


class BuiltinDataset(StrEnum):
    """Datasets the trainer ships with (no download needed)."""

    DIGITS = "digits"
    DIABETES = "diabetes"
    SYNTHETIC_REGRESSION = "synthetic-regression"


LayerWidth = Annotated[int, Field(ge=1, le=65536)]


class BuiltinTask(ApiModel):
    """A model and dataset built into the trainer."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.model != 'cnn' || self.dataset == 'digits'",
            message="model cnn needs an image dataset: dataset must be digits",
            field_path=".dataset",
            check=lambda m: m.model != BuiltinModel.CNN or m.dataset == BuiltinDataset.DIGITS,
        ),
        CelRule(
            rule="self.model != 'linear' || self.dropout == 0.0",
            message="dropout applies to mlp and cnn only; leave it at 0 for model linear",
            field_path=".dropout",
            reason=RuleReason.FORBIDDEN,
            check=lambda m: m.model != BuiltinModel.LINEAR or m.dropout == 0.0,
        ),
    )

    model: BuiltinModel = Field(description="Architecture: linear, mlp or cnn.")
    dataset: BuiltinDataset = Field(
        description="Dataset: digits (8x8 images, 10 classes), diabetes (regression) or "
        "synthetic-regression (generated from seed)."
    )
    hidden_sizes: list[LayerWidth] = Field(
        default=[128, 64],
        min_length=1,
        max_length=16,
        description="Hidden layer widths of the mlp, and of the cnn's dense head; each 1..65536, at most 16.",
    )
    channels: list[LayerWidth] = Field(
        default=[16, 32],
        min_length=1,
        max_length=8,
        description="Output channels of the cnn's convolution layers; at most 8.",
    )
    dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Dropout probability in [0, 1); mlp and cnn only."
    )
    standardize: bool = Field(
        default=True, description="Standardise features, fitted on the training split only."
    )
    synthetic_samples: int = Field(
        default=1000, ge=10, le=10_000_000, description="Samples generated for synthetic-regression."
    )
    synthetic_features: int = Field(
        default=8, ge=1, le=4096, description="Features generated for synthetic-regression."
    )


class CustomTask(ApiModel):
    """The user's own Python module, importable in the trainer image."""

    module: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        description="Dotted module name providing build_model(config), "
        "build_datasets(config) -> (train, eval) and loss_fn(config).",
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form configuration passed to the module's functions.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class Task(ApiModel):
    """What to train: exactly one of `builtin` or `custom`."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.builtin) != has(self.custom)",
            message="exactly one of builtin or custom must be set",
            check=lambda m: (m.builtin is None) != (m.custom is None),
        ),
    )

    builtin: BuiltinTask | None = Field(
        default=None, description="A model and dataset built into the trainer."
    )
    custom: CustomTask | None = Field(default=None, description="Your own module in the trainer image.")


class Backend(StrEnum):
    """torch.distributed backend."""

    AUTO = "auto"
    NCCL = "nccl"
    GLOO = "gloo"


class GradientDescent(StrEnum):
    """How many samples each optimizer step sees."""

    FULL_BATCH = "fullBatch"
    MINI_BATCH = "miniBatch"
    PER_SAMPLE = "perSample"


class Strategy(StrEnum):
    """How the model is spread over the ranks."""

    DDP = "ddp"
    FSDP = "fsdp"


class CheckpointAccessMode(StrEnum):
    """Access mode of the operator-made checkpoint claim."""

    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_WRITE_MANY = "ReadWriteMany"


class Precision(StrEnum):
    """Arithmetic of the forward and backward passes (weights and optimizer state stay fp32)."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class OptimizerName(StrEnum):
    """Optimizer algorithm."""

    SGD = "sgd"
    ADAM = "adam"
    ADAMW = "adamw"


class Optimizer(ApiModel):
    """Optimizer and its hyper-parameters."""

    name: OptimizerName = Field(default=OptimizerName.ADAM, description="sgd, adam or adamw.")
    learning_rate: float = Field(default=0.001, gt=0.0, le=10.0, description="Peak learning rate, (0, 10].")
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0, description="Momentum in [0, 1); sgd only.")
    weight_decay: float = Field(
        default=0.0, ge=0.0, le=1.0, description="L2 penalty (decoupled for adamw), [0, 1]."
    )
    betas: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        default=[0.9, 0.999],
        min_length=2,
        max_length=2,
        description="Adam's [beta1, beta2], each in [0, 1); adam and adamw only.",
    )


class ScheduleType(StrEnum):
    """Learning-rate schedule after warm-up."""

    CONSTANT = "constant"
    STEP = "step"
    COSINE = "cosine"


class Schedule(ApiModel):
    """Learning-rate schedule."""

    type: ScheduleType = Field(default=ScheduleType.CONSTANT, description="constant, step or cosine.")
    warmup_steps: int = Field(
        default=0, ge=0, le=10_000_000, description="Linear warm-up steps from 0; combines with any type."
    )
    step_size: int = Field(default=100, ge=1, description="step: multiply by gamma every stepSize steps.")
    gamma: float = Field(default=0.1, gt=0.0, le=1.0, description="step: decay factor, (0, 1].")
    min_learning_rate: float = Field(default=0.0, ge=0.0, description="cosine: floor of the learning rate.")


class Optimization(ApiModel):
    """How the model is optimised."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.schedule.minLearningRate < self.optimizer.learningRate",
            message="schedule.minLearningRate must be below optimizer.learningRate",
            field_path=".schedule.minLearningRate",
            check=lambda m: m.schedule.min_learning_rate < m.optimizer.learning_rate,
        ),
    )

    gradient_descent: GradientDescent = Field(
        default=GradientDescent.MINI_BATCH,
        description="fullBatch (whole training split per step), miniBatch (batchSize per step) or "
        "perSample (batch size 1 per process).",
    )
    batch_size: int = Field(
        default=64, ge=1, le=1_048_576, description="GLOBAL batch size across all processes (miniBatch)."
    )
    epochs: int = Field(default=10, ge=1, le=100_000, description="Passes over the training split.")
    max_steps: int | None = Field(default=None, ge=1, description="Optional cap on optimizer steps.")
    optimizer: Optimizer = Field(default=Optimizer(), description="Optimizer and hyper-parameters.")
    schedule: Schedule = Field(default=Schedule(), description="Learning-rate schedule.")
    gradient_accumulation_steps: int = Field(
        default=1, ge=1, le=1024, description="Micro-batches accumulated per optimizer step."
    )
    gradient_clip_norm: float | None = Field(default=None, gt=0.0, description="Optional gradient norm clip.")
    strategy: Strategy = Field(
        default=Strategy.DDP,
        description="ddp (every rank holds the whole model) or fsdp (parameters, gradients and optimizer "
        "state sharded across ranks; needs a checkpoint volume every rank can write).",
    )
    precision: Precision = Field(
        default=Precision.FP32,
        description="fp32, bf16 (mixed precision) or fp16 (mixed precision with a gradient scaler; "
        "needs resources.gpus > 0).",
    )


class EvalMetric(StrEnum):
    """Metric watched by early stopping."""

    EVAL_LOSS = "eval_loss"
    ACCURACY = "accuracy"
    MSE = "mse"
    R2 = "r2"


class MetricMode(StrEnum):
    """Whether a smaller or a larger metric is better."""

    MIN = "min"
    MAX = "max"


# The direction in which each metric improves; early stopping must agree with it.
METRIC_MODE: dict[EvalMetric, MetricMode] = {
    EvalMetric.EVAL_LOSS: MetricMode.MIN,
    EvalMetric.MSE: MetricMode.MIN,
    EvalMetric.ACCURACY: MetricMode.MAX,
    EvalMetric.R2: MetricMode.MAX,
}


class EarlyStopping(ApiModel):
    """Stop when the metric has not improved for `patience` evaluations."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="(self.metric in ['accuracy', 'r2']) == (self.mode == 'max')",
            message="mode must be max for metric accuracy or r2, and min for eval_loss or mse",
            field_path=".mode",
            check=lambda m: METRIC_MODE[m.metric] == m.mode,
        ),
    )

    metric: EvalMetric = Field(default=EvalMetric.EVAL_LOSS, description="eval_loss, accuracy, mse or r2.")
    mode: MetricMode = Field(
        default=MetricMode.MIN, description="min (eval_loss, mse) or max (accuracy, r2); must match metric."
    )
    patience: int = Field(default=3, ge=1, le=10_000, description="Evaluations without improvement, >= 1.")
    min_delta: float = Field(default=0.0, ge=0.0, description="Smallest change that counts as improvement.")


class Evaluation(ApiModel):
    """Held-out evaluation."""

    split: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="Fraction of the data held out, strictly between 0 and 1."
    )
    interval_steps: int | None = Field(
        default=None, ge=1, description="Evaluate every N optimizer steps; default: end of each epoch."
    )
    early_stopping: EarlyStopping | None = Field(default=None, description="Optional early stopping.")


class Checkpoint(ApiModel):
    """Checkpoints: resume after a restart without user action.

    Without `volume`, the operator makes one PersistentVolumeClaim per TrainingJob (named
    `<name>-checkpoints`, owned by the TrainingJob: kept across attempts, deleted with it) of
    `size` from `storageClassName` or the cluster's default StorageClass. One pod template serves
    every node of the gang, so a multi-node gang gets the claim only with `accessMode:
    ReadWriteMany` (every pod mounts it); with the default ReadWriteOnce it runs on an emptyDir
    and `CheckpointsDurable=False` says so.
    """

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.volume) || !has(self.storageClassName)",
            message="storageClassName applies to the volume the operator makes; leave it out with volume",
            field_path=".storageClassName",
            reason=RuleReason.FORBIDDEN,
            check=lambda m: m.volume is None or m.storage_class_name is None,
        ),
        CelRule(
            rule="!has(self.volume) || !has(self.accessMode)",
            message="accessMode applies to the volume the operator makes; leave it out with volume",
            field_path=".accessMode",
            reason=RuleReason.FORBIDDEN,
            check=lambda m: m.volume is None or m.access_mode is None,
        ),
    )

    interval_steps: int = Field(
        default=100, ge=1, description="Checkpoint every N steps; also at the end and on SIGTERM."
    )
    keep: int = Field(default=3, ge=1, le=100, description="Newest checkpoints kept, 1..100.")
    volume: VolumeSource | None = Field(
        default=None,
        description="Bring your own volume for checkpoints. Default: a PersistentVolumeClaim the operator "
        "makes per TrainingJob (survives restarts). An emptyDir survives container restarts only.",
    )
    storage_class_name: DnsSubdomain | None = Field(
        default=None,
        description="StorageClass of the operator-made claim; default: the cluster's default StorageClass.",
    )
    size: Quantity = Field(
        default=DEFAULT_CHECKPOINT_SIZE, description="Size of the operator-made claim; default 1Gi."
    )
    access_mode: CheckpointAccessMode | None = Field(
        default=None,
        description="Access mode of the operator-made claim; default ReadWriteOnce (only node rank 0 "
        "reads and writes checkpoints). ReadWriteMany (the StorageClass must provide it) lets every pod "
        "of a gang with nodes > 1 mount the claim; without it such a gang runs on an emptyDir.",
    )


class Encryption(ApiModel):
    """AES-256-GCM encryption of the exported files."""

    key_secret_ref: SecretKeyRef = Field(description="Secret key holding the 32-byte key.")


class Export(ApiModel):
    """Export the trained model to a versioned model repository."""

    repository: RepositoryVolume = Field(description="Volume holding the repository, mounted at /models.")
    model_name: DnsLabel | None = Field(default=None, description="Model name; default: metadata.name.")
    version: VersionName | None = Field(
        default=None,
        description='Version; default: next free "v<N>". An existing version is never overwritten.',
    )
    encryption: Encryption | None = Field(default=None, description="Optional encryption of the files.")


class FailureCause(StrEnum):
    """Why an attempt ended, as the operator classifies it."""

    USER_ERROR = "UserError"
    OOM_KILLED = "OOMKilled"
    EVICTED = "Evicted"
    NODE_LOST = "NodeLost"
    PREEMPTED = "Preempted"


class FailureAction(StrEnum):
    """What the operator does about a failure."""

    RESTART = "Restart"
    RESTART_WITHOUT_CHARGE = "RestartWithoutCharge"
    FAIL = "Fail"


class FailureRule(ApiModel):
    """Maps a failure cause (and for UserError, optionally exit codes) to an action."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.exitCodes) || self.cause == 'UserError'",
            message="exitCodes is allowed only with cause UserError",
            field_path=".exitCodes",
            reason=RuleReason.FORBIDDEN,
            check=lambda m: m.exit_codes is None or m.cause == FailureCause.USER_ERROR,
        ),
    )

    cause: FailureCause = Field(description="UserError, OOMKilled, Evicted, NodeLost or Preempted.")
    action: FailureAction = Field(description="Restart (charged), RestartWithoutCharge or Fail.")
    exit_codes: list[Annotated[int, Field(ge=1, le=255)]] | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="UserError only: match only these exit codes (1..255).",
    )


DEFAULT_FAILURE_RULES: list[FailureRule] = [
    FailureRule(cause=FailureCause.USER_ERROR, action=FailureAction.RESTART),
    FailureRule(cause=FailureCause.OOM_KILLED, action=FailureAction.RESTART),
    FailureRule(cause=FailureCause.EVICTED, action=FailureAction.RESTART_WITHOUT_CHARGE),
    FailureRule(cause=FailureCause.NODE_LOST, action=FailureAction.RESTART_WITHOUT_CHARGE),
    FailureRule(cause=FailureCause.PREEMPTED, action=FailureAction.RESTART_WITHOUT_CHARGE),
]


class FailurePolicy(ApiModel):
    """Whole-gang restarts: budget, back-off and what each failure cause does."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.backoffSeconds <= self.maxBackoffSeconds",
            message="backoffSeconds must not exceed maxBackoffSeconds",
            field_path=".backoffSeconds",
            check=lambda m: m.backoff_seconds <= m.max_backoff_seconds,
        ),
    )

    max_restarts: int = Field(default=3, ge=0, le=1000, description="Charged whole-gang restarts, 0..1000.")
    backoff_seconds: int = Field(
        default=10,
        ge=0,
        le=86_400,
        description="First back-off; doubles per restart up to maxBackoffSeconds.",
    )
    max_backoff_seconds: int = Field(default=300, ge=0, le=86_400, description="Back-off cap.")
    rules: list[FailureRule] = Field(
        default=DEFAULT_FAILURE_RULES,
        max_length=32,
        description="First match wins. Default: UserError and OOMKilled restart (charged); Evicted, "
        "NodeLost and Preempted restart without charge.",
    )


class CleanPodPolicy(StrEnum):
    """What to delete when the job finishes."""

    ALL = "All"
    NONE = "None"


class Stall(ApiModel):
    """Stall detection."""

    timeout_seconds: int = Field(
        default=600, ge=30, le=604_800, description="No new step for this long sets Stalled; >= 30."
    )
    restart: bool = Field(default=False, description="Also restart the gang (charged as UserError).")


class Rollout(StrEnum):
    """How a new model version reaches a ModelService."""

    CANARY = "canary"
    STABLE = "stable"


class Serving(ApiModel):
    """Train -> serve handoff: roll the exported version into a ModelService on success."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.canaryPercent) || self.rollout == 'canary'",
            message="canaryPercent is allowed only with rollout canary",
            field_path=".canaryPercent",
            reason=RuleReason.FORBIDDEN,
            check=lambda m: m.canary_percent is None or m.rollout == Rollout.CANARY,
        ),
    )

    model_service: DnsSubdomain = Field(description="Name of a ModelService in the same namespace.")
    rollout: Rollout = Field(
        default=Rollout.CANARY, description="canary (new version gets canaryPercent) or stable (replace)."
    )
    canary_percent: int | None = Field(
        default=None, ge=1, le=99, description="Canary traffic, 1..99; rollout canary only; default 10."
    )

    @property
    def effective_canary_percent(self) -> int | None:
        """Traffic the new version gets: None for rollout stable, else canaryPercent or 10."""
        if self.rollout != Rollout.CANARY:
            return None
        return self.canary_percent if self.canary_percent is not None else DEFAULT_CANARY_PERCENT


class Ports(ApiModel):
    """Container ports of the training pods."""

    metrics: int = Field(default=9400, ge=1, le=65535, description="Rank 0's /metrics and /progress.")
    rendezvous: int = Field(default=29400, ge=1, le=65535, description="torchrun c10d rendezvous.")


_IMMUTABLE = ("task", "backend", "resources", "image", "optimization")
# The gang's shape: changeable while suspended, when it makes a new attempt (a Job's pods
# cannot change shape) that resumes from the last checkpoint on the new world size.
_RESIZABLE = ("nodes", "procsPerNode")
# Attempts whose shape status.attempts keeps (the newest).
MAX_ATTEMPT_RECORDS = 32
_IMMUTABLE_DEFAULTED = ("evaluation", "checkpoint", "seed")


class TrainingJobSpec(ApiModel):
    """Desired state of a TrainingJob: what to train, on which gang, and how."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.backend != 'nccl' || self.resources.gpus > 0",
            message="backend nccl requires resources.gpus > 0; use gloo or auto on CPU",
            field_path=".backend",
            check=lambda m: m.backend != Backend.NCCL or m.resources.gpus > 0,
        ),
        CelRule(
            rule="self.optimization.precision != 'fp16' || self.resources.gpus > 0",
            message="optimization.precision fp16 requires resources.gpus > 0; use bf16 or fp32 on CPU",
            field_path=".optimization.precision",
            check=lambda m: m.optimization.precision != Precision.FP16 or m.resources.gpus > 0,
        ),
        CelRule(
            rule="self.optimization.strategy != 'fsdp' || self.nodes == 1 || "
            "(has(self.checkpoint.volume) && has(self.checkpoint.volume.persistentVolumeClaim)) || "
            "(has(self.checkpoint.accessMode) && self.checkpoint.accessMode == 'ReadWriteMany')",
            message="optimization.strategy fsdp writes one checkpoint shard per rank, so every rank must "
            "reach the checkpoint volume: with nodes > 1 set checkpoint.accessMode ReadWriteMany or "
            "checkpoint.volume.persistentVolumeClaim (a ReadWriteMany claim), or use strategy ddp",
            field_path=".optimization.strategy",
            check=lambda m: (
                m.optimization.strategy != Strategy.FSDP
                or m.nodes == 1
                or (
                    m.checkpoint.volume is not None
                    and m.checkpoint.volume.persistent_volume_claim is not None
                )
                or m.checkpoint.access_mode == CheckpointAccessMode.READ_WRITE_MANY
            ),
        ),
        *(immutable(f) for f in _IMMUTABLE + _IMMUTABLE_DEFAULTED),
        immutable("export", optional=True),
        immutable("queueName", optional=True),
        immutable("priorityClassName", optional=True),
        *(
            CelRule(
                rule=f"oldSelf.suspend || self.{f} == oldSelf.{f}",
                message=f"{f} can change only while the job is suspended (spec.suspend true): the next "
                "attempt then runs the new gang and resumes from the last checkpoint",
                field_path=f".{f}",
            )
            for f in _RESIZABLE
        ),
        CelRule(
            rule="oldSelf.nodes != 1 || self.nodes == 1 || has(self.checkpoint.volume) || "
            "(has(self.checkpoint.accessMode) && self.checkpoint.accessMode == 'ReadWriteMany')",
            message="nodes can grow past 1 only with checkpoint.volume or checkpoint.accessMode "
            "ReadWriteMany: a gang of more than one node cannot mount the operator's ReadWriteOnce claim, so "
            "the resized job would start again from step 0; create a new TrainingJob instead",
            field_path=".nodes",
        ),
        CelRule(
            rule="oldSelf.suspend || self.nodeSelector == oldSelf.nodeSelector",
            message="nodeSelector can change only while the job is suspended (spec.suspend true)",
            field_path=".nodeSelector",
        ),
        CelRule(
            rule="oldSelf.suspend || self.tolerations == oldSelf.tolerations",
            message="tolerations can change only while the job is suspended (spec.suspend true)",
            field_path=".tolerations",
        ),
    )

    image: Image = Field(default=DEFAULT_TRAINER_IMAGE, description="Trainer container image.")
    task: Task = Field(description="What to train: exactly one of builtin or custom.")
    seed: int = Field(
        default=0, ge=0, le=2**32 - 1, description="Seeds the split, initialisation and sampler."
    )
    nodes: int = Field(
        default=1,
        ge=1,
        le=MAX_NODES,
        description="Pods in the gang (one per node), 1..1024; changeable only while suspended (the next "
        "attempt resumes from the last checkpoint on the new world size).",
    )
    procs_per_node: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes per pod (torchrun), 1..64; changeable only while suspended, as nodes.",
    )
    backend: Backend = Field(
        default=Backend.AUTO, description="auto (nccl with GPUs, else gloo), nccl (needs gpus > 0) or gloo."
    )
    resources: TrainingResources = Field(default=TrainingResources(), description="Resources of each pod.")
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        description="Node labels the pods require; changeable only while suspended.",
        max_length=64,
        json_schema_extra={"default": {}},
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=64,
        description="Taints the pods tolerate; changeable only while suspended.",
        json_schema_extra={"default": []},
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        description="Extra environment for the trainer; reserved names are refused.",
        json_schema_extra={"default": []},
    )
    optimization: Optimization = Field(default=Optimization(), description="Optimisation settings.")
    evaluation: Evaluation = Field(default=Evaluation(), description="Held-out evaluation.")
    checkpoint: Checkpoint = Field(default=Checkpoint(), description="Checkpointing and resume.")
    export: Export | None = Field(default=None, description="Optional export to a model repository.")
    failure_policy: FailurePolicy = Field(default=FailurePolicy(), description="Restart budget and rules.")
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Running time across attempts before the job fails."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the TrainingJob this long after it finished."
    )
    suspend: bool = Field(
        default=False, description="true: pods go, progress and checkpoints stay (Kueue-style admission)."
    )
    queue_name: DnsLabel | None = Field(
        default=None,
        description="Kueue LocalQueue in this namespace: Kueue admits the whole gang against quota "
        "and may preempt it (checkpoint and requeue, never charged). Unset: no Kueue.",
    )
    priority_class_name: DnsSubdomain | None = Field(
        default=None,
        description="PriorityClass of the pods; Kueue reads it as the workload's priority.",
    )
    clean_pod_policy: CleanPodPolicy = Field(
        default=CleanPodPolicy.ALL, description="All or None: what to delete when the job finishes."
    )
    stall: Stall = Field(default=Stall(), description="Stall detection.")
    serving: Serving | None = Field(default=None, description="Optional handoff to a ModelService.")
    ports: Ports = Field(default=Ports(), description="Container ports.")


class ProgressState(StrEnum):
    """What rank 0 is doing."""

    STARTING = "starting"
    TRAINING = "training"
    EVALUATING = "evaluating"
    CHECKPOINTING = "checkpointing"
    EXPORTING = "exporting"
    FINISHED = "finished"
    FAILED = "failed"


class Progress(ApiModel):
    """Live progress pulled from rank 0's /progress endpoint."""

    step: int | None = Field(default=None, ge=0, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, ge=0, description="Optimizer steps planned.")
    percent: float | None = Field(default=None, ge=0, le=100, description="step / totalSteps * 100.")
    epoch: int | None = Field(default=None, ge=0, description="Current epoch.")
    train_loss: float | None = Field(default=None, description="Latest training loss.")
    eval_metric: float | None = Field(default=None, description="Latest evaluation metric.")
    eval_metric_name: str | None = Field(default=None, max_length=64, description="Name of evalMetric.")
    samples_per_second: float | None = Field(default=None, ge=0, description="Training throughput.")
    eta_seconds: float | None = Field(default=None, ge=0, description="Estimated time left.")
    last_update_time: datetime | None = Field(default=None, description="When progress last changed.")
    state: ProgressState | None = Field(default=None, description="What rank 0 is doing.")
    world_size: int | None = Field(default=None, ge=1, description="Processes training in this attempt.")
    strategy: Strategy | None = Field(default=None, description="ddp or fsdp, as the trainer runs it.")
    precision: Precision | None = Field(
        default=None, description="fp32, bf16 or fp16, as the trainer runs it."
    )


class LastFailure(ApiModel):
    """The most recent failed attempt."""

    cause: str = Field(max_length=64, description="Classified cause (a FailureCause, or Stalled/Unknown).")
    attempt: int = Field(ge=1, description="Attempt that failed.")
    message: str = Field(default="", max_length=32768, description="What happened.")
    time: datetime | None = Field(default=None, description="When it was observed.")


class LastCheckpoint(ApiModel):
    """The newest checkpoint written."""

    step: int = Field(ge=0, description="Step of the checkpoint.")
    path: str = Field(max_length=4096, description="Path inside the checkpoint volume.")
    time: datetime | None = Field(default=None, description="When it was written.")


class ExportedModel(ApiModel):
    """The model version this job exported."""

    uri: str = Field(max_length=2048, description="URI of the version in the model repository.")
    model_name: str = Field(max_length=63, description="Model name.")
    version: str = Field(max_length=63, description="Version.")


class AttemptRecord(ApiModel):
    """The gang one attempt ran (or runs): recorded when its Job is made."""

    attempt: int = Field(ge=1, description="Attempt number.")
    nodes: int = Field(ge=1, description="Pods of the attempt.")
    procs_per_node: int = Field(ge=1, description="Processes per pod.")
    world_size: int = Field(ge=1, description="nodes x procsPerNode: processes training.")
    resumed_from_step: int | None = Field(
        default=None,
        ge=0,
        description="Checkpoint step the attempt resumed from (absent: step 0 or unknown).",
    )


class TrainingJobStatus(ApiModel):
    """Observed state of a TrainingJob, recomputed on every reconcile."""

    phase: TrainingJobPhase | None = Field(default=None, description="Pending, Queued, Running, ...")
    conditions: Conditions = Field(
        default_factory=list,
        description="Created, Queued, Running, Restarting, Succeeded, Failed, Suspended, Stalled.",
    )
    observed_generation: int | None = Field(default=None, ge=0, description="Generation last acted on.")
    attempt: int | None = Field(default=None, ge=1, description="Current attempt, starting at 1.")
    restarts: int | None = Field(default=None, ge=0, description="Restarts charged to the budget.")
    uncounted_restarts: int | None = Field(default=None, ge=0, description="Restarts not charged.")
    preemptions: int | None = Field(
        default=None, ge=0, description="Times Kueue evicted the admitted gang (never charged)."
    )
    last_failure: LastFailure | None = Field(default=None, description="Most recent failure.")
    last_checkpoint: LastCheckpoint | None = Field(default=None, description="Newest checkpoint.")
    resumed_from_step: int | None = Field(
        default=None, ge=0, description="Step the current attempt resumed from (absent: it started at 0)."
    )
    attempts: list[AttemptRecord] = Field(
        default_factory=list,
        max_length=MAX_ATTEMPT_RECORDS,
        description=f"The gang of each attempt, oldest first (the newest {MAX_ATTEMPT_RECORDS} are kept).",
    )
    start_time: datetime | None = Field(default=None, description="When the first attempt started.")
    completion_time: datetime | None = Field(default=None, description="When the job finished.")
    exported_model: ExportedModel | None = Field(default=None, description="Exported model version.")
    progress: Progress | None = Field(default=None, description="Live training progress.")


class TrainingJob(ApiModel):
    """One distributed PyTorch training run across a gang of pods."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        object_name_rule(
            MAX_NAME_LENGTH,
            f"pods are named '<name>-<attempt>-<rank>' (up to {MAX_ATTEMPTS} attempts, {MAX_NODES} nodes)",
        ),
    )

    api_version: Literal["coxswain.dev/v1alpha1"] = Field(
        default="coxswain.dev/v1alpha1", description="coxswain.dev/v1alpha1"
    )
    kind: Literal["TrainingJob"] = Field(default="TrainingJob", description="TrainingJob")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: TrainingJobSpec = Field(description="Desired state.")
    status: TrainingJobStatus | None = Field(default=None, description="Observed state.")
