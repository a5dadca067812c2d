"""Rank 0's checkpoint write time: the digits CNN the tests train and a >= 100 M-parameter MLP.

The trainer's own path (`CheckpointStore`: DCP shards written by rank 0 alone, then the trainer
state and COMPLETE, each fsync'd and renamed into place), as `_write_alone` runs it on SIGTERM
and as ddp's interval checkpoints write it, with Adam's state after one step. Baseline, in the
same run and directory: one `torch.save` of the same model and optimizer state dicts, fsync'd.

The directory defaults to one under ~/.cache/coxswain, the file system the real node's
local-path volumes live on (they are host directories), so the figure is the local-path one.

Prints raw figures, then `ratio checkpoint_write_vs_torch_save_<model> <value>` lines.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import get_state_dict

from coxswain_trainer.checkpoint import CheckpointStore
from coxswain_trainer.models import build_model
from coxswain_trainer.optim import OptimizerSettings, build_optimizer

# The digits CNN of tests/realnode (8x8 images, 10 classes) and an MLP of 101.2 M parameters.
MODELS: dict[str, Callable[[], torch.nn.Module]] = {
    "digits-cnn": lambda: build_model("cnn", 64, 10, channels=(8, 16), hidden_sizes=(32,)),
    "mlp-101m": lambda: build_model("mlp", 64, 10, hidden_sizes=(8192, 8192, 4096)),
}


def trained(make: Callable[[], torch.nn.Module]) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The model and Adam after one step, so the optimizer holds its two moments per parameter."""
    torch.manual_seed(0)
    model = make()
    optim = build_optimizer(model.parameters(), OptimizerSettings())
    x = torch.randn(32, 64)
    loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (32,)))
    loss.backward()  # type: ignore[no-untyped-call]
    optim.step()
    return model, optim


def ours(store: CheckpointStore, model: torch.nn.Module, optim: torch.optim.Optimizer, step: int) -> float:
    began = time.perf_counter()
    m, o = get_state_dict(model, optim)
    store.begin(step)
    store.write_shards({"model": m, "optim": o}, step, alone=True)
    trainer_state: dict[str, Any] = {"step": step, "epoch": 0, "world_size": 2, "strategy": "ddp"}
    store.commit(step, trainer_state, store.shard_digests(step, 0))
    return time.perf_counter() - began


def baseline(path: Path, model: torch.nn.Module, optim: torch.optim.Optimizer) -> float:
    began = time.perf_counter()
    with open(path, "wb") as fh:
        torch.save({"model": model.state_dict(), "optim": optim.state_dict()}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return time.perf_counter() - began


def size_of(path: Path) -> int:
    return (
        sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        if path.is_dir()
        else path.stat().st_size
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path.home() / ".cache" / "coxswain")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    # DCP says it saves in a single process: that is what rank 0 alone does.
    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    args.dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.dir))
    try:
        ratios = {}
        for name in args.models:
            model, optim = trained(MODELS[name])
            params = sum(p.numel() for p in model.parameters())
            store = CheckpointStore(work / name, keep=1)
            ours_s, base_s, ours_bytes, base_bytes = [], [], 0, 0
            # Alternate, so load from elsewhere on the machine hits both alike.
            for i in range(args.repeats):
                ours_s.append(ours(store, model, optim, i + 1))
                ours_bytes = size_of(store.path_for(i + 1))
                base_path = work / f"{name}.pt"
                base_s.append(baseline(base_path, model, optim))
                base_bytes = size_of(base_path)
                base_path.unlink()
            ours_med, base_med = statistics.median(ours_s), statistics.median(base_s)
            print(
                f"{name}: {params:,} parameters; checkpoint {ours_bytes / 2**20:.1f} MiB written in "
                f"{ours_med:.3f} s (median of {args.repeats}: {', '.join(f'{s:.3f}' for s in ours_s)}); "
                f"torch.save {base_bytes / 2**20:.1f} MiB in {base_med:.3f} s"
            )
            ratios[name] = ours_med / base_med
            del model, optim
        for name, ratio in ratios.items():
            print(f"ratio checkpoint_write_vs_torch_save_{name} {ratio:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
