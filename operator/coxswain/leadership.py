"""Which replica acts: the holder of a coordination.k8s.io Lease (what controller-runtime does).

Every replica watches and keeps its caches warm; only the Lease's holder runs reconcile
passes. The holder renews the Lease every `retry` seconds; another replica takes it over
once the holder's record (holder, renewTime) has not changed for the Lease's
leaseDurationSeconds, as measured on the *waiting* replica's own clock (no trust in clocks
agreeing across machines).
A holder that cannot renew for `renew_deadline` seconds stops acting before anyone could
take over (renew_deadline < duration). On a clean shutdown the holder gives the Lease up, so
a standby takes over at once.

Waiting is never silent: the replica logs at INFO who holds the Lease and when it would
take over, whenever that changes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from lightkube import ApiError, AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

from coxswain.clock import Clock, LoopClock

log = logging.getLogger("coxswain.leadership")

_SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def default_identity() -> str:
    """This replica's name in the Lease: the pod's name (the chart sets POD_ID), else host + random."""
    pod = os.environ.get("POD_ID")
    return pod or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def default_namespace() -> str:
    """Where the Lease lives: $POD_NAMESPACE, the pod's own namespace, else `default`."""
    namespace = os.environ.get("POD_NAMESPACE")
    if namespace:
        return namespace
    try:
        with open(_SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


class Leadership:
    """Whether this replica acts now, and a way to wait until it does."""

    def __init__(self) -> None:
        self._leading = asyncio.Event()
        self._on_lost: list[Callable[[], None]] = []

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    async def wait(self) -> None:
        """Return once this replica leads (at once if it does)."""
        await self._leading.wait()

    def on_lost(self, callback: Callable[[], None]) -> None:
        self._on_lost.append(callback)

    def _set(self, leading: bool) -> None:
        if leading == self.leading:
            return
        if leading:
            self._leading.set()
            return
        self._leading.clear()
        for callback in self._on_lost:
            callback()

    async def run(self) -> None:
        """Keep the leadership current until cancelled (nothing to do for a standalone replica)."""

    async def release(self) -> None:
        """Give the leadership up (shutdown)."""

    @classmethod
    def standalone(cls) -> Leadership:
        """A replica that always acts (`--standalone`: one replica, or tests)."""
        leadership = cls()
        leadership._set(True)
        return leadership


@dataclass
class LeaseElection(Leadership):
    client: AsyncClient
    name: str
    namespace: str
    identity: str = field(default_factory=default_identity)
    clock: Clock = field(default_factory=LoopClock)
    duration: float = 15.0
    renew_deadline: float = 10.0
    retry: float = 2.0
    _observed: tuple[Any, Any] | None = None  # the holder's last record seen: (holder, renewTime)
    _observed_at: float = 0.0  # our clock when that record was first seen
    _last_renewal: float | None = None
    _said: str = ""  # the last thing logged about waiting or failing (said again when it changes)

    def __post_init__(self) -> None:
        Leadership.__init__(self)

    @property
    def where(self) -> str:
        return f"Lease {self.namespace}/{self.name}"

    async def run(self) -> None:
        log.info("%s: this replica is %r; it acts while it holds the Lease", self.where, self.identity)
        while True:
            await self.step()
            await self.clock.sleep(self.retry)

    async def step(self) -> None:
        """One try to acquire or renew the Lease; updates `leading`."""
        now = self.clock.monotonic()
        try:
            held = await self._try()
        except (ApiError, httpx.HTTPError, OSError) as exc:
            held = None
            message = exc.status.message if isinstance(exc, ApiError) else f"{type(exc).__name__}: {exc}"
            self._say(
                logging.WARNING,
                f"{self.where}: cannot read or renew it ({message}); "
                "the operator needs get, create and update on leases.coordination.k8s.io there",
            )
        if held is True:
            self._last_renewal = now
            if not self.leading:
                log.info("%s: this replica (%s) leads now and acts", self.where, self.identity)
                self._said = ""
            self._set(True)
            return
        if self.leading and (
            held is False or self._last_renewal is None or now - self._last_renewal > self.renew_deadline
        ):
            log.warning(
                "%s: lost it (%s); this replica stops acting",
                self.where,
                "another replica holds it"
                if held is False
                else f"not renewed for {self.renew_deadline:.0f} s",
            )
            self._set(False)

    async def _try(self) -> bool:
        """True: we hold it now. False: another replica does (and may still act)."""
        now = self.clock.now()
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            spec = LeaseSpec(
                holderIdentity=self.identity,
                leaseDurationSeconds=int(self.duration),
                acquireTime=now,
                renewTime=now,
                leaseTransitions=0,
            )
            try:
                await self.client.create(
                    Lease(metadata=ObjectMeta(name=self.name, namespace=self.namespace), spec=spec)
                )
            except ApiError as conflict:
                if conflict.status.code == 409:
                    return False  # another replica created it first
                raise
            return True
        spec = lease.spec or LeaseSpec()
        holder = spec.holderIdentity
        record = (holder, spec.renewTime)
        mono = self.clock.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, mono
        if holder and holder != self.identity:
            # The holder's own promise (leaseDurationSeconds), as client-go reads it.
            duration = float(spec.leaseDurationSeconds or self.duration)
            if self._observed_at + duration > mono:
                self._say(
                    logging.INFO,
                    f"{self.where} is held by {holder}: this replica waits and acts only if {holder} "
                    f"stops renewing it for {duration:.0f} s",
                )
                return False
            log.info("%s: %s stopped renewing it; taking over", self.where, holder)
        if holder != self.identity:
            spec.acquireTime = now
            spec.leaseTransitions = (spec.leaseTransitions or 0) + 1
        spec.holderIdentity = self.identity
        spec.renewTime = now
        spec.leaseDurationSeconds = int(self.duration)
        lease.spec = spec
        try:
            # `replace` sends our resourceVersion: if another replica wrote in between, 409.
            await self.client.replace(lease)
        except ApiError as exc:
            if exc.status.code == 409:
                return False
            raise
        return True

    async def release(self) -> None:
        """Hand the Lease back at shutdown so that a standby takes over now, not in `duration` s."""
        if not self.leading:
            return
        self._set(False)
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
            if lease.spec is None or lease.spec.holderIdentity != self.identity:
                return
            lease.spec.holderIdentity = None
            lease.spec.leaseDurationSeconds = 1
            lease.spec.renewTime = self.clock.now()
            await self.client.replace(lease)
            log.info("%s: released at shutdown", self.where)
        except (ApiError, httpx.HTTPError, OSError) as exc:
            log.warning(
                "%s: could not release it at shutdown (%s); a standby takes over later", self.where, exc
            )

    def _say(self, level: int, message: str) -> None:
        if message != self._said:
            log.log(level, message)
            self._said = message
