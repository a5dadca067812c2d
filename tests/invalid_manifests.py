"""Invalid TrainingJobs and ModelServices, each with the field its refusal must name.

Imported by the unit tests (jsonschema + a CEL evaluator, and the pydantic models) and by the
cluster tests (a real API server). Cases come from three sources:

- a systematic walk of the generated CRD schemas: every spec field gets a wrong type, values
  just outside its bounds, a bad enum value, a too long or too short string or list, a
  string that breaks its pattern, and every required field gets left out;
- a table of forbidden combinations, one per cross-field CEL rule;
- transition cases (old, new) for the immutability rules.

Every base object is a valid example from examples/ (plus a few variations), with the API
server's defaults applied so that every defaulted parent exists to be mutated. Unknown fields
are not cases: a structural schema prunes them silently unless a client asks for strict
field validation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CRDS = {
    "TrainingJob": ROOT / "crds" / "trainingjobs.coxswain.dev.yaml",
    "ModelService": ROOT / "crds" / "modelservices.coxswain.dev.yaml",
}

Manifest = dict[str, Any]
Schema = dict[str, Any]
# A path inside an object: keys, and list indexes as ints.
Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class InvalidCase:
    """A manifest the API server must refuse with a message naming `field`."""

    id: str
    manifest: Manifest
    field: str


@dataclass(frozen=True)
class InvalidUpdate:
    """An update from `old` to `new` the API server must refuse, naming `field`."""

    id: str
    old: Manifest
    new: Manifest
    field: str


@dataclass(frozen=True)
class ValidUpdate:
    """An update from `old` to `new` that must be accepted."""

    id: str
    old: Manifest
    new: Manifest


# -- schema and bases ---------------------------------------------------------------------


@cache
def spec_schema(kind: str) -> Schema:
    """The openAPIV3Schema of `kind` from the generated CRD in git."""
    crd = yaml.safe_load(CRDS[kind].read_text())
    schema: Schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _defaulted(value: Any, schema: Schema) -> Any:
    # The same defaulting the API server does, so that defaulted parents exist in the bases.
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out = dict(value)
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
        extra = schema.get("additionalProperties")
        for key in out:
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                out[key] = _defaulted(out[key], sub)
        return out
    if isinstance(value, list) and "items" in schema:
        return [_defaulted(v, schema["items"]) for v in value]
    return value


def load_example(name: str) -> Manifest:
    """An example manifest from examples/, as written."""
    loaded: Manifest = yaml.safe_load((EXAMPLES / name).read_text())
    return loaded


def _with(manifest: Manifest, path: Path_, value: Any) -> Manifest:
    out = copy.deepcopy(manifest)
    set_path(out, path, value)
    return out


def set_path(obj: Any, path: Path_, value: Any) -> None:
    """Set `value` at `path`, creating missing objects on the way."""
    for part in path[:-1]:
        obj = obj[part] if isinstance(part, int) else obj.setdefault(part, {})
    obj[path[-1]] = value


def del_path(obj: Any, path: Path_) -> None:
    """Remove the field at `path`."""
    for part in path[:-1]:
        obj = obj[part]
    del obj[path[-1]]


def get_path(obj: Any, path: Path_) -> Any:
    """The value at `path`, or None when any part is missing."""
    for part in path:
        if isinstance(part, int):
            if not isinstance(obj, list) or len(obj) <= part:
                return None
        elif not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


@cache
def _bases_cached() -> tuple[tuple[str, str, Manifest], ...]:
    tj = {n: load_example(f"trainingjob-{n}.yaml") for n in ("linear", "mlp", "cnn", "custom")}
    ms = {n: load_example(n) for n in ("modelservice.yaml", "modelservice-canary.yaml")}
    # Variations reaching fields no example sets.
    wide_tj = _with(tj["mlp"], ("spec", "tolerations"), [{"key": "nvidia.com/gpu", "operator": "Exists"}])
    wide_tj = _with(wide_tj, ("spec", "nodeSelector"), {"nvidia.com/gpu.present": "true"})
    wide_tj = _with(wide_tj, ("spec", "env"), [{"name": "LOG_LEVEL", "value": "debug"}])
    wide_tj = _with(wide_tj, ("spec", "checkpoint", "volume"), {"hostPath": {"path": "/srv/ckpt"}})
    wide_tj = _with(
        wide_tj,
        ("spec", "export"),
        {
            "repository": {"hostPath": {"path": "/srv/models"}},
            "version": "v7",
            "encryption": {"keySecretRef": {"name": "model-key", "key": "key"}},
        },
    )
    wide_tj = _with(wide_tj, ("spec", "optimization", "maxSteps"), 1000)
    wide_tj = _with(wide_tj, ("spec", "optimization", "gradientClipNorm"), 1.0)
    wide_tj = _with(wide_tj, ("spec", "activeDeadlineSeconds"), 600)
    wide_tj = _with(wide_tj, ("spec", "ttlSecondsAfterFinished"), 60)
    wide_tj = _with(wide_tj, ("spec", "serving"), {"modelService": "digits", "rollout": "stable"})
    scratch_tj = _with(tj["linear"], ("spec", "checkpoint", "volume"), {"emptyDir": {"sizeLimit": "1Gi"}})
    wide_ms = _with(ms["modelservice.yaml"], ("spec", "replicas"), 2)
    wide_ms = _with(wide_ms, ("spec", "encryptionKeySecretRef"), {"name": "model-key", "key": "key"})
    wide_ms = _with(wide_ms, ("spec", "repository"), {"hostPath": {"path": "/srv/models"}})
    raw = [
        ("TrainingJob", "linear", tj["linear"]),
        ("TrainingJob", "mlp", tj["mlp"]),
        ("TrainingJob", "cnn", tj["cnn"]),
        ("TrainingJob", "custom", tj["custom"]),
        ("TrainingJob", "wide", wide_tj),
        ("TrainingJob", "scratch", scratch_tj),
        ("ModelService", "serve", ms["modelservice.yaml"]),
        ("ModelService", "canary", ms["modelservice-canary.yaml"]),
        ("ModelService", "wide", wide_ms),
    ]
    return tuple((kind, name, _defaulted(m, spec_schema(kind))) for kind, name, m in raw)


def bases() -> list[tuple[str, str, Manifest]]:
    """(kind, name, manifest) of every valid base object, defaults applied; fresh copies."""
    return [(k, n, copy.deepcopy(m)) for k, n, m in _bases_cached()]


# -- the systematic walk ------------------------------------------------------------------


def format_path(path: Path_) -> str:
    """`spec.env[0].name`, as the API server writes a field path."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _fields(schema: Schema, path: Path_) -> Iterator[tuple[Path_, Schema]]:
    """Every field below `schema` (objects, lists, leaves), list items as index 0."""
    for name, sub in schema.get("properties", {}).items():
        sub_path = (*path, name)
        yield sub_path, sub
        yield from _fields(sub, sub_path)
        if sub.get("type") == "array" and "items" in sub:
            yield (*sub_path, 0), sub["items"]
            yield from _fields(sub["items"], (*sub_path, 0))


def _is_quantity(schema: Schema) -> bool:
    return bool(schema.get("x-kubernetes-int-or-string"))


def _bad_values(schema: Schema, current: Any) -> Iterator[tuple[str, Any]]:
    """(label, value) pairs the schema refuses for a field currently holding `current`."""
    kind = schema.get("type")
    if _is_quantity(schema):
        yield "not-a-quantity", "lots"
        yield "zero-quantity", "0"
        yield "negative-quantity", "-1"
        yield "wrong-type-bool", True
        return
    wrong_type = {
        "integer": ("wrong-type-string", "seven"),
        "number": ("wrong-type-string", "seven"),
        "boolean": ("wrong-type-string", "maybe"),
        "string": ("wrong-type-int", 12345),
        "array": ("wrong-type-string", "not-a-list"),
        "object": ("wrong-type-string", "not-an-object"),
    }
    if kind in wrong_type:
        yield wrong_type[kind]
    if kind == "integer":
        yield "fraction", 1.5
    if kind in ("integer", "number"):
        step = 1 if kind == "integer" else 0.5
        if "minimum" in schema:
            low = schema["minimum"]
            yield "below-minimum", low if schema.get("exclusiveMinimum") else low - step
        if "maximum" in schema:
            high = schema["maximum"]
            yield "above-maximum", high if schema.get("exclusiveMaximum") else high + step
    if "enum" in schema:
        yield "bad-enum", "no-such-value"
    if kind == "string":
        if schema.get("minLength", 0) >= 1:
            yield "empty", ""
        if "maxLength" in schema and schema["maxLength"] <= 4096:
            yield "too-long", "a" * (schema["maxLength"] + 1)
        if "pattern" in schema:
            yield "bad-pattern", "NOT VALID!"
    if kind == "array":
        if schema.get("minItems", 0) >= 1:
            yield "too-few-items", []
        if "maxItems" in schema and isinstance(current, list) and current:
            yield "too-many-items", [copy.deepcopy(current[0])] * (schema["maxItems"] + 1)
    if kind == "object" and "maxProperties" in schema:
        yield "too-many-properties", {f"key{i}": "v" for i in range(schema["maxProperties"] + 1)}


def _case_id(kind: str, base: str, path: Path_, label: str) -> str:
    return f"{kind.lower()}-{base}-{format_path(path)}-{label}"


def _schema_cases() -> Iterator[InvalidCase]:
    seen: set[tuple[str, str, str]] = set()
    for kind, base_name, base in bases():
        for path, schema in _fields(spec_schema(kind)["properties"]["spec"], ("spec",)):
            parent = get_path(base, path[:-1])
            if not isinstance(parent, dict | list) or (
                get_path(base, path) is None and isinstance(path[-1], int)
            ):
                continue
            current = get_path(base, path)
            for label, value in _bad_values(schema, current):
                key = (kind, format_path(path), label)
                if key in seen:
                    continue  # one base per field and mutation is enough
                seen.add(key)
                yield InvalidCase(
                    id=_case_id(kind, base_name, path, label),
                    manifest=_with(base, path, value),
                    field=format_path(path),
                )


def _required_cases() -> Iterator[InvalidCase]:
    seen: set[str] = set()
    for kind, base_name, base in bases():
        schema = spec_schema(kind)
        walk = [(("spec",), schema["properties"]["spec"]), *_fields(schema["properties"]["spec"], ("spec",))]
        for path, node in [((), schema), *walk]:
            if not isinstance(get_path(base, path) if path else base, dict):
                continue
            for name in node.get("required", []):
                field = format_path((*path, name))
                if field in seen or "default" in node.get("properties", {}).get(name, {}):
                    continue
                seen.add(field)
                manifest = copy.deepcopy(base)
                del_path(manifest, (*path, name))
                yield InvalidCase(
                    id=f"{kind.lower()}-{base_name}-{field}-missing", manifest=manifest, field=field
                )


# -- forbidden combinations (one or more per cross-field CEL rule) --------------------------

_Edit = Callable[[Manifest], None]


def _edit(*changes: tuple[Path_, Any]) -> _Edit:
    def apply(manifest: Manifest) -> None:
        for path, value in changes:
            if value is _DELETE:
                del_path(manifest, path)
            else:
                set_path(manifest, path, value)

    return apply


_DELETE = object()
S = "spec"

# (id, base, field, edit)
_COMBINATIONS: list[tuple[str, str, str, _Edit]] = [
    ("task-both", "mlp", "spec.task", _edit(((S, "task", "custom"), {"module": "my_pkg.task"}))),
    ("task-neither", "mlp", "spec.task", _edit(((S, "task"), {}))),
    (
        "cnn-on-tabular-data",
        "cnn",
        "spec.task.builtin.dataset",
        _edit(((S, "task", "builtin", "dataset"), "diabetes")),
    ),
    (
        "dropout-on-linear",
        "linear",
        "spec.task.builtin.dropout",
        _edit(((S, "task", "builtin", "dropout"), 0.5)),
    ),
    ("nccl-without-gpus", "mlp", "spec.backend", _edit(((S, "backend"), "nccl"))),
    (
        "nccl-with-zero-gpus",
        "cnn",
        "spec.backend",
        _edit(((S, "backend"), "nccl"), ((S, "resources", "gpus"), 0)),
    ),
    (
        "fp16-without-gpus",
        "mlp",
        "spec.optimization.precision",
        _edit(((S, "optimization", "precision"), "fp16"), ((S, "resources", "gpus"), 0)),
    ),
    (
        "fsdp-on-two-nodes-with-a-per-pod-volume",
        "mlp",
        "spec.optimization.strategy",
        _edit(
            ((S, "optimization", "strategy"), "fsdp"),
            ((S, "nodes"), 2),
            ((S, "checkpoint", "volume"), {"emptyDir": {}}),
        ),
    ),
    (
        "early-stopping-accuracy-min",
        "mlp",
        "spec.evaluation.earlyStopping.mode",
        _edit(((S, "evaluation", "earlyStopping", "mode"), "min")),
    ),
    (
        "early-stopping-r2-min",
        "mlp",
        "spec.evaluation.earlyStopping.mode",
        _edit(((S, "evaluation", "earlyStopping"), {"metric": "r2", "mode": "min"})),
    ),
    (
        "early-stopping-loss-max",
        "mlp",
        "spec.evaluation.earlyStopping.mode",
        _edit(((S, "evaluation", "earlyStopping"), {"metric": "eval_loss", "mode": "max"})),
    ),
    (
        "early-stopping-mse-max",
        "linear",
        "spec.evaluation.earlyStopping.mode",
        _edit(((S, "evaluation", "earlyStopping"), {"metric": "mse", "mode": "max"})),
    ),
    (
        "early-stopping-accuracy-default-mode",
        "linear",
        "spec.evaluation.earlyStopping.mode",
        _edit(((S, "evaluation", "earlyStopping"), {"metric": "accuracy"})),
    ),
    (
        "exit-codes-with-oom",
        "mlp",
        "spec.failurePolicy.rules[0].exitCodes",
        _edit(
            ((S, "failurePolicy", "rules"), [{"cause": "OOMKilled", "action": "Fail", "exitCodes": [137]}])
        ),
    ),
    (
        "exit-codes-with-evicted",
        "cnn",
        "spec.failurePolicy.rules[2].exitCodes",
        _edit(((S, "failurePolicy", "rules", 2, "exitCodes"), [1])),
    ),
    (
        "backoff-above-cap",
        "mlp",
        "spec.failurePolicy.backoffSeconds",
        _edit(
            ((S, "failurePolicy", "backoffSeconds"), 600), ((S, "failurePolicy", "maxBackoffSeconds"), 300)
        ),
    ),
    (
        "min-lr-above-lr",
        "cnn",
        "spec.optimization.schedule.minLearningRate",
        _edit(((S, "optimization", "schedule", "minLearningRate"), 0.01)),
    ),
    (
        "min-lr-equals-lr",
        "mlp",
        "spec.optimization.schedule.minLearningRate",
        _edit(((S, "optimization", "schedule", "minLearningRate"), 0.1)),
    ),
    (
        "canary-percent-with-stable-rollout",
        "cnn",
        "spec.serving.canaryPercent",
        _edit(((S, "serving", "rollout"), "stable")),
    ),
    (
        "checkpoint-two-volumes",
        "cnn",
        "spec.checkpoint.volume",
        _edit(((S, "checkpoint", "volume", "emptyDir"), {})),
    ),
    ("checkpoint-no-volume", "mlp", "spec.checkpoint.volume", _edit(((S, "checkpoint", "volume"), {}))),
    (
        "checkpoint-class-with-own-volume",
        "mlp",
        "spec.checkpoint.storageClassName",
        _edit(
            ((S, "checkpoint", "volume"), {"emptyDir": {}}), ((S, "checkpoint", "storageClassName"), "fast")
        ),
    ),
    (
        "checkpoint-access-mode-with-own-volume",
        "mlp",
        "spec.checkpoint.accessMode",
        _edit(
            ((S, "checkpoint", "volume"), {"emptyDir": {}}),
            ((S, "checkpoint", "accessMode"), "ReadWriteMany"),
        ),
    ),
    (
        "checkpoint-access-mode-unknown",
        "mlp",
        "spec.checkpoint.accessMode",
        _edit(((S, "checkpoint", "accessMode"), "ReadOnlyMany")),
    ),
    (
        "checkpoint-three-volumes",
        "cnn",
        "spec.checkpoint.volume",
        _edit(
            ((S, "checkpoint", "volume", "emptyDir"), {}),
            ((S, "checkpoint", "volume", "hostPath"), {"path": "/x"}),
        ),
    ),
    (
        "export-two-repositories",
        "cnn",
        "spec.export.repository",
        _edit(((S, "export", "repository", "hostPath"), {"path": "/srv/models"})),
    ),
    (
        "export-no-repository-volume",
        "cnn",
        "spec.export.repository",
        _edit(((S, "export", "repository"), {})),
    ),
    # ModelService
    (
        "min-above-max-replicas",
        "serve",
        "spec.autoscaling.minReplicas",
        _edit(((S, "autoscaling", "minReplicas"), 5), ((S, "autoscaling", "maxReplicas"), 4)),
    ),
    (
        "min-above-default-max-replicas",
        "serve",
        "spec.autoscaling.minReplicas",
        _edit(((S, "autoscaling"), {"minReplicas": 10})),
    ),
    (
        "canary-percent-without-canary",
        "serve",
        "spec.versions.canaryPercent",
        _edit(((S, "versions", "canaryPercent"), 20)),
    ),
    ("canary-equals-stable", "canary", "spec.versions.canary", _edit(((S, "versions", "canary"), "v1"))),
    (
        "analysis-without-canary",
        "canary",
        "spec.versions.analysis",
        _edit(((S, "versions", "canary"), _DELETE), ((S, "versions", "canaryPercent"), _DELETE)),
    ),
    (
        "model-uri-and-job",
        "serve",
        "spec.model",
        _edit(((S, "model", "trainingJobRef"), {"name": "digits-cnn"})),
    ),
    ("model-neither", "serve", "spec.model", _edit(((S, "model"), {}))),
    (
        "repository-two-volumes",
        "serve",
        "spec.repository",
        _edit(((S, "repository", "hostPath"), {"path": "/srv/models"})),
    ),
    ("repository-no-volume", "serve", "spec.repository", _edit(((S, "repository"), {}))),
]

# Reserved environment names (torchrun's and the operator's own).
_RESERVED_ENV = [
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "NODE_RANK",
    "JOB_COMPLETION_INDEX",
    "PET_NNODES",
    "PET_RDZV_ENDPOINT",
    "TORCHELASTIC_RUN_ID",
    "COXSWAIN_JOB_NAME",
    "COXSWAIN_CHECKPOINT_DIR",
]


def _combination_cases() -> Iterator[InvalidCase]:
    by_name = {name: m for _, name, m in bases()}
    kinds = {name: kind for kind, name, _ in bases()}
    for case_id, base_name, field, edit in _COMBINATIONS:
        manifest = copy.deepcopy(by_name[base_name])
        edit(manifest)
        yield InvalidCase(id=f"{kinds[base_name].lower()}-{case_id}", manifest=manifest, field=field)
    # Names the Service and pod hostnames are built from (issue 15): a dot, and too long.
    for base_name, kind in (("mlp", "trainingjob"), ("canary", "modelservice")):
        for label, bad in (("dotted", "my.job"), ("62-chars", "a" * 62)):
            manifest = copy.deepcopy(by_name[base_name])
            manifest["metadata"]["name"] = bad
            yield InvalidCase(id=f"{kind}-name-{label}", manifest=manifest, field="metadata.name")
    for name in _RESERVED_ENV:
        manifest = copy.deepcopy(by_name["custom"])
        manifest["spec"]["env"] = [{"name": "PYTHONPATH", "value": "/opt"}, {"name": name, "value": "x"}]
        yield InvalidCase(id=f"trainingjob-reserved-env-{name}", manifest=manifest, field="spec.env[1].name")


def invalid_manifests() -> list[InvalidCase]:
    """Every invalid manifest, each with the field path its refusal must name."""
    cases = [*_schema_cases(), *_required_cases(), *_combination_cases()]
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return cases


# -- updates --------------------------------------------------------------------------------

# field -> (base, new value); the old value is the base's.
_IMMUTABLE_CHANGES: list[tuple[str, str, Path_, Any]] = [
    ("task", "mlp", (S, "task", "builtin", "hiddenSizes"), [256]),
    ("task-kind", "mlp", (S, "task"), {"custom": {"module": "my_pkg.task"}}),
    ("backend", "mlp", (S, "backend"), "gloo"),
    ("resources", "mlp", (S, "resources", "cpu"), "4"),
    ("image", "mlp", (S, "image"), "ghcr.io/coxswain-dev/trainer:0.2.0"),
    ("optimization", "mlp", (S, "optimization", "epochs"), 51),
    ("evaluation", "mlp", (S, "evaluation", "split"), 0.3),
    ("checkpoint", "cnn", (S, "checkpoint", "keep"), 5),
    ("seed", "mlp", (S, "seed"), 43),
    ("export", "cnn", (S, "export", "modelName"), "other"),
    ("export-added", "mlp", (S, "export"), {"repository": {"hostPath": {"path": "/srv/models"}}}),
    ("queueName-added", "mlp", (S, "queueName"), "team-a"),
    ("priorityClassName-added", "mlp", (S, "priorityClassName"), "high-priority"),
]


def _field_of(case_id: str) -> str:
    return "spec." + case_id.split("-")[0]


def invalid_updates() -> list[InvalidUpdate]:
    """Updates the transition rules refuse: immutable fields, and node placement while running."""
    by_name = {name: m for _, name, m in bases()}
    cases = []
    for case_id, base_name, path, value in _IMMUTABLE_CHANGES:
        old = by_name[base_name]
        cases.append(InvalidUpdate(f"immutable-{case_id}", old, _with(old, path, value), _field_of(case_id)))
    cnn = by_name["cnn"]
    removed = copy.deepcopy(cnn)
    del removed["spec"]["export"]
    del removed["spec"]["serving"]
    cases.append(InvalidUpdate("immutable-export-removed", cnn, removed, "spec.export"))
    running = by_name["mlp"]
    cases.append(
        InvalidUpdate(
            "node-selector-while-running",
            running,
            _with(running, (S, "nodeSelector"), {"pool": "gpu"}),
            "spec.nodeSelector",
        )
    )
    cases.append(
        InvalidUpdate(
            "tolerations-while-running",
            running,
            _with(running, (S, "tolerations"), [{"key": "gpu", "operator": "Exists"}]),
            "spec.tolerations",
        )
    )
    # The gang's shape changes only while suspended (the next attempt runs the new shape).
    for case_id, path, value in (("nodes", (S, "nodes"), 3), ("procsPerNode", (S, "procsPerNode"), 1)):
        cases.append(
            InvalidUpdate(f"{case_id}-while-running", running, _with(running, path, value), f"spec.{case_id}")
        )
        # Suspending in the same update is too late: the running pods have the old shape.
        cases.append(
            InvalidUpdate(
                f"{case_id}-and-suspend",
                running,
                _with(_with(running, path, value), (S, "suspend"), True),
                f"spec.{case_id}",
            )
        )
    # Growing a 1-node job without a volume would leave its checkpoints on the operator's claim.
    single = _with(_with(running, (S, "nodes"), 1), (S, "suspend"), True)
    cases.append(
        InvalidUpdate("nodes-grown-without-volume", single, _with(single, (S, "nodes"), 2), "spec.nodes")
    )
    resumed = _with(running, (S, "nodeSelector"), {"pool": "gpu"})
    cases.append(
        InvalidUpdate(
            "node-selector-and-suspend",
            running,
            _with(resumed, (S, "suspend"), True),
            "spec.nodeSelector",
        )
    )
    return cases


def valid_updates() -> list[ValidUpdate]:
    """Updates the transition rules allow: the mutable fields, and placement while suspended."""
    by_name = {name: m for _, name, m in bases()}
    mlp, cnn = by_name["mlp"], by_name["cnn"]
    suspended = _with(mlp, (S, "suspend"), True)
    admitted = _with(_with(suspended, (S, "nodeSelector"), {"pool": "gpu"}), (S, "suspend"), False)
    with_volume = _with(suspended, (S, "checkpoint", "volume"), {"hostPath": {"path": "/srv/ckpt"}})
    rwx = _with(suspended, (S, "checkpoint", "accessMode"), "ReadWriteMany")
    return [
        ValidUpdate("suspend", mlp, suspended),
        ValidUpdate("resume", suspended, mlp),
        ValidUpdate("max-restarts", mlp, _with(mlp, (S, "failurePolicy", "maxRestarts"), 10)),
        ValidUpdate("active-deadline", mlp, _with(mlp, (S, "activeDeadlineSeconds"), 60)),
        ValidUpdate("ttl", mlp, _with(mlp, (S, "ttlSecondsAfterFinished"), 0)),
        ValidUpdate("stall", mlp, _with(mlp, (S, "stall", "timeoutSeconds"), 120)),
        ValidUpdate("serving", cnn, _with(cnn, (S, "serving", "canaryPercent"), 50)),
        ValidUpdate("clean-pod-policy", mlp, _with(mlp, (S, "cleanPodPolicy"), "None")),
        ValidUpdate(
            "node-selector-while-suspended", suspended, _with(suspended, (S, "nodeSelector"), {"a": "b"})
        ),
        ValidUpdate(
            "tolerations-while-suspended",
            suspended,
            _with(suspended, (S, "tolerations"), [{"key": "gpu", "operator": "Exists"}]),
        ),
        ValidUpdate("admission-unsuspends-with-placement", suspended, admitted),
        ValidUpdate("nodes-while-suspended", _with(suspended, (S, "nodes"), 2), suspended),
        ValidUpdate(
            "nodes-grown-with-read-write-many-claim",
            _with(rwx, (S, "nodes"), 1),
            _with(rwx, (S, "nodes"), 2),
        ),
        ValidUpdate(
            "nodes-grown-with-volume",
            _with(with_volume, (S, "nodes"), 1),
            _with(with_volume, (S, "nodes"), 3),
        ),
        ValidUpdate("procs-per-node-while-suspended", suspended, _with(suspended, (S, "procsPerNode"), 4)),
        ValidUpdate(
            "resize-and-resume",
            with_volume,
            _with(_with(with_volume, (S, "nodes"), 4), (S, "suspend"), False),
        ),
    ]
