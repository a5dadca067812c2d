"""Pieces shared by TrainingJob and ModelService: the base model, quantities, references,
volumes, resources, env, tolerations, conditions and object metadata."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from coxswain.api.rules import CelRule, RuleReason

# Kubernetes' own name rules, so a value that passes here also passes where it is used.
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Names that become Service names and pod hostnames: a DNS-1035 label (starts with a letter).
DNS_1035_LABEL_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Model versions are directory names in the model repository (same as coxswain.artifacts).
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
# A resource.Quantity: a decimal number with an optional binary or decimal suffix.
QUANTITY_PATTERN = r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$"
ZERO_QUANTITY_PATTERN = r"^[+]?(0+(\.0*)?|\.0+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$"
CAMEL_CASE_PATTERN = r"^[A-Z][A-Za-z0-9]*$"

# Canary traffic (percent) when neither the user nor an analysis says otherwise; used by
# ModelService.spec.versions and TrainingJob.spec.serving alike.
DEFAULT_CANARY_PERCENT = 10


def _schema_rules(schema: dict[str, Any], model_class: type[Any]) -> None:
    """Put a model's `rules` into its JSON schema, where the CRD generator finds them."""
    rules: tuple[CelRule, ...] = getattr(model_class, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.to_schema() for r in rules]


class ApiModel(BaseModel):
    """Base of every API model: camelCase in YAML, snake_case in Python, unknown keys refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=_schema_rules,
    )

    # Cross-field rules of this model (CEL for the API server, a Python twin for parsing).
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> Self:
        for rule in type(self).cel_rules:
            if rule.check is not None and not rule.check(self):
                raise ValueError(rule.message)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase keys, JSON types, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _quantity_to_str(value: Any) -> Any:
    # YAML users write `cpu: 1` as often as `cpu: "1"`; Kubernetes accepts both (int-or-string).
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _cel_string(text: str) -> str:
    """`text` as a single-quoted CEL string literal."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _positive_quantity(value: str) -> str:
    if re.fullmatch(ZERO_QUANTITY_PATTERN, value):
        raise ValueError("must be a positive quantity such as 500m, 2 or 4Gi, not zero")
    return value


# The API server ignores `pattern` on an int-or-string field, so the check is a CEL rule
# (on the string form, which also covers plain integers) with a Python twin.
POSITIVE_QUANTITY_RULE = CelRule(
    rule=f"string(self).matches({_cel_string(QUANTITY_PATTERN)}) "
    f"&& !string(self).matches({_cel_string(ZERO_QUANTITY_PATTERN)})",
    message="must be a positive Kubernetes quantity such as 500m, 2 or 4Gi",
)

Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    AfterValidator(_positive_quantity),
    Field(
        pattern=QUANTITY_PATTERN,
        max_length=64,
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [POSITIVE_QUANTITY_RULE.to_schema()],
        },
    ),
]
"""A positive Kubernetes resource quantity such as `500m`, `2`, `4Gi`."""

DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
DnsSubdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
VersionName = Annotated[str, Field(min_length=1, max_length=63, pattern=VERSION_PATTERN)]
Image = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^\S+$")]


def object_name_rule(max_length: int, why: str) -> CelRule:
    """A rule on a whole object keeping `metadata.name` a DNS-1035 label of at most `max_length`.

    The operator builds Service names and pod hostnames from the name, which must be DNS-1035
    labels of at most 63 characters; `why` names the suffixes the bound leaves room for.
    """
    pattern = DNS_1035_LABEL_PATTERN

    def check(model: Any) -> bool:
        name = model.metadata.name
        return name is None or (len(name) <= max_length and re.fullmatch(pattern, name) is not None)

    return CelRule(
        rule=f"self.metadata.name.size() <= {max_length} && self.metadata.name.matches({_cel_string(pattern)})",
        message=f"metadata.name must be a DNS-1035 label of at most {max_length} characters "
        f"(lowercase letters, digits and '-', starting with a letter, ending with a letter or digit): {why}",
        field_path=".metadata.name",
        check=check,
    )


class SecretKeyRef(ApiModel):
    """A key in a Secret in the object's own namespace."""

    name: DnsSubdomain = Field(description="Name of the Secret.")
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key inside the Secret whose value is used.",
    )


class PersistentVolumeClaimSource(ApiModel):
    """An existing PersistentVolumeClaim in the object's namespace."""

    claim_name: DnsSubdomain = Field(description="Name of the PersistentVolumeClaim.")
    read_only: bool = Field(default=False, description="Mount read-only.")


class StorageMedium(StrEnum):
    """Where an emptyDir lives."""

    DEFAULT = ""
    MEMORY = "Memory"


class EmptyDirSource(ApiModel):
    """A scratch directory that lives as long as the pod (survives container restarts only)."""

    medium: StorageMedium = Field(
        default=StorageMedium.DEFAULT,
        description='Storage medium: "" (node disk) or "Memory" (tmpfs).',
    )
    size_limit: Quantity | None = Field(default=None, description="Optional size limit, e.g. 1Gi.")


class HostPathSource(ApiModel):
    """A directory on the node. For single-node development clusters only."""

    path: str = Field(min_length=1, max_length=4096, pattern=r"^/", description="Absolute path on the node.")


_ONE_VOLUME = "exactly one of persistentVolumeClaim, emptyDir, hostPath must be set"
_ONE_REPOSITORY = "exactly one of persistentVolumeClaim, hostPath must be set"


class VolumeSource(ApiModel):
    """Where data lives: exactly one of `persistentVolumeClaim`, `emptyDir`, `hostPath`."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="[has(self.persistentVolumeClaim), has(self.emptyDir), has(self.hostPath)]"
            ".filter(x, x).size() == 1",
            message=_ONE_VOLUME,
            check=lambda m: [m.persistent_volume_claim, m.empty_dir, m.host_path].count(None) == 2,
        ),
    )

    persistent_volume_claim: PersistentVolumeClaimSource | None = Field(
        default=None, description="Use an existing PersistentVolumeClaim (survives pod and node loss)."
    )
    empty_dir: EmptyDirSource | None = Field(
        default=None, description="Use a scratch directory of the pod (lost when the pod goes)."
    )
    host_path: HostPathSource | None = Field(
        default=None, description="Use a directory on the node (development clusters only)."
    )


class RepositoryVolume(ApiModel):
    """A volume holding a model repository: exactly one of `persistentVolumeClaim`, `hostPath`.

    A scratch directory is not offered: an exported model must outlive the pod that wrote it.
    """

    cel_rules: ClassVar[tuple[CelRule, ...]] = (
        CelRule(
            rule="has(self.persistentVolumeClaim) != has(self.hostPath)",
            message=_ONE_REPOSITORY,
            check=lambda m: (m.persistent_volume_claim is None) != (m.host_path is None),
        ),
    )

    persistent_volume_claim: PersistentVolumeClaimSource | None = Field(
        default=None, description="Use an existing PersistentVolumeClaim."
    )
    host_path: HostPathSource | None = Field(
        default=None, description="Use a directory on the node (development clusters only)."
    )


class Resources(ApiModel):
    """Compute resources of one pod."""

    gpus: int = Field(
        default=0, ge=0, le=16, description="NVIDIA GPUs per pod (requested as nvidia.com/gpu), 0..16."
    )
    cpu: Quantity = Field(default="1", description='CPU request and limit per pod, a quantity ("500m", "2").')


class TrainingResources(Resources):
    """Compute resources of one training pod (one node of the gang)."""

    memory: Quantity = Field(
        default="2Gi", description='Memory request and limit per pod, a quantity ("2Gi").'
    )


class ServingResources(Resources):
    """Compute resources of one inference pod."""

    memory: Quantity = Field(
        default="1Gi", description='Memory request and limit per pod, a quantity ("1Gi").'
    )


# Names the operator sets itself for torchrun and the trainer; a user value would break the gang.
RESERVED_ENV_NAMES: tuple[str, ...] = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
    "JOB_COMPLETION_INDEX",
)
RESERVED_ENV_PREFIXES: tuple[str, ...] = ("PET_", "TORCHELASTIC_", "COXSWAIN_")


def _env_name_allowed(name: str) -> bool:
    return name not in RESERVED_ENV_NAMES and not name.startswith(RESERVED_ENV_PREFIXES)


def _reserved_env_rule() -> CelRule:
    names = ", ".join(f"'{n}'" for n in RESERVED_ENV_NAMES)
    prefixes = " && ".join(f"!self.name.startsWith('{p}')" for p in RESERVED_ENV_PREFIXES)
    shown = ", ".join(RESERVED_ENV_NAMES) + ", " + ", ".join(f"{p}*" for p in RESERVED_ENV_PREFIXES)
    return CelRule(
        rule=f"!(self.name in [{names}]) && {prefixes}",
        message=f"env name is reserved for the operator and torchrun ({shown}); choose another name",
        field_path=".name",
        reason=RuleReason.FORBIDDEN,
        check=lambda m: _env_name_allowed(m.name),
    )


class EnvVar(ApiModel):
    """An extra environment variable for the container."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (_reserved_env_rule(),)

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
        description="Variable name. Names used by torchrun and the operator (PET_*, MASTER_ADDR, "
        "MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK, COXSWAIN_*, ...) are refused.",
    )
    value: str = Field(default="", max_length=32768, description="Variable value.")


class TolerationOperator(StrEnum):
    """How a toleration matches a taint's value."""

    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    """Which taint effect a toleration matches."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(ApiModel):
    """A core/v1 Toleration: lets pods land on nodes with a matching taint."""

    key: str | None = Field(default=None, max_length=317, description="Taint key; empty matches every key.")
    operator: TolerationOperator = Field(default=TolerationOperator.EQUAL, description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=63, description="Taint value for operator Equal.")
    effect: TaintEffect | None = Field(default=None, description="Effect to match; empty matches all.")
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="For NoExecute: how long the pod stays after the taint appears."
    )


class ConditionStatus(StrEnum):
    """metav1.ConditionStatus."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """One observation of the object's state, with the five keys of metav1.Condition."""

    type: str = Field(min_length=1, max_length=316, pattern=CAMEL_CASE_PATTERN, description="Condition type.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=CAMEL_CASE_PATTERN,
        description="CamelCase reason for the last transition.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable detail.")
    last_transition_time: datetime = Field(description="When status last changed.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="metadata.generation the condition was computed from."
    )


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta Coxswain reads; every other key is kept as it is."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = Field(default=None, description="Object name.")
    namespace: str | None = Field(default=None, description="Object namespace.")
    uid: str | None = Field(default=None, description="Object UID.")
    generation: int | None = Field(default=None, description="Spec generation.")
    resource_version: str | None = Field(default=None, description="Storage version for optimistic locking.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")
