"""Checkpoints through torch.distributed.checkpoint (DCP): atomic, self-verifying, last K kept,
resumable on any number of processes.

One checkpoint is a directory `ckpt-<step>/` holding DCP's files (`__<rank>_<n>.distcp`
shards and `.metadata`), `trainer.pt` (step, epoch, sampler position, scheduler, early
stopping, every rank's random generators) and, written last by rank 0 with a rename,
`COMPLETE`: the size and sha256 of every other file. A directory without a valid COMPLETE
(a writer that died, a truncated or flipped shard) is not a checkpoint: resume falls back to
the newest one that verifies.

Who writes and who reads (`Trainer.sharded_checkpoints`):
- ddp: rank 0 alone writes the whole (replicated) state and, on resume, rank 0 alone reads it
  and broadcasts it to the other ranks, so only rank 0 needs the checkpoint volume.
- fsdp: every rank writes its own shard and reads the parts it needs (the volume must be
  shared by every rank; the CRD's CEL rule asks for it).
Both write the same DCP layout with the same keys, so a checkpoint from N processes resumes
on M, and a ddp checkpoint resumes under fsdp and back: DCP reshards on load.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from coxswain_trainer.distributed import Topology
from coxswain_trainer.logs import log

COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer.pt"
_NAME = re.compile(r"ckpt-(\d{10})")
_HASH_CHUNK = 1 << 22


class CorruptCheckpointError(Exception):
    pass


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


def file_digest(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class CheckpointStore:
    """The checkpoint directories of one job under one directory."""

    def __init__(self, directory: str | os.PathLike[str], keep: int) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def path_for(self, step: int) -> Path:
        return self.directory / f"ckpt-{step:010d}"

    def steps(self) -> list[int]:
        """Steps that have a checkpoint directory (complete or not), newest first."""
        if not self.directory.is_dir():
            return []
        found = [int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.fullmatch(p.name))]
        return sorted(found, reverse=True)

    # ---- writing ---------------------------------------------------------------------

    def begin(self, step: int) -> Path:
        """Rank 0, before any rank writes: an empty directory for `step` (a leftover of a
        writer that died there is removed first)."""
        path = self.path_for(step)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def write_shards(self, state: dict[str, Any], step: int, *, alone: bool) -> None:
        """DCP's files: a collective over every rank, or rank 0 by itself (`alone`)."""
        dcp_save(state, storage_writer=FileSystemWriter(self.path_for(step)), no_dist=alone)

    def shard_digests(self, step: int, rank: int) -> dict[str, dict[str, Any]]:
        """Size and sha256 of the shard files this rank wrote (hashed where they were written)."""
        return {p.name: file_digest(p) for p in sorted(self.path_for(step).glob(f"__{rank}_*.distcp"))}

    def commit(self, step: int, trainer_state: dict[str, Any], digests: dict[str, dict[str, Any]]) -> Path:
        """Rank 0, after every rank's shards: trainer.pt, then COMPLETE, renamed into place last."""
        path = self.path_for(step)
        buffer = io.BytesIO()
        torch.save(trainer_state, buffer)
        _write_atomic(path / TRAINER_STATE, buffer.getvalue())
        files = dict(digests)
        for name in (".metadata", TRAINER_STATE):
            files[name] = file_digest(path / name)
        record = {
            "step": step,
            "worldSize": trainer_state.get("world_size"),
            "strategy": trainer_state.get("strategy"),
            "files": files,
        }
        _write_atomic(path / COMPLETE, json.dumps(record, indent=1, sort_keys=True).encode())
        self.prune(current=step)
        return path

    def prune(self, current: int | None = None) -> None:
        """Keep the newest `keep` complete checkpoints; drop older ones and dead writers' leftovers."""
        complete = [s for s in self.steps() if (self.path_for(s) / COMPLETE).is_file()]
        kept = set(complete[: self.keep])
        for step in self.steps():
            if step not in kept and step != current:
                shutil.rmtree(self.path_for(step), ignore_errors=True)

    # ---- reading ---------------------------------------------------------------------

    def verify(self, step: int) -> dict[str, Any]:
        """The COMPLETE record of `step`, once every file it lists has its size and digest."""
        path = self.path_for(step)
        try:
            record = json.loads((path / COMPLETE).read_text())
        except FileNotFoundError:
            raise CorruptCheckpointError(
                f"{path}: incomplete (no {COMPLETE}: its writer stopped midway)"
            ) from None
        except (OSError, ValueError) as exc:
            raise CorruptCheckpointError(f"{path}/{COMPLETE}: unreadable: {exc}") from exc
        if record.get("step") != step:
            raise CorruptCheckpointError(f"{path}: holds step {record.get('step')}, not {step}")
        for name, want in record.get("files", {}).items():
            try:
                size = (path / name).stat().st_size
            except OSError as exc:
                raise CorruptCheckpointError(f"{path}/{name}: missing ({exc.strerror})") from exc
            if size != want["bytes"]:
                raise CorruptCheckpointError(
                    f"{path}/{name}: {size} bytes, {want['bytes']} written (truncated or corrupted)"
                )
            if file_digest(path / name)["sha256"] != want["sha256"]:
                raise CorruptCheckpointError(f"{path}/{name}: checksum mismatch (corrupted)")
        return cast(dict[str, Any], record)

    def newest_valid(self) -> int | None:
        for step in self.steps():
            try:
                self.verify(step)
                return step
            except CorruptCheckpointError as exc:
                log.warning(
                    "checkpoint_invalid",
                    step=step,
                    reason=str(exc),
                    action="falling back to the previous checkpoint",
                )
        return None

    def load_trainer_state(self, step: int) -> dict[str, Any]:
        path = self.path_for(step) / TRAINER_STATE
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CorruptCheckpointError(f"{path}: cannot be read: {exc}") from exc
        return state

    def read_shards(self, state: dict[str, Any], step: int, *, alone: bool) -> None:
        """Fill `state` (tensors shaped as this process holds them) in place from DCP's files."""
        dcp_load(state, storage_reader=FileSystemReader(self.path_for(step)), no_dist=alone)

    def load_full(self, step: int) -> dict[str, Any]:
        """The whole checkpoint in one process, unsharded: for tests, tools and export."""
        from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

        with tempfile.TemporaryDirectory(prefix="coxswain-ckpt-") as scratch:
            target = Path(scratch) / "full.pt"
            dcp_to_torch_save(self.path_for(step), target)
            state: dict[str, Any] = torch.load(target, map_location="cpu", weights_only=False)
        return state


def chosen_step(store: CheckpointStore, topo: Topology) -> int | None:
    """The checkpoint every rank resumes from: rank 0's newest valid one (-1: none)."""
    found = store.newest_valid() if topo.is_main else None
    if not topo.distributed:
        return found
    chosen = torch.tensor([found if found is not None else -1], dtype=torch.long)
    dist.broadcast(chosen, src=0)
    step = int(chosen.item())
    return None if step < 0 else step


def capture_rng() -> dict[str, Any]:
    """This process's random generators, in types `torch.load(weights_only=True)` accepts."""
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["key"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_rng(topo: Topology) -> list[dict[str, Any]]:
    """Every rank's generators, on rank 0 (a collective: all ranks call it at the same step)."""
    mine = capture_rng()
    if not topo.distributed:
        return [mine]
    out: list[Any] = [None] * topo.world_size if topo.is_main else []
    dist.gather_object(mine, out if topo.is_main else None, dst=0)
    return out
