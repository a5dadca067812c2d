"""Which ModelService a request is for: the Host (or gRPC :authority) it was sent to.

Clients call a ModelService by its Service's DNS name, `<name>.<namespace>.svc[.cluster.local]`
or `<name>.<namespace>`; that name is all the activator sees, since kube-proxy hands it
the connection, not the Service. A bare `<name>` (same-namespace short name) or an IP names
no namespace: such a request is refused with the forms that work.
"""

from __future__ import annotations

from coxswain.activator.backends import Key

SUFFIXES = (".svc.cluster.local", ".svc")


class UnknownHost(ValueError):
    pass


def modelservice_of(host: str) -> Key:
    name = host.strip().lower()
    if name.startswith("["):  # an IPv6 literal
        raise UnknownHost(f"Host {host!r} is an address")
    name = name.rsplit(":", 1)[0] if ":" in name else name
    name = name.rstrip(".")
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    parts = name.split(".")
    if len(parts) != 2 or not all(parts) or all(p.isdigit() for p in parts):
        raise UnknownHost(
            f"Host {host!r} does not name a ModelService: call it as <name>.<namespace>.svc.cluster.local "
            "(or <name>.<namespace>.svc, <name>.<namespace>)"
        )
    service, namespace = parts
    return (namespace, service)
