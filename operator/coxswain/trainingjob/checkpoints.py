"""Where a TrainingJob's checkpoints live, and whether they survive a gang restart.

A gang restart is a new batch Job with new pods: only a volume that outlives pods keeps the
checkpoints. Without `spec.checkpoint.volume` the operator makes one PersistentVolumeClaim per
TrainingJob (builders.build_checkpoint_claim). A one-node gang mounts it in its single pod
(ReadWriteOnce by default). A gang of several pods shares one Indexed Job pod template, which
cannot give a volume to the node-rank-0 pod alone: it mounts the claim in every pod when
`spec.checkpoint.accessMode` is ReadWriteMany. A ReadWriteOnce claim in every pod would pin the
whole gang to one node (local volumes) or leave the other pods stuck on a multi-attach error
(network disks), so without ReadWriteMany a multi-node gang runs on an emptyDir. So does a job
when no StorageClass can provision the claim; the `CheckpointsDurable` condition says so, as it
does for an explicit emptyDir.
"""

from __future__ import annotations

from dataclasses import dataclass

from coxswain.api.conditions import TrainingJobReason as R
from coxswain.api.trainingjob import CheckpointAccessMode, TrainingJob
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
    mode = ckpt.access_mode or CheckpointAccessMode.READ_WRITE_ONCE
    if tj.spec.nodes > 1 and mode != CheckpointAccessMode.READ_WRITE_MANY:
        return CheckpointStorage(
            None,
            False,
            R.EMPTY_DIR_VOLUME,
            f"a gang of {tj.spec.nodes} pods shares one pod template, which cannot give a ReadWriteOnce "
            "claim to rank 0 alone: checkpoints are on an emptyDir and lost at a gang restart; set "
            "spec.checkpoint.accessMode to ReadWriteMany (the StorageClass must provide it) or "
            "spec.checkpoint.volume to a ReadWriteMany PersistentVolumeClaim to keep them",
        )
    if claim_exists or ckpt.storage_class_name is not None or default_storage_class is not None:
        cls = ckpt.storage_class_name or default_storage_class
        where = f"StorageClass {cls}" if cls else "its StorageClass"
        shared = f", mounted by all {tj.spec.nodes} pods" if tj.spec.nodes > 1 else ""
        if mode == CheckpointAccessMode.READ_WRITE_MANY:
            # The operator does not watch claims: say what to look at if the class cannot do it.
            shared += (
                "; the StorageClass must provide ReadWriteMany (if the claim stays Pending, "
                f"`kubectl describe pvc {claim}` says why)"
            )
        return CheckpointStorage(
            claim,
            True,
            R.CLAIM_PER_JOB,
            f"checkpoints live on PersistentVolumeClaim {claim} ({ckpt.size}, {mode}, {where}{shared}), "
            "kept across restarts and deleted with the TrainingJob",
        )
    return CheckpointStorage(
        None,
        False,
        R.NO_STORAGE_CLASS,
        "the cluster has no default StorageClass, so no checkpoint claim can be made: checkpoints are "
        "on an emptyDir and lost at a gang restart; set spec.checkpoint.storageClassName or "
        "spec.checkpoint.volume",
    )
