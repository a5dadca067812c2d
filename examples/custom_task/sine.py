"""A custom task for Coxswain: fit y = sin(x) with a small MLP.

The trainer imports this module (`spec.task.custom.module: custom_task.sine`) and calls the
three functions below with `spec.task.custom.config` as a plain dict. Everything else (the
distributed sampler, optimizer, schedule, checkpoints, export) comes from the TrainingJob.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


def build_model(config: dict[str, Any]) -> nn.Module:
    """The network to train; its input is one feature (x), its output one value (y)."""
    hidden = int(config.get("hidden", 32))
    return nn.Sequential(
        nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1)
    )


def build_datasets(config: dict[str, Any]) -> tuple[Dataset[Any], Dataset[Any]]:
    """(train, eval) datasets of (x, y) pairs. The generator is seeded so every rank agrees."""
    samples = int(config.get("samples", 2000))
    noise = float(config.get("noise", 0.05))
    generator = torch.Generator().manual_seed(int(config.get("seed", 0)))
    x = torch.rand(samples, 1, generator=generator) * 2 * math.pi - math.pi
    y = torch.sin(x) + noise * torch.randn(samples, 1, generator=generator)
    cut = int(samples * 0.8)
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


def loss_fn(config: dict[str, Any]) -> nn.Module:
    """The training loss: mean squared error."""
    return nn.MSELoss()


def shard_blocks(model: nn.Module) -> list[nn.Module]:
    """Optional, for `optimization.strategy: fsdp`: the submodules sharded one by one (each is
    gathered whole for its forward and backward, then freed). Here each Linear layer; a
    transformer would return its layers. Without this function every module owning parameters
    is a block."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)]
