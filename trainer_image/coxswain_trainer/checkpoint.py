"""Atomic, self-verifying checkpoints; keeping the last K; resuming from the newest valid one.

A checkpoint file is `COXCKPT1 <sha256 of payload>\\n<torch.save payload>`. It is written to a
temporary file, fsync'd and renamed, so a crash leaves either the old set or the new file; the
digest catches what rename cannot (a truncated copy, a flipped bit on a bad disk), and the
resume then falls back to the checkpoint before it.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist

from coxswain_trainer.distributed import Topology
from coxswain_trainer.logs import log

MAGIC = b"COXCKPT1 "
_NAME = re.compile(r"ckpt-(\d{10})\.pt")


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


class CheckpointStore:
    """The checkpoint files of one job in one directory; only rank 0 calls `save`."""

    def __init__(self, directory: str | os.PathLike[str], keep: int) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def path_for(self, step: int) -> Path:
        return self.directory / f"ckpt-{step:010d}.pt"

    def steps(self) -> list[int]:
        """Steps that have a checkpoint file, newest first."""
        if not self.directory.is_dir():
            return []
        found = [int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.fullmatch(p.name))]
        return sorted(found, reverse=True)

    def save(self, state: dict[str, Any], step: int) -> Path:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        payload = buffer.getvalue()
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.path_for(step)
        tmp = self.directory / f".{final.name}.{os.getpid()}.tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)
        self.prune()
        return final

    def prune(self) -> None:
        for step in self.steps()[self.keep :]:
            self.path_for(step).unlink(missing_ok=True)
        for stale in self.directory.glob(".ckpt-*.tmp"):
            # Left by a writer that died mid-write; never a valid checkpoint.
            if not stale.name.endswith(f".{os.getpid()}.tmp"):
                stale.unlink(missing_ok=True)

    def load(self, step: int) -> dict[str, Any]:
        path = self.path_for(step)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CorruptCheckpointError(f"{path}: cannot be read: {exc}") from exc
        header_end = data.find(b"\n")
        header, payload = data[:header_end], data[header_end + 1 :]
        if header_end < 0 or not header.startswith(MAGIC):
            raise CorruptCheckpointError(f"{path}: not a coxswain checkpoint (bad header)")
        if hashlib.sha256(payload).hexdigest().encode() != header[len(MAGIC) :]:
            raise CorruptCheckpointError(f"{path}: checksum mismatch (truncated or corrupted)")
        try:
            state: dict[str, Any] = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CorruptCheckpointError(f"{path}: cannot be unpickled: {exc}") from exc
        if state.get("step") != step:
            raise CorruptCheckpointError(f"{path}: holds step {state.get('step')}, not {step}")
        return state

    def newest_valid(self) -> tuple[int, dict[str, Any]] | None:
        for step in self.steps():
            try:
                return step, self.load(step)
            except CorruptCheckpointError as exc:
                log.warning(
                    "checkpoint_invalid",
                    step=step,
                    reason=str(exc),
                    action="falling back to the previous checkpoint",
                )
        return None


def resume_state(store: CheckpointStore, topo: Topology) -> dict[str, Any] | None:
    """The checkpoint every rank resumes from: rank 0's newest valid one.

    All ranks read it from the (shared) checkpoint volume; a rank that cannot see that file
    (a volume that is not shared between nodes) receives it from rank 0 instead.
    """
    found = store.newest_valid() if topo.is_main else None
    if not topo.distributed:
        return found[1] if found else None
    chosen = torch.tensor([found[0] if (topo.is_main and found) else -1], dtype=torch.long)
    dist.broadcast(chosen, src=0)
    step = int(chosen.item())
    if step < 0:
        return None
    state: dict[str, Any] | None = found[1] if found and found[0] == step else None
    if state is None:
        try:
            state = store.load(step)
        except CorruptCheckpointError:
            state = None
    have = torch.tensor([1 if state is not None else 0], dtype=torch.long)
    dist.all_reduce(have, op=dist.ReduceOp.MIN)
    if int(have.item()) == 0:
        box: list[Any] = [state if topo.is_main else None]
        dist.broadcast_object_list(box, src=0)
        state = box[0]
    return state


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
