"""Pure builders: a ModelService (and the model it serves) in, Kubernetes objects out.

- a Deployment of `coxswain-server` pods: model repository at /models, the traffic
  ConfigMap mounted as a file the server watches (weights change without a restart),
  a startup probe (big models load slowly; no fixed liveness delay), readiness on
  /v2/health/ready so no request reaches a pod before its model is warmed up, liveness on
  /v2/health/live, rolling updates that never take a ready pod away first;
- a ClusterIP Service, port 80 -> the pods' 8080;
- the traffic ConfigMap (`{"weights": {...}}`);
- for `autoscaling.mode: hpa`, an autoscaling/v2 HPA aimed at the ModelService's own scale
  subresource, so the HPA and the builtin autoscaler write the same field.
Every object carries an ownerReference to the ModelService: deleting it removes them all.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from coxswain.api import API_VERSION, MODELSERVICE_KIND
from coxswain.api.modelservice import ModelService, ScaleMetric
from coxswain.modelservice import naming
from coxswain.modelservice.source import ServedModel
from coxswain.podsecurity import container_security_context, pod_security_context
from coxswain.quantity import format_quantity, parse_quantity, whole_cores

GPU_RESOURCE = "nvidia.com/gpu"
# After SIGTERM the server stays up (unready) this long so endpoint controllers and
# kube-proxy stop sending it new requests, then finishes the in-flight ones (up to
# GRACEFUL_SECONDS) and exits. The server does this itself, so the pod needs no preStop
# hook (and no shell or `sleep` binary in the image).
DRAIN_SECONDS = 5
GRACEFUL_SECONDS = 30
TERMINATION_GRACE_SECONDS = DRAIN_SECONDS + GRACEFUL_SECONDS + 10
# Startup probe: every 2 s for up to 30 min; liveness only starts once the model is loaded.
STARTUP_PERIOD_SECONDS = 2
STARTUP_FAILURE_THRESHOLD = 900
# Pods metrics an HPA reads through a metrics adapter (e.g. prometheus-adapter).
HPA_METRIC_NAMES = {
    ScaleMetric.INFLIGHT: "coxswain_server_inflight_requests",
    ScaleMetric.RPS: "coxswain_server_requests_per_second",
}


def owner_reference(ms: ModelService) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": MODELSERVICE_KIND,
        "name": ms.metadata.name,
        "uid": ms.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _name(ms: ModelService) -> str:
    assert ms.metadata.name, "a ModelService from the API server always has a name"
    return ms.metadata.name


def common_labels(ms: ModelService) -> dict[str, str]:
    return {
        naming.LABEL_MODELSERVICE: _name(ms),
        naming.LABEL_MANAGED_BY: naming.MANAGER,
        naming.LABEL_COMPONENT: naming.COMPONENT,
    }


def spec_hash(obj: dict[str, Any]) -> str:
    """A short, stable digest of what we apply (the hash annotation itself excluded)."""
    doc = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def _with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"].setdefault("annotations", {})[naming.ANNOTATION_SPEC_HASH] = spec_hash(obj)
    return obj


def _metadata(ms: ModelService, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ms.metadata.namespace,
        "labels": common_labels(ms),
        "ownerReferences": [owner_reference(ms)],
    }


def cpu_threads(cpu: str) -> int:
    """Whole cores of a CPU limit, at least 1: torch's thread count (the server reads it)."""
    return whole_cores(cpu)


# The server's body limit (its default) and what a request it holds can cost: the body and its
# decompressed or decoded copy.
SERVER_BODY_BYTES = 8 * 1024 * 1024
BYTES_PER_HELD_REQUEST = 2 * SERVER_BODY_BYTES


def max_concurrent_requests(memory: str) -> int:
    """Requests a server pod may hold at once: half its memory limit for request bodies (the
    rest for the model and the runtime), so clients cannot push it over its limit. 1Gi: 32."""
    try:
        memory_bytes = int(parse_quantity(memory))
    except ValueError:
        return 32
    return max(4, min(128, memory_bytes // 2 // BYTES_PER_HELD_REQUEST))


def traffic_document(weights: dict[str, int]) -> str:
    """The traffic file: every version the pods should hold, with its weight (0 = loaded, idle)."""
    return json.dumps({"weights": weights}, sort_keys=True)


def build_traffic_config_map(ms: ModelService, weights: dict[str, int]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(ms, naming.traffic_config_map_name(_name(ms))),
        "data": {naming.TRAFFIC_FILE: traffic_document(weights)},
    }


def build_service(ms: ModelService) -> dict[str, Any]:
    name = _name(ms)
    meta = _metadata(ms, naming.service_name(name))
    meta["labels"] = {**meta["labels"], naming.LABEL_SLICES: "true"}  # copied onto its slices
    return _with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {
                "type": "ClusterIP",
                "selector": naming.selector(name),
                "ports": [
                    {"name": "http", "port": naming.SERVICE_PORT, "targetPort": "http", "protocol": "TCP"},
                    {
                        "name": "grpc",
                        "port": naming.GRPC_PORT,
                        "targetPort": "grpc",
                        "protocol": "TCP",
                        "appProtocol": "kubernetes.io/h2c",  # gRPC is cleartext HTTP/2 here
                    },
                ],
            },
        }
    )


def build_activator_slice(
    ms: ModelService, activator: list[tuple[str, int]], grpc_port: int | None = None
) -> dict[str, Any]:
    """The Service's extra endpoints while no server pod is ready: the activator's pods.

    kube-proxy merges every EndpointSlice labelled with the Service's name, so the Service
    keeps its selector (the endpointslice controller's slice lists the server pods) and
    routes to the activator only while that slice has no ready endpoint. The activator holds
    HTTP requests and gRPC connections (`grpc_port`; without it gRPC waits for a server pod).
    """
    name = _name(ms)
    meta = _metadata(ms, naming.activator_slice_name(name))
    meta["labels"] = {
        **meta["labels"],
        naming.LABEL_SERVICE_NAME: naming.service_name(name),
        naming.LABEL_SLICE_MANAGED_BY: naming.SLICE_MANAGER,
        naming.LABEL_SLICES: "true",
    }
    family = "IPv6" if any(":" in ip for ip, _ in activator) else "IPv4"
    # One port per slice: the activator's pods share theirs (the lowest, should they differ).
    port = min(p for _, p in activator)
    return _with_hash(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": meta,
            "addressType": family,
            "endpoints": [
                {"addresses": [ip], "conditions": {"ready": True}}
                for ip in sorted({ip for ip, p in activator if p == port})
            ],
            "ports": [
                {"name": "http", "port": port, "protocol": "TCP"},
                *([{"name": "grpc", "port": grpc_port, "protocol": "TCP"}] if grpc_port else []),
            ],
        }
    )


def build_env(ms: ModelService, model: ServedModel) -> list[dict[str, Any]]:
    spec = ms.spec
    env: list[dict[str, Any]] = [
        {"name": "COXSWAIN_SERVER_REPOSITORY", "value": model.repository_path},
        {"name": "COXSWAIN_SERVER_MODEL", "value": model.name},
        {"name": "COXSWAIN_SERVER_TRAFFIC_FILE", "value": f"{naming.TRAFFIC_MOUNT}/{naming.TRAFFIC_FILE}"},
        {"name": "COXSWAIN_SERVER_PORT", "value": str(naming.HTTP_PORT)},
        {"name": "COXSWAIN_SERVER_GRPC_PORT", "value": str(naming.GRPC_PORT)},
        {"name": "COXSWAIN_SERVER_MAX_BATCH_SIZE", "value": str(spec.batching.max_batch_size)},
        {"name": "COXSWAIN_SERVER_MAX_LATENCY_MS", "value": str(spec.batching.max_latency_ms)},
        {"name": "COXSWAIN_SERVER_MAX_QUEUE_SIZE", "value": str(spec.max_queue_size)},
        {
            "name": "COXSWAIN_SERVER_MAX_CONCURRENT_REQUESTS",
            "value": str(max_concurrent_requests(spec.resources.memory)),
        },
        {"name": "COXSWAIN_SERVER_DEVICE", "value": "cuda" if spec.resources.gpus > 0 else "cpu"},
        {"name": "COXSWAIN_SERVER_DRAIN_SECONDS", "value": str(DRAIN_SECONDS)},
        {"name": "COXSWAIN_SERVER_GRACEFUL_TIMEOUT_SECONDS", "value": str(GRACEFUL_SECONDS)},
        {"name": "COXSWAIN_CPU_LIMIT", "value": str(cpu_threads(spec.resources.cpu))},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    # No admin token, ever: the server's admin endpoints stay off (403) in operator-made pods,
    # since the operator changes weights through the traffic file, not the admin API.
    if spec.auth_token_secret_ref is not None:
        env.append(
            {
                "name": "COXSWAIN_SERVER_AUTH_TOKEN_FILE",
                "value": f"{naming.AUTH_TOKEN_MOUNT}/{naming.AUTH_TOKEN_FILE}",
            }
        )
    if model.encryption_key is not None:
        env.append(
            {
                "name": "COXSWAIN_SERVER_KEY_FILE",
                "value": f"{naming.ENCRYPTION_KEY_MOUNT}/{naming.ENCRYPTION_KEY_FILE}",
            }
        )
    return env


def _volumes(ms: ModelService, model: ServedModel) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    name = _name(ms)
    volumes: list[dict[str, Any]] = [
        {"name": "traffic", "configMap": {"name": naming.traffic_config_map_name(name)}},
        # Read-only root filesystem: torch and Python still want a scratch directory.
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "traffic", "mountPath": naming.TRAFFIC_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    repo = model.repository
    if repo is not None and repo.persistent_volume_claim is not None:
        claim = repo.persistent_volume_claim
        # Servers only read the repository; read-only also lets many pods share one claim.
        volumes.append(
            {"name": "models", "persistentVolumeClaim": {"claimName": claim.claim_name, "readOnly": True}}
        )
    elif repo is not None and repo.host_path is not None:
        volumes.append({"name": "models", "hostPath": {"path": repo.host_path.path, "type": "Directory"}})
    if repo is not None:
        mounts.append({"name": "models", "mountPath": naming.MODEL_REPOSITORY_MOUNT, "readOnly": True})
    for ref, volume, mount, file in (
        (ms.spec.auth_token_secret_ref, "auth-token", naming.AUTH_TOKEN_MOUNT, naming.AUTH_TOKEN_FILE),
        (model.encryption_key, "encryption-key", naming.ENCRYPTION_KEY_MOUNT, naming.ENCRYPTION_KEY_FILE),
    ):
        if ref is None:
            continue
        volumes.append(
            {
                "name": volume,
                "secret": {
                    "secretName": ref.name,
                    "items": [{"key": ref.key, "path": file}],
                    "defaultMode": 0o400,
                },
            }
        )
        mounts.append({"name": volume, "mountPath": mount, "readOnly": True})
    return volumes, mounts


def build_resources(ms: ModelService) -> dict[str, Any]:
    res = ms.spec.resources
    amounts: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    if res.gpus > 0:
        amounts[GPU_RESOURCE] = str(res.gpus)
    # requests == limits (Guaranteed QoS): latency does not depend on the neighbours.
    return {"requests": dict(amounts), "limits": dict(amounts)}


def _probe(path: str, period: int, failures: int, timeout: int = 2) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def build_pod_template(ms: ModelService, model: ServedModel) -> dict[str, Any]:
    spec = ms.spec
    volumes, mounts = _volumes(ms, model)
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
        "securityContext": pod_security_context(),
        "containers": [
            {
                "name": naming.CONTAINER,
                "image": spec.image,
                "command": ["coxswain-server"],
                "env": build_env(ms, model),
                "ports": [
                    {"name": "http", "containerPort": naming.HTTP_PORT, "protocol": "TCP"},
                    {"name": "grpc", "containerPort": naming.GRPC_PORT, "protocol": "TCP"},
                ],
                "resources": build_resources(ms),
                "volumeMounts": mounts,
                # Readiness is false until every version in the traffic file is loaded and
                # warmed up, and again from the first moment of SIGTERM.
                "startupProbe": _probe("/v2/health/ready", STARTUP_PERIOD_SECONDS, STARTUP_FAILURE_THRESHOLD),
                "readinessProbe": {**_probe("/v2/health/ready", 2, 2), "successThreshold": 1},
                "livenessProbe": _probe("/v2/health/live", 10, 3, timeout=5),
                # The server writes why it could not load the model here (shown by describe pod
                # and read by the operator for ModelLoaded's reason).
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": container_security_context(),
            }
        ],
        "volumes": volumes,
    }
    tolerations = [t.to_dict() for t in spec.tolerations]
    if spec.resources.gpus > 0 and not any(t.get("key") == GPU_RESOURCE for t in tolerations):
        # GPU node pools are commonly tainted nvidia.com/gpu:NoSchedule.
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    return {
        "metadata": {
            "labels": common_labels(ms),
            "annotations": {
                "kubectl.kubernetes.io/default-container": naming.CONTAINER,
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(naming.HTTP_PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": pod_spec,
    }


def build_deployment(ms: ModelService, model: ServedModel, replicas: int) -> dict[str, Any]:
    name = _name(ms)
    deployment = _with_hash(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _metadata(ms, naming.deployment_name(name)),
            "spec": {
                "selector": {"matchLabels": naming.selector(name)},
                "strategy": {
                    "type": "RollingUpdate",
                    # A new pod must be ready before an old one goes: capacity never dips.
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": "25%"},
                },
                "revisionHistoryLimit": 3,
                "progressDeadlineSeconds": 600,
                "template": build_pod_template(ms, model),
            },
        }
    )
    # Replicas stay out of the hash: scaling is a patch of one field, not a new rollout.
    deployment["spec"]["replicas"] = replicas
    return deployment


def build_hpa(ms: ModelService) -> dict[str, Any]:
    """An HPA on the ModelService's scale subresource, fed by a pods metric of the servers."""
    name, auto = _name(ms), ms.spec.autoscaling
    target = auto.target
    return _with_hash(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata(ms, naming.hpa_name(name)),
            "spec": {
                "scaleTargetRef": {"apiVersion": API_VERSION, "kind": MODELSERVICE_KIND, "name": name},
                # An HPA cannot scale from zero without a feature gate; 1 is its floor.
                "minReplicas": max(1, auto.min_replicas),
                "maxReplicas": auto.max_replicas,
                "metrics": [
                    {
                        "type": "Pods",
                        "pods": {
                            "metric": {"name": HPA_METRIC_NAMES[target.metric]},
                            "target": {"type": "AverageValue", "averageValue": format_quantity(target.value)},
                        },
                    }
                ],
                "behavior": {
                    "scaleDown": {"stabilizationWindowSeconds": auto.scale_down_delay_seconds},
                    "scaleUp": {"stabilizationWindowSeconds": 0},
                },
            },
        }
    )
