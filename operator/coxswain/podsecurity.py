"""The locked-down security context every pod the operator makes gets (trainers and servers)."""

from __future__ import annotations

from typing import Any

RUN_AS_USER = 1000


def pod_security_context() -> dict[str, Any]:
    """Non-root, with volumes group-writable for it (fsGroup), seccomp RuntimeDefault."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    """Read-only root file system, no privilege escalation, every capability dropped."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
