"""One pass of the shared runtime against a fake API client: what is written, in which order.

The fake records every write; the planner, builders, executor and the pass are the real ones.
(The controller suites in tests/cluster run the same code against a real API server.)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from lightkube import ApiError

from coxswain.clock import ManualClock, settle
from coxswain.kube import TRAININGJOB_RESOURCE
from coxswain.leadership import Leadership
from coxswain.runtime import LEGACY_FINALIZER, Runtime
from coxswain.trainingjob.controller import KIND, TrainingJobs

pytestmark = pytest.mark.unit

KEY = ("ns", "tj")


class FakeClient:
    """Records writes as (verb, what) and answers like the API server would."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []
        self.fail_next: Exception | None = None
        self.version = 10

    def _maybe_fail(self) -> None:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc

    async def patch(self, resource: Any, name: str, obj: Any, **kwargs: Any) -> dict[str, Any]:
        self._maybe_fail()
        self.version += 1
        what = "status" if resource is TRAININGJOB_RESOURCE.Status else f"{resource.__name__}/{name}"
        self.writes.append(("patch", what))
        body = tj_body()
        body["metadata"]["resourceVersion"] = str(self.version)
        if isinstance(obj, dict) and "status" in obj:
            body["status"] = obj["status"]
        return body

    async def create(self, obj: Any) -> Any:
        self._maybe_fail()
        self.writes.append(("create", type(obj).__name__))
        return obj

    async def apply(self, obj: Any, **kwargs: Any) -> Any:
        self._maybe_fail()
        self.writes.append(("apply", type(obj).__name__))
        return obj

    async def delete(self, resource: Any, name: str, **kwargs: Any) -> None:
        self.writes.append(("delete", f"{resource.__name__}/{name}"))

    async def close(self) -> None:
        pass


def tj_body(**meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {
            "name": "tj",
            "namespace": "ns",
            "uid": "u1",
            "generation": 1,
            "resourceVersion": "5",
            **meta,
        },
        "spec": {"task": {"builtin": {"model": "mlp", "dataset": "digits"}}, "nodes": 2},
    }


def runtime_with(client: FakeClient) -> tuple[Runtime, list[tuple[str, str]]]:
    posted: list[tuple[str, str]] = []

    def post(obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        posted.append((type_, reason))
        client.writes.append(("event", reason))

    runtime = Runtime(client=client, http=httpx.AsyncClient(), clock=ManualClock())  # type: ignore[arg-type]
    runtime.post_event = post
    runtime.add(TrainingJobs(runtime))
    return runtime, posted


async def test_a_new_job_gets_its_status_first_then_its_children_then_events() -> None:
    client = FakeClient()
    runtime, posted = runtime_with(client)
    controller = runtime.controllers[KIND]
    controller.bodies[KEY] = tj_body()
    delay = await controller.process(KEY)
    verbs = [w[0] for w in client.writes]
    assert client.writes[0] == ("patch", "status"), client.writes
    assert verbs.count("patch") == 1, "status is written once per pass"
    assert {w for w in client.writes if w[0] == "create"} == {
        ("create", "ConfigMap"),
        ("create", "Service"),
        ("create", "Job"),
    }
    assert verbs.index("event") > max(i for i, v in enumerate(verbs) if v == "create")
    assert ("Normal", "JobCreated") in posted
    assert delay == 60.0  # pending: the pods' watch events queue the next pass; this is the resync
    await runtime.close()


async def test_a_pass_that_changes_nothing_writes_nothing() -> None:
    client = FakeClient()
    runtime, _ = runtime_with(client)
    controller = runtime.controllers[KIND]
    controller.bodies[KEY] = tj_body()
    await controller.process(KEY)
    first = list(client.writes)
    # The watch delivers our own write back; the Job exists now (as the index would show).
    written = controller.written.freshest(controller.bodies[KEY])
    controller.bodies[KEY] = written
    runtime.indexes["trainingjob_jobs"] = {
        KEY: [
            {
                "metadata": {
                    "name": "tj-1",
                    # Slimmed as the index keeps it: controlled by the TrainingJob (uid u1).
                    "uid": "job-1",
                    "controllerUid": "u1",
                    "labels": {"coxswain.dev/trainingjob": "tj", "coxswain.dev/attempt": "1"},
                },
                "spec": {},
                "status": {},
            }
        ]
    }
    await controller.process(KEY)  # the Job is seen: the status says why pods are missing
    controller.bodies[KEY] = controller.written.freshest(controller.bodies[KEY])
    client.writes.clear()
    await controller.process(KEY)  # nothing new observed
    assert client.writes == [], f"a pass that saw nothing new wrote {client.writes} (first: {first})"
    await runtime.close()


async def test_a_pass_before_the_job_watch_catches_up_creates_nothing_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = FakeClient()
    runtime, _ = runtime_with(client)
    controller = runtime.controllers[KIND]
    controller.bodies[KEY] = tj_body()
    with caplog.at_level(logging.INFO, logger="coxswain.trainingjob"):
        await controller.process(KEY)
        # Our status write comes back through the watch (and queues a pass) before the Job's
        # own watch event: the index has no Job yet.
        controller.bodies[KEY] = controller.written.freshest(controller.bodies[KEY])
        client.writes.clear()
        await controller.process(KEY)
    assert [w for w in client.writes if w[0] == "create"] == [], client.writes
    created = [r for r in caplog.records if "created Job" in r.getMessage()]
    assert len(created) == 1, [r.getMessage() for r in created]
    await runtime.close()


async def test_api_and_connection_errors_back_off_per_key_and_a_success_resets() -> None:
    client = FakeClient()
    runtime, _ = runtime_with(client)
    controller = runtime.controllers[KIND]
    controller.bodies[KEY] = tj_body()
    client.fail_next = httpx.ConnectError("connection refused")
    first = await controller.process(KEY)
    client.fail_next = ApiError(
        response=httpx.Response(500, json={"message": "etcd timeout", "code": 500}),
    )
    second = await controller.process(KEY)
    assert first is not None and second is not None
    assert 0.5 <= first <= 1.0 and 1.0 <= second <= 2.0  # jittered, doubling
    assert client.writes == []
    await runtime.close()


async def test_a_namespace_being_deleted_is_not_retried() -> None:
    client = FakeClient()
    runtime, _ = runtime_with(client)
    controller = runtime.controllers[KIND]
    controller.bodies[KEY] = tj_body()
    message = 'configmaps "tj-config" is forbidden: unable to create new content in namespace ns because it is being terminated'
    client.fail_next = ApiError(
        response=httpx.Response(
            403,
            json={
                "message": message,
                "reason": "Forbidden",
                "code": 403,
                "details": {"causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace"}]},
            },
        ),
    )
    assert await controller.process(KEY) is None
    # Any other 403 (say, RBAC) is retried.
    client.fail_next = ApiError(response=httpx.Response(403, json={"message": "forbidden", "code": 403}))
    assert await controller.process(KEY) is not None
    await runtime.close()


async def test_the_finalizer_of_older_operators_is_removed_on_the_first_pass() -> None:
    client = FakeClient()
    runtime, _ = runtime_with(client)
    controller = runtime.controllers[KIND]
    controller.bodies[KEY] = tj_body(finalizers=[LEGACY_FINALIZER, "someone.else/keep"])
    await controller.process(KEY)
    assert ("patch", "status") in client.writes
    assert any(w == ("patch", f"{TRAININGJOB_RESOURCE.__name__}/tj") for w in client.writes)
    await runtime.close()


async def test_a_body_that_does_not_parse_is_left_until_it_changes() -> None:
    client = FakeClient()
    runtime, _ = runtime_with(client)
    controller = runtime.controllers[KIND]
    body = tj_body()
    body["spec"]["nodes"] = 0
    controller.bodies[KEY] = body
    assert await controller.process(KEY) is None
    assert client.writes == []
    await runtime.close()


async def test_a_replica_that_does_not_lead_queues_but_never_writes_until_it_leads() -> None:
    client = FakeClient()
    runtime, _ = runtime_with(client)
    runtime.leadership = Leadership()  # not leading (another replica holds the Lease)
    controller = runtime.controllers[KIND]
    controller.seen(KEY, tj_body())  # the watch event: starts the workers, queues the key
    await settle()
    assert client.writes == []
    assert len(controller.queue) == 1  # queued, not taken: workers wait for the leadership
    runtime.leadership._set(True)  # the Lease is ours now
    await settle()
    assert client.writes and client.writes[0] == ("patch", "status")
    await runtime.close()
