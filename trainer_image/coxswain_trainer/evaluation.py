"""Evaluation over the held-out split (sharded across ranks) and early stopping."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from coxswain.api.trainingjob import MetricMode
from coxswain_trainer.data import TaskData, eval_shard
from coxswain_trainer.distributed import Topology

EVAL_BATCH = 4096


@torch.no_grad()
def evaluate(
    module: nn.Module,
    data: TaskData,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    topo: Topology,
    *,
    lockstep: bool = False,
) -> dict[str, float]:
    """eval_loss, plus accuracy (classification) or mse in the target's units and r2
    (regression). Each rank scores its share; the sums are all-reduced, so every rank gets the
    same numbers and early stopping decides the same everywhere. `lockstep` (fsdp, whose
    forward is a collective): every rank runs the same number of forwards, a rank whose share
    is used up runs one sample and discards it."""
    module.eval()
    indices = eval_shard(len(data.eval), rank=topo.rank, world_size=topo.world_size, device=topo.device)
    # loss*n, n, correct, squared error, sum y, sum y^2, target elements
    sums = torch.zeros(7, dtype=torch.float64, device=topo.device)
    classification = data.kind == "classification"
    batches = math.ceil(int(indices.shape[0]) / EVAL_BATCH)
    if lockstep:
        batches = math.ceil(math.ceil(len(data.eval) / topo.world_size) / EVAL_BATCH)
    for b in range(batches):
        idx = indices[b * EVAL_BATCH : (b + 1) * EVAL_BATCH]
        if idx.numel() == 0:
            module(data.eval.batch(torch.zeros(1, dtype=torch.long, device=topo.device))[0])
            continue
        x, y = data.eval.batch(idx)
        out = module(x)
        n = idx.shape[0]
        sums[0] += loss_fn(out, y).double() * n
        sums[1] += n
        if classification:
            sums[2] += (out.argmax(dim=-1) == y).sum()
        else:
            yd = y.double()
            sums[3] += (out.double().reshape(yd.shape) - yd).pow(2).sum()
            sums[4] += yd.sum()
            sums[5] += yd.pow(2).sum()
            sums[6] += yd.numel()
    if topo.distributed:
        dist.all_reduce(sums)
    module.train()
    loss_n, n, correct, sse, sum_y, sum_y2, elements = sums.tolist()
    result = {"eval_loss": loss_n / max(n, 1.0)}
    if classification:
        result["accuracy"] = correct / max(n, 1.0)
    elif elements > 0:
        result["mse"] = sse / elements * data.target_std * data.target_std
        sst = sum_y2 - sum_y * sum_y / elements
        result["r2"] = 1.0 - sse / sst if sst > 0 else 0.0
    return result


class EarlyStopper:
    def __init__(self, metric: str, mode: str, patience: int, min_delta: float) -> None:
        self.metric, self.mode, self.patience, self.min_delta = metric, mode, patience, min_delta
        self.best: float | None = None
        self.bad = 0

    def update(self, value: float) -> bool:
        """Record one evaluation; True when it is time to stop."""
        if self.best is None:
            improved = True
        elif self.mode == MetricMode.MAX.value:
            improved = value > self.best + self.min_delta
        else:
            improved = value < self.best - self.min_delta
        if improved:
            self.best, self.bad = value, 0
        else:
            self.bad += 1
        return self.bad >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad = state.get("best"), int(state.get("bad", 0))
