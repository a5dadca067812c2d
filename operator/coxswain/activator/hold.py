"""Waiting for a ready server pod, shared by the HTTP and gRPC sides: one `Hold` per request
(or connection), counted in coxswain_activator_held_requests while it waits and observed in
coxswain_activator_hold_seconds when the wait ends, however it ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import Gauge, Histogram

from coxswain.activator.backends import Address, Backends, Key
from coxswain.activator.watch import Waker

# While a request waits, the wake-up is asked for again this often: the autoscaler may have
# written replicas 0 between the first ask and the pod's start.
REASK_SECONDS = 5.0

HELD = Gauge(
    "coxswain_activator_held_requests",
    "Requests waiting for a ready server pod",
    ["namespace", "modelservice"],
)
HOLD_SECONDS = Histogram(
    "coxswain_activator_hold_seconds",
    "How long a request (or gRPC connection) waited for a ready server pod, timed out ones included",
    ["namespace", "modelservice"],
    buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)


@dataclass
class Hold:
    backends: Backends
    waker: Waker
    key: Key
    deadline: float
    clock: Callable[[], float]
    started: float = field(init=False)
    _waiting: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.started = self.clock()

    async def address(self, port_name: str) -> Address | None:
        """A ready pod's address on `port_name`, waking the service and waiting for one while
        there is none; None once the deadline has passed."""
        while True:
            address = self.backends.pick(self.key, port_name)
            if address is not None:
                self.end()
                return address
            remaining = self.deadline - self.clock()
            if remaining <= 0:
                return None
            if not self._waiting:
                self._waiting = True
                HELD.labels(*self.key).inc()
            self.waker.wake(self.key)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, REASK_SECONDS)):
                    await self.backends.wait_ready(self.key)

    def end(self) -> None:
        """The wait is over (a pod, the timeout, or the client left): count it once."""
        if self._waiting:
            self._waiting = False
            HOLD_SECONDS.labels(*self.key).observe(self.clock() - self.started)
            HELD.labels(*self.key).dec()
