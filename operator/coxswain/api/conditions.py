"""Condition types, reasons and phases: CamelCase constants defined once.

The operator writes them, tests and dashboards read them; nobody spells them by hand.
"""

from __future__ import annotations

from enum import StrEnum


class TrainingJobPhase(StrEnum):
    """Coarse state of a TrainingJob, shown by `kubectl get tj`."""

    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class TrainingJobConditionType(StrEnum):
    """Condition types of a TrainingJob."""

    CREATED = "Created"
    QUEUED = "Queued"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    STALLED = "Stalled"
    # False when checkpoints would not outlive a gang restart (emptyDir, no StorageClass).
    CHECKPOINTS_DURABLE = "CheckpointsDurable"
    # True while a child's name is taken by an object this TrainingJob does not control.
    NAME_CONFLICT = "NameConflict"


class TrainingJobReason(StrEnum):
    """Reasons on TrainingJob conditions."""

    # Created
    JOB_CREATED = "JobCreated"
    # Queued (Kueue): waiting for admission, refused for now, or evicted by a higher priority
    WAITING_FOR_ADMISSION = "WaitingForAdmission"
    INADMISSIBLE = "Inadmissible"
    PREEMPTED = "Preempted"
    ADMITTED = "Admitted"
    # Running
    PODS_STARTING = "PodsStarting"
    PODS_RUNNING = "PodsRunning"
    # Restarting
    GANG_RESTARTING = "GangRestarting"
    BACKING_OFF = "BackingOff"
    # Succeeded
    TRAINING_COMPLETED = "TrainingCompleted"
    EARLY_STOPPED = "EarlyStopped"
    MAX_STEPS_REACHED = "MaxStepsReached"
    # Failed
    RESTART_BUDGET_EXHAUSTED = "RestartBudgetExhausted"
    NON_RETRYABLE_ERROR = "NonRetryableError"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    EXPORT_FAILED = "ExportFailed"
    INVALID_SPEC = "InvalidSpec"
    POLICY_REFUSED = "PolicyRefused"
    ATTEMPT_LIMIT_REACHED = "AttemptLimitReached"
    # Suspended
    JOB_SUSPENDED = "JobSuspended"
    JOB_RESUMED = "JobResumed"
    GANG_RESIZED = "GangResized"  # event: nodes/procsPerNode changed while suspended
    # Stalled
    NO_PROGRESS = "NoProgress"
    PROGRESS_RESUMED = "ProgressResumed"
    # Events of the hand-off to serving
    HANDED_OFF = "HandedOff"
    HANDOFF_SKIPPED = "HandoffSkipped"
    # CheckpointsDurable
    CLAIM_PER_JOB = "ClaimPerJob"
    OWN_CLAIM = "OwnClaim"
    HOST_PATH_VOLUME = "HostPathVolume"
    EMPTY_DIR_VOLUME = "EmptyDirVolume"
    NO_STORAGE_CLASS = "NoStorageClass"
    # NameConflict
    NAME_CONFLICT = "NameConflict"
    NO_CONFLICT = "NoConflict"


class ModelServiceConditionType(StrEnum):
    """Condition types of a ModelService. `Ready` is true only when a request would succeed."""

    READY = "Ready"
    MODEL_LOADED = "ModelLoaded"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    # True while a child's name is taken by an object this ModelService does not control.
    NAME_CONFLICT = "NameConflict"


class ModelServiceReason(StrEnum):
    """Reasons on ModelService conditions."""

    # Ready
    REPLICAS_READY = "ReplicasReady"
    NO_READY_REPLICAS = "NoReadyReplicas"
    SCALED_TO_ZERO = "ScaledToZero"
    NOT_ENOUGH_READY = "NotEnoughReadyReplicas"
    WEIGHTS_PROPAGATING = "WeightsPropagating"
    # ModelLoaded
    MODEL_LOADED = "ModelLoaded"
    MODEL_LOADING = "ModelLoading"
    MODEL_NOT_FOUND = "ModelNotFound"
    CHECKSUM_MISMATCH = "ChecksumMismatch"
    LOAD_FAILED = "LoadFailed"
    TRAINING_JOB_NOT_READY = "TrainingJobNotReady"
    # Progressing
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    CANARY_ANALYSIS = "CanaryAnalysis"
    ROLLOUT_COMPLETE = "RolloutComplete"
    # Degraded
    CRASH_LOOPING = "CrashLooping"
    CANARY_ROLLED_BACK = "CanaryRolledBack"
    # Events of the canary analysis
    CANARY_STARTED = "CanaryStarted"
    CANARY_STEP_PASSED = "CanaryStepPassed"
    CANARY_PROMOTED = "CanaryPromoted"
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    PODS_PENDING = "PodsPending"
    HEALTHY = "Healthy"
    POLICY_REFUSED = "PolicyRefused"
    # NameConflict
    NAME_CONFLICT = "NameConflict"
    NO_CONFLICT = "NoConflict"
