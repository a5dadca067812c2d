"""kopf's peering CRDs (KopfPeering, ClusterKopfPeering in group kopf.dev).

With `coxswain operator run --peering NAME` kopf requires these kinds to exist: every replica
writes a keep-alive under the peering object's `status.<replica-id>` and the one with the
highest priority acts while the others wait. kopf ships no CRD files in its wheel, so they
are generated here beside ours and written to the same directories: `helm install` and
`kubectl apply -f crds/` then install everything the operator needs in one step.
"""

from __future__ import annotations

from typing import Any

GROUP = "kopf.dev"
VERSION = "v1"

# kopf merge-patches `status` as a map of replica id -> {priority, lastseen, lifetime}; it
# owns that shape, so it is kept as written rather than pruned.
_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "kopf peering: live operator replicas and their priorities.",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    },
}


def peering_definition(kind: str, scope: str) -> dict[str, Any]:
    """The CustomResourceDefinition of one peering kind (`scope`: Namespaced or Cluster)."""
    plural = f"{kind.lower()}s"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "coxswain", "app.kubernetes.io/part-of": "coxswain"},
        },
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": _SCHEMA},
                    # kopf patches status on the main resource, so no status subresource.
                }
            ],
        },
    }


def peering_definitions() -> list[dict[str, Any]]:
    """Both kinds: namespaced peering for `-n NS` mode, cluster peering for cluster-wide mode."""
    return [
        peering_definition("KopfPeering", "Namespaced"),
        peering_definition("ClusterKopfPeering", "Cluster"),
    ]
