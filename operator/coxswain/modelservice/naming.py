"""Names, labels, ports and paths of what a ModelService owns; one place so builders,
lookups and tests agree."""

from __future__ import annotations

LABEL_MODELSERVICE = "coxswain.dev/modelservice"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
MANAGER = "coxswain"
COMPONENT = "server"
# Hash of the object the operator last applied: a pass re-applies only what changed.
ANNOTATION_SPEC_HASH = "coxswain.dev/spec-hash"

CONTAINER = "server"
HTTP_PORT = 8080
SERVICE_PORT = 80
# gRPC (v2 protocol): the same number on the pod and the Service, KServe's convention; gRPC
# targets always name their port, so there is no default like HTTP's 80 to map to.
GRPC_PORT = 8081

MODEL_REPOSITORY_MOUNT = "/models"
TRAFFIC_MOUNT = "/etc/coxswain/traffic"
TRAFFIC_FILE = "traffic.json"
AUTH_TOKEN_MOUNT = "/etc/coxswain/auth"
AUTH_TOKEN_FILE = "token"
ENCRYPTION_KEY_MOUNT = "/etc/coxswain/key"
ENCRYPTION_KEY_FILE = "key"

# Scale from zero (coxswain.activator): while a `minReplicas: 0` service has no ready pod, an
# EndpointSlice of the operator's adds the activator's pods to the Service's endpoints.
# The activator's own Service carries LABEL_ACTIVATOR; the endpointslice controller copies it
# onto that Service's slices, which is how the operator finds the activator's pod IPs.
LABEL_ACTIVATOR = "coxswain.dev/activator"
# On every Service whose EndpointSlices the operator watches (a ModelService's, the
# activator's) and so on their slices: the one server-side selector of that watch
# (watch_only.SERVER_SELECTORS), since "this label or that one" has no selector syntax.
LABEL_SLICES = "coxswain.dev/slices"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_SLICE_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SLICE_MANAGER = "coxswain-operator"


def deployment_name(ms: str) -> str:
    return ms


def service_name(ms: str) -> str:
    """The Service: clients call http://<ms>.<namespace>.svc.cluster.local."""
    return ms


def traffic_config_map_name(ms: str) -> str:
    return f"{ms}-traffic"


def activator_slice_name(ms: str) -> str:
    return f"{ms}-activator"


def hpa_name(ms: str) -> str:
    return ms


def selector(ms: str) -> dict[str, str]:
    return {LABEL_MODELSERVICE: ms}


def selector_string(ms: str) -> str:
    """The label selector in its string form (status.selector, read by the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in selector(ms).items())


def url(ms: str, namespace: str) -> str:
    return f"http://{service_name(ms)}.{namespace}.svc.cluster.local"


def grpc_url(ms: str, namespace: str) -> str:
    """host:port, the form gRPC clients (tritonclient.grpc, KServe's) take."""
    return f"{service_name(ms)}.{namespace}.svc.cluster.local:{GRPC_PORT}"
