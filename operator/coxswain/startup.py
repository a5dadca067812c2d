"""Operator start-up and shutdown: settings, shared clients, the two controllers, leadership.

kopf runs standalone on every replica (watches and caches only: no kopf handler writes
anything); which replica acts is decided by our own Lease (coxswain.leadership), set up from
the command line's options before kopf starts (`configure_leadership`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import kopf

from coxswain import metrics, watch_only
from coxswain.leadership import Leadership, LeaseElection, default_namespace
from coxswain.modelservice.controller import ModelServices
from coxswain.runtime import Runtime
from coxswain.tenancy import TenancyPolicy
from coxswain.trainingjob.controller import TrainingJobs

log = logging.getLogger("coxswain.startup")


@dataclass
class LeadershipOptions:
    standalone: bool = False
    lease: str = "coxswain"
    namespace: str | None = None  # default: the pod's own namespace, else `default`


_options = LeadershipOptions()


def configure_leadership(options: LeadershipOptions) -> None:
    """Called by `coxswain operator run` before kopf starts."""
    global _options
    _options = options


@kopf.on.startup()
async def configure(
    *, settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **kwargs: Any
) -> None:
    # Our own Events say what happened; kopf's per-handler chatter would drown them.
    settings.posting.level = logging.WARNING
    # Watches are the source of truth; restart them now and then so a silently broken one heals.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    # No limit on kopf's per-object workers (each exits when its object is idle): with a limit,
    # a restart that lists more objects of an indexed resource than the limit deadlocks, as
    # every worker waits for all objects to be indexed and the rest never get a worker.
    settings.batching.worker_limit = None
    # Our kopf handlers only watch: kopf keeps no diff base or progress on any object.
    watch_only.configure(settings)
    runtime = Runtime.create()
    if not _options.standalone:
        runtime.leadership = LeaseElection(
            client=runtime.client,
            name=_options.lease,
            namespace=_options.namespace or default_namespace(),
            clock=runtime.clock,
        )
    else:
        runtime.leadership = Leadership.standalone()
    memo["runtime"] = runtime
    # The tenancy policy from `coxswain operator run`'s flags (the safe default otherwise).
    policy = memo.get("tenancy")
    runtime.tenancy = policy if isinstance(policy, TenancyPolicy) else TenancyPolicy()
    # kopf injects its indexes (live views) by their function's name, also into start-up handlers.
    for index in (
        "trainingjob_jobs",
        "trainingjob_pods",
        "trainingjob_workloads",
        "modelservice_pods",
        "modelservice_deployments",
        "modelservice_services",
        "modelservice_configmaps",
        "modelservice_hpas",
        "modelservice_replicasets",
        "modelservice_endpointslices",
        "modelservice_activators",
        "default_storage_classes",
        "namespace_pod_security",
    ):
        runtime.indexes[index] = kwargs[index]
    for kind in (TrainingJobs(runtime), ModelServices(runtime)):
        controller = runtime.add(kind)
        # coxswain_reconcile_pending: objects queued and waiting for a worker.
        metrics.watch_reconcile_pending(kind.name, controller.queue)
    runtime.run_leadership()
    logger.info("coxswain operator started")


@kopf.on.cleanup()
async def close(*, memo: kopf.Memo, **_: Any) -> None:
    runtime = memo.get("runtime")
    if isinstance(runtime, Runtime):
        await runtime.close()
