"""The platform team's tenancy policy: what a TrainingJob or ModelService may ask of the cluster.

Creating either kind must not give more than creating the pods would. The operator's pods
run with the operator's say-so, so the operator checks what a spec asks for before it makes
anything: hostPath repositories (off unless allowed, and then only under allowed prefixes),
images (by prefix), and Secrets (by name, per namespace; the operator never reads them, the
kubelet mounts them into pods). A refusal names the field and what is allowed.

Set with the chart's `tenancy` values, which become `coxswain operator run` flags.
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field

from coxswain.api.common import HostPathSource, SecretKeyRef
from coxswain.api.modelservice import ModelServiceSpec
from coxswain.api.trainingjob import TrainingJobSpec

# The project's own images (trainer, server, operator) and the chart's defaults.
DEFAULT_IMAGE_PREFIXES: tuple[str, ...] = ("ghcr.io/coxswain-dev/",)


@dataclass(frozen=True)
class Refusal:
    """One thing the policy does not allow: the field and why, in words for the user."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


@dataclass(frozen=True)
class TenancyPolicy:
    """What specs may ask for. The default is the safe one."""

    # hostPath volumes (repositories, checkpoints): off unless allowed.
    allow_host_path: bool = False
    # With hostPath allowed: the paths it may name (and everything below); empty: any path.
    host_path_prefixes: tuple[str, ...] = ()
    # Images must start with one of these; "*" alone admits every image.
    image_prefixes: tuple[str, ...] = DEFAULT_IMAGE_PREFIXES
    # namespace (or a glob such as "team-*", or "*") -> Secret name globs that may be referenced.
    secret_names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def image_allowed(self, image: str) -> bool:
        return any(p == "*" or image.startswith(p) for p in self.image_prefixes)

    def secret_allowed(self, namespace: str, name: str) -> bool:
        return any(
            fnmatch.fnmatchcase(namespace, ns) and any(fnmatch.fnmatchcase(name, g) for g in globs)
            for ns, globs in self.secret_names.items()
        )

    def host_path_allowed(self, path: str) -> bool:
        if not self.allow_host_path:
            return False
        if not self.host_path_prefixes:
            return True
        # normpath: "/srv/models/../../etc" must not pass as "/srv/models/...".
        clean = posixpath.normpath(path)
        return any(
            clean == posixpath.normpath(p) or clean.startswith(posixpath.normpath(p).rstrip("/") + "/")
            for p in self.host_path_prefixes
        )

    def _image(self, field_: str, image: str) -> Iterable[Refusal]:
        if not self.image_allowed(image):
            allowed = ", ".join(self.image_prefixes) or "none"
            yield Refusal(field_, f"image {image} is not allowed here; allowed prefixes: {allowed}")

    def _host_path(self, field_: str, source: HostPathSource | None) -> Iterable[Refusal]:
        if source is None or self.host_path_allowed(source.path):
            return
        if not self.allow_host_path:
            yield Refusal(
                field_, "hostPath volumes are not allowed on this cluster; use a persistentVolumeClaim"
            )
        else:
            allowed = ", ".join(self.host_path_prefixes)
            yield Refusal(field_, f"hostPath {source.path} is outside the allowed prefixes: {allowed}")

    def _secret(self, field_: str, namespace: str, ref: SecretKeyRef | None) -> Iterable[Refusal]:
        if ref is None or self.secret_allowed(namespace, ref.name):
            return
        yield Refusal(
            field_,
            f"Secret {ref.name} may not be referenced in namespace {namespace}; ask the platform team "
            "to allow it (chart value tenancy.secrets)",
        )

    def check_trainingjob(
        self, namespace: str, spec: TrainingJobSpec, pod_security: str | None = None
    ) -> list[Refusal]:
        """Everything in a TrainingJob spec this policy (or the namespace's Pod Security
        level, its `pod-security.kubernetes.io/enforce` label) refuses; empty: allowed."""
        refusals = [*self._image("spec.image", spec.image)]
        volume = spec.checkpoint.volume
        host_paths = {
            "spec.checkpoint.volume.hostPath": volume.host_path if volume is not None else None,
            "spec.export.repository.hostPath": spec.export.repository.host_path if spec.export else None,
        }
        refusals += _pod_security(namespace, pod_security, host_paths)
        for field_, source in host_paths.items():
            refusals += self._host_path(field_, source)
        if spec.export is not None and spec.export.encryption is not None:
            refusals += self._secret(
                "spec.export.encryption.keySecretRef", namespace, spec.export.encryption.key_secret_ref
            )
        return refusals

    def check_modelservice(
        self, namespace: str, spec: ModelServiceSpec, pod_security: str | None = None
    ) -> list[Refusal]:
        """Everything in a ModelService spec this policy (or the namespace's Pod Security
        level) refuses; empty: allowed."""
        refusals = [*self._image("spec.image", spec.image)]
        host_path = spec.repository.host_path if spec.repository is not None else None
        refusals += _pod_security(namespace, pod_security, {"spec.repository.hostPath": host_path})
        refusals += self._host_path("spec.repository.hostPath", host_path)
        refusals += self._secret("spec.authTokenSecretRef", namespace, spec.auth_token_secret_ref)
        refusals += self._secret("spec.encryptionKeySecretRef", namespace, spec.encryption_key_secret_ref)
        return refusals


# Pod Security Standards levels that refuse hostPath volumes; the operator's pods pass
# `restricted` otherwise (podsecurity.py), so hostPath is the one thing to foresee.
_NO_HOST_PATH_LEVELS = ("baseline", "restricted")
POD_SECURITY_LABEL = "pod-security.kubernetes.io/enforce"


def _pod_security(
    namespace: str, level: str | None, host_paths: dict[str, HostPathSource | None]
) -> list[Refusal]:
    """The namespace would refuse the pods: say so now rather than leave a Job without pods."""
    if level not in _NO_HOST_PATH_LEVELS:
        return []
    return [
        Refusal(
            field_,
            f"namespace {namespace} enforces the {level} Pod Security Standard, which refuses hostPath "
            "volumes; use a persistentVolumeClaim",
        )
        for field_, source in host_paths.items()
        if source is not None
    ]


def parse_secret_rule(text: str) -> tuple[str, str]:
    """`NAMESPACE=NAME` (globs allowed on both sides) from a command-line flag."""
    namespace, sep, name = text.partition("=")
    if not sep or not namespace or not name:
        raise ValueError(
            f"--allow-secret {text!r}: expected NAMESPACE=NAME, e.g. team-a=model-key or '*=coxswain-*'"
        )
    return namespace, name


def policy_from_flags(
    *,
    allow_host_path: bool,
    host_path_prefixes: list[str],
    image_prefixes: list[str],
    secrets: list[str],
) -> TenancyPolicy:
    """The policy the operator's flags describe (see cli/operator.py)."""
    for prefix in host_path_prefixes:
        if not prefix.startswith("/"):
            raise ValueError(f"--host-path-prefix {prefix!r}: must be an absolute path")
    rules: dict[str, list[str]] = {}
    for text in secrets:
        namespace, name = parse_secret_rule(text)
        rules.setdefault(namespace, []).append(name)
    return TenancyPolicy(
        allow_host_path=allow_host_path,
        host_path_prefixes=tuple(host_path_prefixes),
        image_prefixes=tuple(image_prefixes) if image_prefixes else DEFAULT_IMAGE_PREFIXES,
        secret_names={ns: tuple(names) for ns, names in rules.items()},
    )
