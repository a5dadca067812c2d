"""ModelService: one served model (short name `ms`), scaled by load, with canary versions."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal

from pydantic import Field

from coxswain.api.common import (
    DEFAULT_CANARY_PERCENT,
    ApiModel,
    Conditions,
    DnsSubdomain,
    Image,
    ObjectMeta,
    RepositoryVolume,
    SecretKeyRef,
    ServingResources,
    Toleration,
    VersionName,
    object_name_rule,
)
from coxswain.api.rules import CelRule, RuleReason

DEFAULT_SERVER_IMAGE = "ghcr.io/coxswain-dev/server:0.1.0"


class TrainingJobRef(ApiModel):
    """A TrainingJob in the same namespace whose exported model is served."""

    name: DnsSubdomain = Field(description="Name of the TrainingJob.")


class ModelSource(ApiModel):
    """Which model to serve: exactly one of `uri` or `trainingJobRef`."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.uri) != has(self.trainingJobRef)",
            message="exactly one of uri or trainingJobRef must be set",
            check=lambda m: (m.uri is None) != (m.training_job_ref is None),
        ),
    )

    uri: str | None = Field(
        default=None,
        min_length=1,
        max_length=2048,
        pattern=r"^[a-z][a-z0-9+.-]*://\S+$",
        description="<repository>/<model> in the model repository, e.g. pvc://models/digits-cnn; "
        "versions live below it.",
    )
    training_job_ref: TrainingJobRef | None = Field(
        default=None, description="Serve what this TrainingJob exported."
    )


class Batching(ApiModel):
    """Dynamic batching of concurrent requests."""

    max_batch_size: int = Field(default=32, ge=1, le=4096, description="Largest batch, 1..4096.")
    max_latency_ms: float = Field(
        default=2.0, ge=0.0, le=1000.0, description="Longest wait to fill a batch in ms, 0..1000."
    )


class AutoscalingMode(StrEnum):
    """Who sets the replica count."""

    BUILTIN = "builtin"
    HPA = "hpa"
    NONE = "none"


class ScaleMetric(StrEnum):
    """Load signal the autoscaler follows."""

    INFLIGHT = "inflight"
    RPS = "rps"


class ScaleTarget(ApiModel):
    """Target load per replica."""

    metric: ScaleMetric = Field(
        default=ScaleMetric.INFLIGHT, description="inflight (requests in flight) or rps (requests/s)."
    )
    value: float = Field(default=8.0, gt=0.0, le=1_000_000.0, description="Target per replica, > 0.")


class Autoscaling(ApiModel):
    """Replica bounds and target; `hpa` hands scaling to an HPA via the scale subresource."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="self.minReplicas <= self.maxReplicas",
            message="minReplicas must be less than or equal to maxReplicas",
            field_path=".minReplicas",
            check=lambda m: m.min_replicas <= m.max_replicas,
        ),
    )

    mode: AutoscalingMode = Field(default=AutoscalingMode.BUILTIN, description="builtin, hpa or none.")
    min_replicas: int = Field(default=1, ge=0, le=1000, description="Fewest replicas, 0..1000.")
    max_replicas: int = Field(default=4, ge=1, le=1000, description="Most replicas, 1..1000.")
    target: ScaleTarget = Field(default=ScaleTarget(), description="Target load per replica.")
    scale_down_delay_seconds: int = Field(
        default=60, ge=0, le=86_400, description="Load must stay low this long before scaling down."
    )


AnalysisStep = Annotated[int, Field(ge=1, le=100)]


class CanaryAnalysis(ApiModel):
    """Automatic analysis: promote the canary step by step, or roll it back."""

    interval_seconds: int = Field(default=30, ge=5, le=86_400, description="Time between analyses.")
    max_error_rate_increase: float = Field(
        default=0.01, ge=0.0, le=1.0, description="Tolerated canary error rate above stable, 0..1."
    )
    max_p99_ratio: float = Field(
        default=1.5, ge=1.0, le=100.0, description="Tolerated canary p99 latency / stable p99."
    )
    steps: list[AnalysisStep] = Field(
        default=[10, 25, 50, 100],
        min_length=1,
        max_length=20,
        description="Canary traffic percentages to walk through; 100 promotes.",
    )
    min_requests: int = Field(default=50, ge=0, description="Requests needed before a step is judged.")

    def first_step(self, canary_percent: int | None) -> int:
        """The step a new canary starts at: the first at or above canaryPercent (the user's
        starting traffic), else step 0."""
        if canary_percent is None:
            return 0
        for i, pct in enumerate(self.steps):
            if pct >= canary_percent:
                return i
        return len(self.steps) - 1


class Versions(ApiModel):
    """Model versions served and the traffic split between them."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="!has(self.canaryPercent) || has(self.canary)",
            message="canaryPercent is allowed only together with canary",
            field_path=".canaryPercent",
            reason=RuleReason.FORBIDDEN,
            check=lambda m: m.canary_percent is None or m.canary is not None,
        ),
        CelRule(
            rule="!has(self.canary) || self.canary != self.stable",
            message="canary must differ from stable",
            field_path=".canary",
            check=lambda m: m.canary is None or m.canary != m.stable,
        ),
        CelRule(
            rule="!has(self.analysis) || has(self.canary)",
            message="analysis is allowed only together with canary",
            field_path=".analysis",
            reason=RuleReason.FORBIDDEN,
            check=lambda m: m.analysis is None or m.canary is not None,
        ),
    )

    stable: VersionName = Field(description="Version that gets the rest of the traffic.")
    canary: VersionName | None = Field(default=None, description="Optional canary version.")
    canary_percent: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Traffic to the canary, 0..100; only with canary; default 10 (or the first analysis step).",
    )
    analysis: CanaryAnalysis | None = Field(default=None, description="Optional automatic canary analysis.")

    @property
    def effective_canary_percent(self) -> int:
        """Traffic a new canary starts with: 0 without one; with an analysis, its first step at
        or above canaryPercent; else canaryPercent, or 10."""
        if self.canary is None:
            return 0
        if self.analysis is not None:
            return self.analysis.steps[self.analysis.first_step(self.canary_percent)]
        if self.canary_percent is not None:
            return self.canary_percent
        return DEFAULT_CANARY_PERCENT


class ModelServiceSpec(ApiModel):
    """Desired state of a ModelService."""

    model: ModelSource = Field(description="Which model: exactly one of uri or trainingJobRef.")
    repository: RepositoryVolume | None = Field(
        default=None, description="Volume holding the model repository, mounted at /models."
    )
    image: Image = Field(default=DEFAULT_SERVER_IMAGE, description="Server container image.")
    resources: ServingResources = Field(default=ServingResources(), description="Resources of each pod.")
    batching: Batching = Field(default=Batching(), description="Dynamic batching.")
    max_queue_size: int = Field(
        default=1024, ge=1, le=1_000_000, description="Queued requests per pod before 503s."
    )
    auth_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Optional bearer token clients must send."
    )
    encryption_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Key for encrypted models."
    )
    replicas: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Desired replicas; written by the autoscaler or by the scale subresource (HPA).",
    )
    autoscaling: Autoscaling = Field(default=Autoscaling(), description="Autoscaling.")
    versions: Versions = Field(description="Versions served and their traffic split.")
    node_selector: dict[str, Annotated[str, Field(max_length=63)]] = Field(
        default_factory=dict,
        description="Node labels the server pods require (a GPU pool, say); a change rolls the pods.",
        max_length=64,
        json_schema_extra={"default": {}},
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=64,
        description="Taints the server pods tolerate (nvidia.com/gpu is added when gpus > 0).",
        json_schema_extra={"default": []},
    )


class VersionStatus(ApiModel):
    """One version served right now."""

    version: str = Field(max_length=63, description="Version name.")
    traffic_percent: int = Field(ge=0, le=100, description="Share of requests it gets.")
    ready: bool = Field(default=False, description="Loaded and answering on every ready pod.")


class Load(ApiModel):
    """Recent load over all replicas."""

    rps: float | None = Field(default=None, ge=0, description="Requests per second.")
    p99_ms: float | None = Field(default=None, ge=0, description="99th percentile latency, ms.")
    inflight: float | None = Field(default=None, ge=0, description="Requests in flight.")


class ScaleDecision(ApiModel):
    """The autoscaler's last change."""

    time: datetime | None = Field(default=None, description="When it decided.")
    from_: int = Field(alias="from", ge=0, description="Replicas before.")
    to: int = Field(ge=0, description="Replicas after.")
    reason: str = Field(default="", max_length=1024, description="Why.")


class CanaryPhase(StrEnum):
    """Where the canary analysis stands."""

    PROGRESSING = "Progressing"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"


class CanaryStatus(ApiModel):
    """Progress of the canary analysis."""

    phase: CanaryPhase | None = Field(default=None, description="Progressing, Promoted or RolledBack.")
    version: str | None = Field(
        default=None,
        max_length=63,
        description="Canary version this record is about; a new spec.versions.canary starts a new record.",
    )
    step: int | None = Field(default=None, ge=0, description="Index of the current analysis step.")
    message: str = Field(default="", max_length=32768, description="Detail.")


class ModelServiceStatus(ApiModel):
    """Observed state of a ModelService."""

    url: str | None = Field(default=None, max_length=2048, description="In-cluster URL of the service.")
    grpc_url: str | None = Field(
        default=None,
        max_length=2048,
        description="In-cluster gRPC target (host:port) of the service: the v2 protocol's "
        "inference.GRPCInferenceService, for tritonclient.grpc and KServe's InferenceGRPCClient.",
    )
    replicas: int | None = Field(default=None, ge=0, description="Pods that exist (scale subresource).")
    ready_replicas: int | None = Field(default=None, ge=0, description="Pods ready to answer.")
    selector: str | None = Field(
        default=None, max_length=4096, description="Label selector of the pods (scale subresource)."
    )
    versions: list[VersionStatus] = Field(
        default_factory=list,
        max_length=8,
        description="Versions served and their traffic.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["version"]},
    )
    conditions: Conditions = Field(
        default_factory=list, description="Ready, ModelLoaded, Progressing, Degraded."
    )
    observed_generation: int | None = Field(default=None, ge=0, description="Generation last acted on.")
    load: Load | None = Field(default=None, description="Recent load.")
    last_scale_decision: ScaleDecision | None = Field(default=None, description="Last scaling decision.")
    canary: CanaryStatus | None = Field(default=None, description="Canary analysis progress.")


# The longest suffix added to a ModelService's name: a ReplicaSet's "-<pod-template-hash>"
# (up to 10 characters); "-traffic" on the ConfigMap is shorter.
MAX_NAME_LENGTH = 63 - len("-") - 10


class ModelService(ApiModel):
    """One model served over HTTP, autoscaled, with optional canary versions."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        object_name_rule(
            MAX_NAME_LENGTH,
            "the Service and Deployment are named after it, and ReplicaSets and pods add '-<hash>'",
        ),
    )

    api_version: Literal["coxswain.dev/v1alpha1"] = Field(
        default="coxswain.dev/v1alpha1", description="coxswain.dev/v1alpha1"
    )
    kind: Literal["ModelService"] = Field(default="ModelService", description="ModelService")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard object metadata.")
    spec: ModelServiceSpec = Field(description="Desired state.")
    status: ModelServiceStatus | None = Field(default=None, description="Observed state.")
