"""What the activator's unit tests give it instead of a cluster: a waker that records, and the
EndpointSlice the endpointslice controller would write for one ready server pod on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

from coxswain.activator.backends import Key


class RecordingWaker:
    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.asked = asyncio.Event()

    def wake(self, key: Key) -> Any:
        self.keys.append(key)
        self.asked.set()


def ready_slice(**ports: int) -> dict[str, Any]:
    """ml/digits's slice: one ready endpoint, 127.0.0.1, on the named ports (http=..., grpc=...)."""
    return {
        "metadata": {
            "name": "digits-abc",
            "namespace": "ml",
            "labels": {
                "kubernetes.io/service-name": "digits",
                "coxswain.dev/modelservice": "digits",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "ports": [{"name": name, "port": port} for name, port in ports.items()],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}],
    }
