"""Decide, from what is observed (observation.py), the TrainingJob's status and the actions to take.

Level-triggered and pure: the same observation gives the same plan, so an operator killed
at any point and started again carries on (style.md: KEP-2307). The status is written
*before* the actions: a new attempt number is recorded first, then the old Job is
deleted and the next one made; a restarted operator finds the record and finishes the step
(deleting stale attempts and creating the missing one are both idempotent).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from coxswain.api.common import Condition, ConditionStatus
from coxswain.api.conditions import TrainingJobConditionType as C
from coxswain.api.conditions import TrainingJobPhase as Phase
from coxswain.api.conditions import TrainingJobReason as R
from coxswain.api.trainingjob import (
    MAX_ATTEMPT_RECORDS,
    MAX_ATTEMPTS,
    AttemptRecord,
    CleanPodPolicy,
    FailureAction,
    LastFailure,
    ProgressState,
    TrainingJob,
    TrainingJobStatus,
)
from coxswain.conditions import get_condition, set_condition
from coxswain.events import Event
from coxswain.trainingjob import naming
from coxswain.trainingjob.failures import FailureCause, PodFailure, root_cause
from coxswain.trainingjob.observation import (
    Observed,
    attempt_of,
    exported_model,
    final_progress,
    job_condition,
    job_shape,
    last_checkpoint,
    merge_progress,
    pending_reason,
    rank0_pod,
    resumed_from_step,
)
from coxswain.trainingjob.queueing import view, workload_of

TERMINAL = (Phase.SUCCEEDED, Phase.FAILED)


class ActionKind(StrEnum):
    ENSURE_CONFIG = "EnsureConfig"  # create, or update when the spec changed
    CREATE_CONFIG = "CreateConfig"  # create only (before a Job): an existing one is current
    ENSURE_SERVICE = "EnsureService"
    ENSURE_CHECKPOINT_CLAIM = "EnsureCheckpointClaim"  # create only; kept across attempts
    CREATE_JOB = "CreateJob"
    DELETE_JOB = "DeleteJob"
    SUSPEND_JOB = "SuspendJob"
    RESUME_JOB = "ResumeJob"
    DELETE_TRAININGJOB = "DeleteTrainingJob"
    HANDOFF = "Handoff"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    name: str = ""
    attempt: int = 0


@dataclass(frozen=True)
class RestartRecord:
    cause: str
    charged: bool


@dataclass
class Plan:
    status: TrainingJobStatus
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    restart: RestartRecord | None = None  # for metrics
    preempted: bool = False  # Kueue evicted the admitted gang on this pass (for metrics)
    finished: Phase | None = None  # set on the pass that finishes the job (for metrics)
    checkpoint_claim: str | None = None  # the operator-made claim a new attempt's Job mounts


def backoff_seconds(tj: TrainingJob, restarts_so_far: int) -> float:
    """Exponential back-off: base * 2^(n-1) for the n-th restart, capped."""
    policy = tj.spec.failure_policy
    n = max(restarts_so_far, 1)
    return float(min(policy.backoff_seconds * 2 ** (n - 1), policy.max_backoff_seconds))


def _start_time(pod: dict[str, Any]) -> datetime | None:
    value = pod.get("status", {}).get("startTime")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None
    except (AttributeError, ValueError):
        return None


class Planner:
    """One reconcile decision for one TrainingJob at time `now`."""

    def __init__(self, tj: TrainingJob, observed: Observed, now: datetime) -> None:
        self.tj = tj
        self.spec = tj.spec
        self.name = tj.metadata.name or ""
        self.obs = observed
        self.now = now
        self.gen = tj.metadata.generation
        status = tj.status or TrainingJobStatus()
        self.status = status.model_copy(deep=True)
        self.plan = Plan(status=self.status)
        self.previous_phase = status.phase

    # -- helpers ---------------------------------------------------------------------------
    def cond(self, type_: C, value: bool, reason: R, message: str) -> None:
        self.status.conditions = set_condition(
            self.status.conditions, type_.value, value, reason.value, message, self.now, self.gen
        )

    def clear(self, type_: C, reason: R, message: str = "") -> None:
        existing = get_condition(self.status.conditions, type_.value)
        if existing is not None and existing.status != ConditionStatus.FALSE:
            self.cond(type_, False, reason, message)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.plan.events.append(Event(type_, reason, message))

    def set_phase(self, phase: Phase) -> None:
        self.status.phase = phase

    def requeue(self, seconds: float) -> None:
        seconds = max(seconds, 0.5)
        current = self.plan.requeue_after
        self.plan.requeue_after = seconds if current is None else min(current, seconds)

    @property
    def attempt(self) -> int:
        return self.status.attempt or 1

    def jobs_of_attempt(self, attempt: int) -> list[dict[str, Any]]:
        return [j for j in self.obs.jobs if attempt_of(j) == attempt]

    def pods_of_attempt(self, attempt: int) -> list[dict[str, Any]]:
        return [p for p in self.obs.pods if attempt_of(p) == attempt]

    # -- the decision ----------------------------------------------------------------------
    def run(self) -> Plan:
        spec_changed = self.status.observed_generation != self.gen
        self.status.observed_generation = self.gen
        if self.status.attempt is None:
            self.status.attempt = 1
            self.status.restarts = self.status.restarts or 0
            self.status.uncounted_restarts = self.status.uncounted_restarts or 0
        if self.status.phase in TERMINAL:
            self.finished_housekeeping()
            return self.plan
        if self.obs.refusals:
            # Nothing is made for a spec the platform team's policy refuses; its fields are
            # immutable, so the user creates a corrected TrainingJob.
            refused = "; ".join(str(r) for r in self.obs.refusals)
            self.fail(R.POLICY_REFUSED, f"refused by the cluster's tenancy policy: {refused}")
            return self.plan
        if get_condition(self.status.conditions, C.CHECKPOINTS_DURABLE.value) is None and self.obs.jobs:
            # A job made before the operator said where checkpoints live (an upgrade).
            self.checkpoint_condition()
        if self.resized():
            return self.plan
        if spec_changed:
            # Mutable fields (env of a suspended job, serving, ...) reach the trainer's config.
            self.plan.actions += [Action(ActionKind.ENSURE_CONFIG), Action(ActionKind.ENSURE_SERVICE)]
        # Attempts other than the current one are leftovers of a restart: remove them.
        for stale in self.obs.jobs:
            if attempt_of(stale) != self.attempt:
                self.plan.actions.append(Action(ActionKind.DELETE_JOB, stale["metadata"]["name"]))
        if self.deadline_passed():
            return self.plan
        current = self.jobs_of_attempt(self.attempt)
        job = current[0] if current else None
        if self.spec.suspend:
            self.suspend(job)
            return self.plan
        if job is None:
            self.create_or_wait()
            return self.plan
        if self.spec.queue_name:
            # Kueue owns the Job's suspend: never un-suspend it here.
            if self.queued(job):
                return self.plan
        elif job.get("spec", {}).get("suspend"):
            self.plan.actions.append(Action(ActionKind.RESUME_JOB, job["metadata"]["name"]))
        self.resumed()
        self.observe_job(job)
        return self.plan

    # -- the gang's shape ---------------------------------------------------------------
    def record_of(self, attempt: int) -> AttemptRecord | None:
        return next((r for r in self.status.attempts if r.attempt == attempt), None)

    def shape_of_current_attempt(self) -> tuple[int, int] | None:
        """(nodes, procsPerNode) the current attempt was made with (None: no Job made yet)."""
        record = self.record_of(self.attempt)
        if record is not None:
            return record.nodes, record.procs_per_node
        # A Job made before attempts were recorded (an operator upgrade).
        shapes = [job_shape(j) for j in self.jobs_of_attempt(self.attempt)]
        return next((s for s in shapes if s is not None), None)

    def record_attempt(self) -> None:
        """Written with the status before the attempt's Job is made (kept: the newest ones)."""
        if self.record_of(self.attempt) is not None:
            return
        spec = self.spec
        record = AttemptRecord(
            attempt=self.attempt,
            nodes=spec.nodes,
            procs_per_node=spec.procs_per_node,
            world_size=spec.nodes * spec.procs_per_node,
        )
        self.status.attempts = [*self.status.attempts, record][-MAX_ATTEMPT_RECORDS:]

    def note_resumed_step(self, step: int | None) -> None:
        self.status.resumed_from_step = step
        record = self.record_of(self.attempt)
        if record is not None and step is not None and record.resumed_from_step != step:
            self.status.attempts = [
                r.model_copy(update={"resumed_from_step": step}) if r.attempt == self.attempt else r
                for r in self.status.attempts
            ]

    def resized(self) -> bool:
        """nodes/procsPerNode changed while suspended (the CRD allows it then only): a Job's pods
        cannot change shape, so the current attempt ends and the next one, made when the job is
        resumed, runs the new gang from the last checkpoint. Not charged to the restart budget.
        True when the job failed instead (no attempt number left)."""
        old = self.shape_of_current_attempt()
        new = (self.spec.nodes, self.spec.procs_per_node)
        if old is None or old == new:
            return False
        previous = self.attempt
        if previous + 1 > MAX_ATTEMPTS:
            self.fail(
                R.ATTEMPT_LIMIT_REACHED,
                f"the gang was resized, which needs attempt {previous + 1}, past the limit of "
                f"{MAX_ATTEMPTS} attempts; create a new TrainingJob to go on from its checkpoints",
            )
            return True
        self.status.attempt = previous + 1
        self.status.resumed_from_step = None  # the next attempt says where it resumed from
        checkpoint = self.status.last_checkpoint
        where = f"the last checkpoint (step {checkpoint.step})" if checkpoint else "the last checkpoint"
        when = "when the job is resumed" if self.spec.suspend else "now"
        self.event(
            "Normal",
            R.GANG_RESIZED.value,
            f"gang resized from {old[0]} x {old[1]} to {new[0]} x {new[1]} processes (world size "
            f"{old[0] * old[1]} -> {new[0] * new[1]}): attempt {previous} ends and attempt {previous + 1} "
            f"starts {when} from {where} (not charged to the restart budget)",
        )
        # The old attempt's Job goes with the stale ones below; the next attempt's is made once
        # it is gone (create_or_wait).
        return False

    def resumed(self) -> None:
        """spec.suspend went back to false: say so once, and start the running-time clocks again."""
        if get_condition(self.status.conditions, C.SUSPENDED.value) is None:
            return
        if self.status.phase == Phase.SUSPENDED:
            self.event(
                "Normal", R.JOB_RESUMED.value, "Resumed: the gang starts again from the last checkpoint"
            )
            # The deadline counts running time: suspended time is not charged (as batch/v1 Job does).
            self.status.start_time = self.now
            self._restart_stall_clock()
        self.clear(C.SUSPENDED, R.JOB_RESUMED, "spec.suspend is false")

    def finished_housekeeping(self) -> None:
        if self.spec.clean_pod_policy == CleanPodPolicy.ALL:
            for job in self.obs.jobs:
                self.plan.actions.append(Action(ActionKind.DELETE_JOB, job["metadata"]["name"]))
        ttl = self.spec.ttl_seconds_after_finished
        if ttl is not None and self.status.completion_time is not None:
            due = self.status.completion_time + timedelta(seconds=ttl)
            if self.now >= due:
                self.plan.actions.append(Action(ActionKind.DELETE_TRAININGJOB))
            else:
                self.requeue((due - self.now).total_seconds())

    def deadline_passed(self) -> bool:
        limit = self.spec.active_deadline_seconds
        if limit is None or self.status.start_time is None or self.spec.suspend:
            return False
        if self.status.phase == Phase.QUEUED:
            return False  # running time only: the clock starts again at admission
        elapsed = (self.now - self.status.start_time).total_seconds()
        if elapsed < limit:
            self.requeue(limit - elapsed)
            return False
        self.fail(
            R.DEADLINE_EXCEEDED,
            f"activeDeadlineSeconds ({limit} s) passed after {int(elapsed)} s of running time",
        )
        return True

    def suspend(self, job: dict[str, Any] | None) -> None:
        if job is not None and self.spec.queue_name:
            # Kueue would admit a suspended Job again; the user's hold deletes it instead,
            # which frees the quota too (checkpoints stay). Resuming queues a new one.
            self.plan.actions.append(Action(ActionKind.DELETE_JOB, job["metadata"]["name"]))
            self.clear(C.QUEUED, R.JOB_SUSPENDED, "suspended by spec.suspend; resuming queues the gang again")
        elif job is not None and not job.get("spec", {}).get("suspend"):
            self.plan.actions.append(Action(ActionKind.SUSPEND_JOB, job["metadata"]["name"]))
        if self.status.phase != Phase.SUSPENDED:
            self.event(
                "Normal",
                R.JOB_SUSPENDED.value,
                "Suspended: pods are stopped; progress and checkpoints are kept",
            )
        self.set_phase(Phase.SUSPENDED)
        self.cond(C.SUSPENDED, True, R.JOB_SUSPENDED, "spec.suspend is true: pods stopped, checkpoints kept")
        self.clear(C.RUNNING, R.JOB_SUSPENDED, "suspended")

    def create_or_wait(self) -> None:
        if any(attempt_of(j) != self.attempt for j in self.obs.jobs):
            # The old attempt's pods may still be writing their SIGTERM checkpoint: the next
            # attempt starts only when they are gone, so it resumes from that checkpoint.
            self.requeue(2)
            return
        if self.status.phase == Phase.RESTARTING and self.status.last_failure is not None:
            failed_at = self.status.last_failure.time or self.now
            charged = (self.status.restarts or 0) + (self.status.uncounted_restarts or 0)
            wait = backoff_seconds(self.tj, charged) - (self.now - failed_at).total_seconds()
            if wait > 0:
                self.requeue(wait)
                return
        job_name = naming.batch_job_name(self.name, self.attempt)
        storage = self.obs.checkpoint
        if storage is not None and storage.claim is not None:
            # Created once and kept: its checkpoints are what the next attempt resumes from.
            self.plan.actions.append(Action(ActionKind.ENSURE_CHECKPOINT_CLAIM, storage.claim))
            self.plan.checkpoint_claim = storage.claim
        # Said when a Job is made, which is when the choice takes effect: a default
        # StorageClass that appears later serves the next attempt, not the running one.
        self.checkpoint_condition()
        if Action(ActionKind.ENSURE_CONFIG) not in self.plan.actions:
            self.plan.actions += [Action(ActionKind.CREATE_CONFIG), Action(ActionKind.ENSURE_SERVICE)]
        self.record_attempt()
        self.plan.actions.append(Action(ActionKind.CREATE_JOB, job_name, self.attempt))
        if self.spec.queue_name:
            self.create_queued(job_name)
            return
        # A resized gang's resume makes a new Job rather than un-suspending the old one.
        self.resumed()
        if self.status.start_time is None:
            self.status.start_time = self.now
        if self.status.phase in (None, Phase.RESTARTING, Phase.SUSPENDED):
            self.event(
                "Normal",
                R.JOB_CREATED.value,
                f"Created Job {job_name} for attempt {self.attempt} ({self.spec.nodes} pods)",
            )
        self.set_phase(Phase.PENDING)
        self.cond(C.CREATED, True, R.JOB_CREATED, f"Job {job_name} created for attempt {self.attempt}")
        self.cond(C.RUNNING, False, R.PODS_STARTING, self._starting_message())
        if get_condition(self.status.conditions, C.RESTARTING.value) is not None:
            self.cond(C.RESTARTING, False, R.GANG_RESTARTING, f"attempt {self.attempt} started")

    def _starting_message(self) -> str:
        return f"waiting for {self.spec.nodes} pods of attempt {self.attempt}"

    def create_queued(self, job_name: str) -> None:
        """The attempt's Job goes to Kueue suspended: Queued until Kueue admits the gang."""
        self.status.preemptions = self.status.preemptions or 0
        message = self._waiting_message()
        if self.status.phase != Phase.QUEUED:
            self.event(
                "Normal",
                R.WAITING_FOR_ADMISSION.value,
                f"Created Job {job_name} for attempt {self.attempt}, suspended: {message}",
            )
        if get_condition(self.status.conditions, C.SUSPENDED.value) is not None:
            self.clear(C.SUSPENDED, R.JOB_RESUMED, "spec.suspend is false")
        self.set_phase(Phase.QUEUED)
        self.cond(C.CREATED, True, R.JOB_CREATED, f"Job {job_name} created for attempt {self.attempt}")
        queued = get_condition(self.status.conditions, C.QUEUED.value)
        if queued is None or queued.reason != R.PREEMPTED.value:
            # A preempted gang's next attempt keeps Kueue's eviction message until admitted.
            self.cond(C.QUEUED, True, R.WAITING_FOR_ADMISSION, message)
        self.cond(C.RUNNING, False, R.WAITING_FOR_ADMISSION, "no pod runs until Kueue admits the whole gang")
        if get_condition(self.status.conditions, C.RESTARTING.value) is not None:
            self.cond(C.RESTARTING, False, R.GANG_RESTARTING, f"attempt {self.attempt} queued")

    def _waiting_message(self) -> str:
        return f"waiting in LocalQueue {self.spec.queue_name} for Kueue to admit all {self.spec.nodes} pods"

    def queued(self, job: dict[str, Any]) -> bool:
        """Follow Kueue's admission of the current Job; True while the gang is not admitted."""
        kueue = view(workload_of(job["metadata"]["name"], self.obs.workloads))
        queued = get_condition(self.status.conditions, C.QUEUED.value)
        admitted = (
            queued is not None
            and queued.status == ConditionStatus.FALSE
            and queued.reason == R.ADMITTED.value
        )
        where = f"LocalQueue {self.spec.queue_name}"
        preempted = queued is not None and queued.reason == R.PREEMPTED.value
        if self._failed_by_eviction(job, queued):
            # The Job controller applied the pod failure policy to the pods the eviction
            # killed (it does so once the Job runs again), so this Job cannot run again: the
            # next attempt is queued and resumes from the same checkpoint. Still the
            # preemption, not a restart: nothing charged.
            name = job["metadata"]["name"]
            self.status.attempt = self.attempt + 1
            self.plan.actions.append(Action(ActionKind.DELETE_JOB, name))
            message = (
                f"preempted by Kueue: Job {name} ended with the eviction; attempt {self.attempt} is queued "
                f"in {where} and resumes from the last checkpoint (not charged to the restart budget)"
            )
            self.event("Normal", R.PREEMPTED.value, message)
            if not preempted:
                self.cond(C.QUEUED, True, R.PREEMPTED, message)
            self.set_phase(Phase.QUEUED)
            return True
        if job.get("spec", {}).get("suspend"):
            if admitted:
                # Kueue took the admission back: an eviction, not a failure of the gang.
                self.status.preemptions = (self.status.preemptions or 0) + 1
                message = (
                    f"preempted by Kueue: {kueue.evicted or 'it suspended the admitted Job'}; the pods "
                    f"checkpoint on SIGTERM and the gang resumes from that checkpoint when {where} admits "
                    f"it again (preemption {self.status.preemptions}, not charged to the restart budget)"
                )
                self.event("Warning", R.PREEMPTED.value, message)
                self.plan.preempted = True
                self.cond(C.QUEUED, True, R.PREEMPTED, message)
                self._restart_stall_clock()
            elif preempted:
                pass  # Kueue's eviction message stays until the gang is admitted again
            elif kueue.pending:
                self.cond(C.QUEUED, True, R.INADMISSIBLE, f"{where}: {kueue.pending}")
            else:
                self.cond(C.QUEUED, True, R.WAITING_FOR_ADMISSION, self._waiting_message())
            self.set_phase(Phase.QUEUED)
            self.cond(
                C.RUNNING, False, R.WAITING_FOR_ADMISSION, "no pod runs until Kueue admits the whole gang"
            )
            return True
        if not admitted:
            target = f" to ClusterQueue {kueue.cluster_queue}" if kueue.cluster_queue else ""
            message = f"Kueue admitted all {self.spec.nodes} pods{target}"
            if preempted:
                message += "; resuming from the last checkpoint"
            self.cond(C.QUEUED, False, R.ADMITTED, message)
            self.event("Normal", R.ADMITTED.value, message)
            # The deadline counts running time, from admission (as for a resumed suspend).
            self.status.start_time = self.now
        return False

    def _failed_by_eviction(self, job: dict[str, Any], queued: Condition | None) -> bool:
        """The Job failed, and only pods that Kueue's eviction killed made it fail."""
        if job_condition(job, "Failed") is None or queued is None:
            return False
        if queued.reason == R.PREEMPTED.value:
            return True
        since = queued.last_transition_time
        if queued.reason != R.ADMITTED.value or not self.status.preemptions or since is None:
            return False
        # Re-admitted after a preemption: pods of this admission start after it.
        started = [_start_time(p) for p in self.pods_of_attempt(self.attempt)]
        return all(t is None or t < since for t in started)

    def observe_job(self, job: dict[str, Any]) -> None:
        pods = self.pods_of_attempt(self.attempt)
        failed_job = job_condition(job, "Failed")
        failure = root_cause(pods)
        if failure is not None and failure.follower and failed_job is None:
            # Only pods that were torn down (a suspend, a deleted pod the Job controller
            # replaces): not a failure of the gang unless the Job itself failed.
            failure = None
        if failure is not None or failed_job is not None:
            self.handle_failure(job, failure, failed_job)
            return
        if job_condition(job, "Complete") is not None:
            self.succeed(pods)
            return
        self.status.progress = merge_progress(self.status.progress, self.obs.progress, self.now)
        self.status.last_checkpoint = last_checkpoint(self.status.last_checkpoint, self.obs.progress)
        resumed = resumed_from_step(self.obs.progress)
        if resumed is not None:
            self.note_resumed_step(resumed)
        running = [
            p
            for p in pods
            if p.get("status", {}).get("phase") in ("Running", "Succeeded")
            and not p.get("metadata", {}).get("deletionTimestamp")
        ]
        if len(running) >= self.spec.nodes:
            if self.status.phase != Phase.RUNNING:
                self.event(
                    "Normal",
                    R.PODS_RUNNING.value,
                    f"All {self.spec.nodes} pods of attempt {self.attempt} are running",
                )
            self.set_phase(Phase.RUNNING)
            self.cond(
                C.RUNNING,
                True,
                R.PODS_RUNNING,
                f"{self.spec.nodes}/{self.spec.nodes} pods running (attempt {self.attempt})",
            )
            self.check_stall()
        else:
            self.set_phase(Phase.PENDING)
            problem = pending_reason(pods, self.spec.nodes)
            self.cond(C.RUNNING, False, R.PODS_STARTING, problem or self._starting_message())

    def check_stall(self) -> None:
        progress = self.status.progress
        timeout = self.spec.stall.timeout_seconds
        since = (
            progress.last_update_time if progress and progress.last_update_time else None
        ) or self._running_since()
        if since is None:
            return
        idle = (self.now - since).total_seconds()
        if idle < timeout:
            self.clear(C.STALLED, R.PROGRESS_RESUMED, "steps are being made")
            self.requeue(timeout - idle)
            return
        step = progress.step if progress and progress.step is not None else 0
        message = (
            f"no training step for {int(idle)} s (spec.stall.timeoutSeconds {timeout}); last step {step}"
        )
        stalled = get_condition(self.status.conditions, C.STALLED.value)
        if stalled is None or stalled.status != ConditionStatus.TRUE:
            self.event(
                "Warning",
                R.NO_PROGRESS.value,
                message + ("; restarting the gang" if self.spec.stall.restart else ""),
            )
        self.cond(C.STALLED, True, R.NO_PROGRESS, message)
        if self.spec.stall.restart:
            stall_failure = PodFailure("", FailureCause.USER_ERROR, None, message, "", follower=False)
            self.restart_or_fail(stall_failure, charged=True, cause_name="Stalled")

    def _restart_stall_clock(self) -> None:
        # A new gang gets the full stall timeout, counted from when it runs, not from the old step.
        if self.status.progress is not None:
            self.status.progress = self.status.progress.model_copy(update={"last_update_time": None})

    def _running_since(self) -> datetime | None:
        running = get_condition(self.status.conditions, C.RUNNING.value)
        if running is not None and running.status == ConditionStatus.TRUE:
            return running.last_transition_time
        return None

    def handle_failure(
        self, job: dict[str, Any], failure: PodFailure | None, failed_job: dict[str, Any] | None
    ) -> None:
        if failure is not None and failure.follower:
            # The Job failed, but only pods that were being torn down (a suspend, a deletion)
            # ended: an interruption, not the training code's fault, so not charged.
            interrupted = PodFailure(
                failure.pod,
                failure.cause,
                failure.exit_code,
                "pods were stopped while the gang ran (suspend or deletion)",
                failure.finished_at,
                follower=False,
            )
            self.restart_or_fail(interrupted, charged=False, cause_name="Interrupted")
            return
        if failure is None:
            message = (failed_job or {}).get("message") or "the Job failed without a failed pod to inspect"
            failure = PodFailure("", FailureCause.USER_ERROR, None, message, "", follower=False)
        if failure.cause == FailureCause.CONFIG_ERROR:
            self.fail(
                R.NON_RETRYABLE_ERROR,
                f"{failure.describe()}; fix the spec and create the job again (restarting cannot help)",
            )
            return
        action = self.action_for(failure)
        if action == FailureAction.FAIL:
            self.fail(
                R.NON_RETRYABLE_ERROR,
                f"{failure.describe()}; spec.failurePolicy says Fail for {failure.cause.value}",
            )
            return
        self.restart_or_fail(failure, charged=action == FailureAction.RESTART, cause_name=failure.cause.value)

    def action_for(self, failure: PodFailure) -> FailureAction:
        for rule in self.spec.failure_policy.rules:
            if rule.cause.value != failure.cause.value:
                continue
            if rule.exit_codes and failure.exit_code not in rule.exit_codes:
                continue
            return rule.action
        return (
            FailureAction.RESTART
            if failure.cause == FailureCause.USER_ERROR
            else FailureAction.RESTART_WITHOUT_CHARGE
        )

    def restart_or_fail(self, failure: PodFailure, charged: bool, cause_name: str) -> None:
        restarts = self.status.restarts or 0
        budget = self.spec.failure_policy.max_restarts
        if charged and restarts >= budget:
            self.fail(
                R.RESTART_BUDGET_EXHAUSTED,
                f"attempt {self.attempt} failed: {failure.describe()}; restart budget spent ({restarts} of "
                f"spec.failurePolicy.maxRestarts {budget} used)",
                cause=cause_name,
            )
            return
        if self.attempt + 1 > MAX_ATTEMPTS:
            self.fail(
                R.ATTEMPT_LIMIT_REACHED,
                f"attempt {self.attempt} failed: {failure.describe()}; attempt {self.attempt + 1} would "
                f"pass the limit of {MAX_ATTEMPTS} attempts (pod names '<name>-<attempt>-<rank>' must stay "
                "within 63 characters); create a new TrainingJob to go on from its checkpoints",
                cause=cause_name,
            )
            return
        if charged:
            self.status.restarts = restarts + 1
        else:
            self.status.uncounted_restarts = (self.status.uncounted_restarts or 0) + 1
        failed_attempt = self.attempt
        self.status.last_failure = LastFailure(
            cause=cause_name, attempt=failed_attempt, message=failure.describe()[:4096], time=self.now
        )
        self.status.attempt = failed_attempt + 1
        self.status.resumed_from_step = None  # the next attempt says where it resumed from
        delay = backoff_seconds(self.tj, (self.status.restarts or 0) + (self.status.uncounted_restarts or 0))
        budget_note = (
            f"{self.status.restarts} of {budget} charged restarts used"
            if charged
            else "not charged to the restart budget"
        )
        message = (
            f"attempt {failed_attempt} failed: {failure.describe()}; restarting the whole gang as attempt "
            f"{failed_attempt + 1} from the last checkpoint in {int(delay)} s ({budget_note})"
        )
        self.set_phase(Phase.RESTARTING)
        self.cond(C.RESTARTING, True, R.BACKING_OFF, message)
        self.cond(C.RUNNING, False, R.GANG_RESTARTING, f"attempt {failed_attempt} failed")
        self.clear(C.STALLED, R.GANG_RESTARTING, "gang restarted")
        self._restart_stall_clock()
        self.event("Warning", R.GANG_RESTARTING.value, message)
        # Tear the failed attempt down now (the record above is written first).
        for job in self.jobs_of_attempt(failed_attempt):
            self.plan.actions.append(Action(ActionKind.DELETE_JOB, job["metadata"]["name"]))
        self.plan.restart = RestartRecord(cause=cause_name, charged=charged)
        self.requeue(delay)

    def checkpoint_condition(self) -> None:
        """CheckpointsDurable: whether checkpoints would outlive a gang restart, and why."""
        storage = self.obs.checkpoint
        if storage is None:
            return
        old = get_condition(self.status.conditions, C.CHECKPOINTS_DURABLE.value)
        if not storage.durable and (old is None or old.status != ConditionStatus.FALSE):
            self.event("Warning", "CheckpointsNotDurable", storage.message)
        self.cond(C.CHECKPOINTS_DURABLE, storage.durable, storage.reason, storage.message)

    def fail(self, reason: R, message: str, cause: str | None = None) -> None:
        self.set_phase(Phase.FAILED)
        self.status.completion_time = self.now
        self.cond(C.FAILED, True, reason, message)
        self.clear(C.RUNNING, reason, "the job failed")
        self.clear(C.RESTARTING, reason, "the job failed")
        self.event("Warning", reason.value, message)
        self.plan.finished = Phase.FAILED
        self.finished_housekeeping()

    def succeed(self, pods: list[dict[str, Any]]) -> None:
        self.set_phase(Phase.SUCCEEDED)
        self.status.completion_time = self.now
        exported = exported_model(pods)
        if exported is not None:
            self.status.exported_model = exported
        # Short jobs end between two pulls of /progress; the termination log has the last word.
        final = final_progress(pods)
        self.status.progress = merge_progress(self.status.progress, final, self.now)
        resumed = resumed_from_step(final)
        if resumed is not None:
            self.note_resumed_step(resumed)
        if self.status.progress is not None:
            total = self.status.progress.total_steps
            # Short jobs finish between two pulls of /progress: the last pull may say "exporting".
            self.status.progress = self.status.progress.model_copy(
                update={
                    "percent": 100.0,
                    "eta_seconds": 0.0,
                    "step": self.status.progress.step if total is None else total,
                    "state": ProgressState.FINISHED,
                }
            )
        where = f"; model exported to {exported.uri}" if exported else ""
        message = f"training finished in attempt {self.attempt}{where}"
        self.cond(C.SUCCEEDED, True, R.TRAINING_COMPLETED, message)
        self.clear(C.RUNNING, R.TRAINING_COMPLETED, "finished")
        self.clear(C.STALLED, R.TRAINING_COMPLETED, "finished")
        self.event("Normal", R.TRAINING_COMPLETED.value, message)
        self.plan.finished = Phase.SUCCEEDED
        if self.spec.serving is not None and exported is not None:
            self.plan.actions.append(Action(ActionKind.HANDOFF, self.spec.serving.model_service))
        self.finished_housekeeping()


def plan_reconcile(tj: TrainingJob, observed: Observed, now: datetime) -> Plan:
    return Planner(tj, observed, now).run()


__all__ = ["Action", "ActionKind", "Observed", "Plan", "attempt_of", "plan_reconcile", "rank0_pod"]
