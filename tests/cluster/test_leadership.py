"""Leader election through a coordination.k8s.io Lease, on the real API server.

The elections run in this process with a ManualClock (tests step it: no sleeping); the last
test runs a real operator process that must wait, and write nothing, while another replica
holds the Lease, and act as soon as it may.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.coordination_v1 import Lease

from cluster_fixtures import ClusterHandle, wait_for
from coxswain.clock import ManualClock
from coxswain.kube import TRAININGJOB_RESOURCE
from coxswain.leadership import LeaseElection
from coxswain.trainingjob import naming
from operator_fixtures import OperatorProcess, free_port

pytestmark = pytest.mark.cluster

LEASE = "coxswain-test"


@pytest.fixture
async def client(cluster: ClusterHandle) -> AsyncIterator[AsyncClient]:
    async_client = AsyncClient(config=KubeConfig.from_file(cluster.kubeconfig))
    yield async_client
    await async_client.close()


def _election(client: AsyncClient, namespace: str, identity: str, clock: ManualClock) -> LeaseElection:
    return LeaseElection(client=client, name=LEASE, namespace=namespace, identity=identity, clock=clock)


async def test_one_replica_leads_the_other_waits_and_takes_over_when_renewals_stop(
    client: AsyncClient, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    a = _election(client, namespace, "replica-a", clock)
    b = _election(client, namespace, "replica-b", clock)
    await a.step()  # no Lease yet: a creates it and leads
    assert a.leading
    with caplog.at_level("INFO", logger="coxswain.leadership"):
        await b.step()
    assert not b.leading
    assert "held by replica-a" in caplog.text and "waits" in caplog.text
    lease = await client.get(Lease, LEASE, namespace=namespace)
    assert lease.spec is not None and lease.spec.holderIdentity == "replica-a"
    # a renews; b sees the record change and keeps waiting, however long that goes on
    for _ in range(20):
        await clock.advance(2)
        await a.step()
        await b.step()
        assert a.leading and not b.leading
    # a stops renewing (killed): b takes over once the record has not changed for 15 s
    await clock.advance(14)
    await b.step()
    assert not b.leading
    await clock.advance(2)
    await b.step()
    assert b.leading
    lease = await client.get(Lease, LEASE, namespace=namespace)
    assert lease.spec is not None and lease.spec.holderIdentity == "replica-b"
    assert lease.spec.leaseTransitions == 1
    # a comes back: it sees b's Lease and stops acting at once
    await a.step()
    assert not a.leading


async def test_a_holder_that_cannot_renew_stops_acting_before_anyone_may_take_over(
    client: AsyncClient, namespace: str
) -> None:
    clock = ManualClock()
    a = _election(client, namespace, "replica-a", clock)
    await a.step()
    assert a.leading
    lost: list[bool] = []
    a.on_lost(lambda: lost.append(True))
    a.name = "no-such/lease"  # every request fails from now on (an invalid name: 4xx)
    await clock.advance(9)
    await a.step()
    assert a.leading  # within the renew deadline (10 s)
    await clock.advance(2)
    await a.step()
    assert not a.leading and lost == [True]


async def test_release_at_shutdown_lets_the_standby_take_over_at_once(
    client: AsyncClient, namespace: str
) -> None:
    clock = ManualClock()
    a = _election(client, namespace, "replica-a", clock)
    b = _election(client, namespace, "replica-b", clock)
    await a.step()
    await b.step()
    assert a.leading and not b.leading
    await a.release()
    assert not a.leading
    await b.step()
    assert b.leading


def _trainingjob(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "task": {"builtin": {"model": "mlp", "dataset": "digits"}},
            "nodes": 1,
            "resources": {"cpu": "1", "memory": "1Gi"},
        },
    }


def _pending(op: OperatorProcess) -> float:
    for line in op.metrics().splitlines():
        if line.startswith('coxswain_reconcile_pending{kind="TrainingJob"}'):
            return float(line.split()[-1])
    return 0.0


def test_a_replica_that_does_not_hold_the_lease_waits_says_so_and_never_writes(
    cluster: ClusterHandle, op_namespace: str
) -> None:
    ns = op_namespace
    # Another replica holds the Lease (and keeps its record fresh enough for the test).
    cluster.client.create(
        Lease(
            metadata=ObjectMeta(name=LEASE, namespace=ns),
            spec=LeaseSpec(holderIdentity="the-other-replica", leaseDurationSeconds=3600),
        )
    )
    log_path = Path(tempfile.mkdtemp(prefix="coxswain-operator-")) / "operator.log"
    op = OperatorProcess(
        cluster, log_path, free_port(), free_port(), leadership=["--lease", LEASE, "--lease-namespace", ns]
    )
    op.start()
    try:
        wait_for(
            lambda: "held by the-other-replica" in log_path.read_text(),
            60,
            "the operator saying at INFO that it waits for the other replica",
        )
        cluster.client.create(TRAININGJOB_RESOURCE(_trainingjob("waits")), namespace=ns)
        # It has seen the job and queued it: a replica that led would act on it now.
        wait_for(lambda: _pending(op) >= 1 or None, 60, "the TrainingJob queued by the waiting replica")
        tj = cluster.client.get(TRAININGJOB_RESOURCE, "waits", namespace=ns)
        assert not tj.get("status"), "a replica that does not lead wrote a status"
        assert list(cluster.client.list(Job, namespace=ns)) == [], "a replica that does not lead made a Job"
        assert not (tj.metadata.annotations or {}), "kopf wrote its annotations"
        assert not (tj.metadata.finalizers or []), "kopf added a finalizer"
        # The other replica goes away cleanly (gives the Lease up): this one acts at once.
        lease = cluster.client.get(Lease, LEASE, namespace=ns)
        assert lease.spec is not None
        lease.spec.holderIdentity = None
        cluster.client.replace(lease)
        wait_for(
            lambda: list(cluster.client.list(Job, namespace=ns, labels={naming.LABEL_TRAININGJOB: "waits"})),
            60,
            "the Job made once this replica leads",
        )
        assert "leads now and acts" in log_path.read_text()
    finally:
        op.stop()


def test_a_plain_start_with_no_flags_leads_and_acts(cluster: ClusterHandle, op_namespace: str) -> None:
    """`coxswain operator run` as the README's tour starts it: no peering object, no Lease yet.
    It creates its Lease (namespace `default`), says so, and acts."""
    log_path = Path(tempfile.mkdtemp(prefix="coxswain-operator-")) / "operator.log"
    op = OperatorProcess(cluster, log_path, free_port(), free_port(), leadership=[])
    op.start()
    try:
        cluster.client.create(TRAININGJOB_RESOURCE(_trainingjob("plain")), namespace=op_namespace)
        wait_for(
            lambda: (
                cluster.client.get(TRAININGJOB_RESOURCE, "plain", namespace=op_namespace).get("status") or {}
            ).get("phase"),
            90,
            "a phase on the TrainingJob",
        )
        text = log_path.read_text()
        assert "Lease default/coxswain" in text and "leads now and acts" in text, text[-2000:]
    finally:
        op.stop()
    # Stopping gave the Lease up: the next replica to start acts at once.
    lease = cluster.client.get(Lease, "coxswain", namespace="default")
    assert lease.spec is not None and not lease.spec.holderIdentity
