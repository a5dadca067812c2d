"""Where a TrainingJob's checkpoints live, and whether they survive a gang restart.

A gang restart is a new batch Job with new pods: only a volume that outlives pods keeps the
checkpoints. Without `spec.checkpoint.volume` the operator makes one PersistentVolumeClaim per
TrainingJob (builders.build_checkpoint_claim), mounted by the gang's single pod. When it
cannot (no StorageClass to provision from, or a gang of several pods that one Indexed Job
template cannot give a ReadWriteOnce claim to rank 0 alone) the job runs on an emptyDir, and
the `CheckpointsDurable` condition says so; so does an explicit emptyDir.
"""

from __future__ import annotations

from dataclasses import dataclass

from coxswain.api.conditions import TrainingJobReason as R
from coxswain.api.trainingjob import TrainingJob
from coxswain.trainingjob import naming


@dataclass(frozen=True)
class CheckpointStorage:
    """The decision for one TrainingJob: what to mount, what to make, what to tell the user."""

    # The operator-made claim to create (if missing) and mount; None: the spec's volume or an emptyDir.
    claim: str | None
    durable: bool
    reason: R
    message: str


def checkpoint_storage(
    tj: TrainingJob, default_storage_class: str | None, claim_exists: bool
) -> CheckpointStorage:
    """Decide from the spec, the cluster's default StorageClass and whether our claim exists.

    A claim that exists is kept whatever else changed: its checkpoints are the job's progress.
    """
    ckpt, name = tj.spec.checkpoint, tj.metadata.name or ""
    volume = ckpt.volume
    if volume is not None:
        if volume.persistent_volume_claim is not None:
            return CheckpointStorage(
                None,
                True,
                R.OWN_CLAIM,
                f"checkpoints live on PersistentVolumeClaim {volume.persistent_volume_claim.claim_name} "
                "(spec.checkpoint.volume) and survive restarts",
            )
        if volume.host_path is not None:
            return CheckpointStorage(
                None,
                True,
                R.HOST_PATH_VOLUME,
                f"checkpoints live in hostPath {volume.host_path.path}: they survive a restart only on "
                "the same node",
            )
        return CheckpointStorage(
            None,
            False,
            R.EMPTY_DIR_VOLUME,
            "spec.checkpoint.volume is an emptyDir: checkpoints are lost at every gang restart; leave "
            "spec.checkpoint.volume out to get a PersistentVolumeClaim per job",
        )
    claim = naming.checkpoint_claim_name(name)
    if tj.spec.nodes > 1:
        return CheckpointStorage(
            None,
            False,
            R.EMPTY_DIR_VOLUME,
            f"a gang of {tj.spec.nodes} pods shares one pod template, which cannot give a ReadWriteOnce "
            "claim to rank 0 alone: checkpoints are on an emptyDir and lost at a gang restart; set "
            "spec.checkpoint.volume to a ReadWriteMany PersistentVolumeClaim to keep them",
        )
    if claim_exists or ckpt.storage_class_name is not None or default_storage_class is not None:
        cls = ckpt.storage_class_name or default_storage_class
        where = f"StorageClass {cls}" if cls else "its StorageClass"
        return CheckpointStorage(
            claim,
            True,
            R.CLAIM_PER_JOB,
            f"checkpoints live on PersistentVolumeClaim {claim} ({ckpt.size}, {where}), kept across "
            "restarts and deleted with the TrainingJob",
        )
    return CheckpointStorage(
        None,
        False,
        R.NO_STORAGE_CLASS,
        "the cluster has no default StorageClass, so no checkpoint claim can be made: checkpoints are "
        "on an emptyDir and lost at a gang restart; set spec.checkpoint.storageClassName or "
        "spec.checkpoint.volume",
    )
