"""Optimizers (sgd with momentum, adam, adamw) and learning-rate schedules with linear warm-up."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch.optim.lr_scheduler import LambdaLR

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")


@dataclass(frozen=True)
class OptimizerSettings:
    name: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class ScheduleSettings:
    type: str = "constant"
    warmup_steps: int = 0
    step_size: int = 100
    gamma: float = 0.1
    min_learning_rate: float = 0.0


def build_optimizer(params: Iterable[torch.nn.Parameter], s: OptimizerSettings) -> torch.optim.Optimizer:
    """`weightDecay` is L2 added to the gradient for sgd and adam, decoupled for adamw."""
    if s.name == "sgd":
        return torch.optim.SGD(params, lr=s.learning_rate, momentum=s.momentum, weight_decay=s.weight_decay)
    if s.name == "adam":
        return torch.optim.Adam(params, lr=s.learning_rate, betas=s.betas, weight_decay=s.weight_decay)
    if s.name == "adamw":
        return torch.optim.AdamW(params, lr=s.learning_rate, betas=s.betas, weight_decay=s.weight_decay)
    raise ValueError(f"unknown optimizer {s.name!r}; allowed: {', '.join(OPTIMIZERS)}")


def lr_factor(s: ScheduleSettings, base_lr: float, total_steps: int) -> Callable[[int], float]:
    """The multiplier of the base learning rate before optimizer step `step` (0-based)."""
    warmup = s.warmup_steps
    decay_steps = max(1, total_steps - warmup)
    floor = min(1.0, s.min_learning_rate / base_lr) if base_lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = step - warmup
        if s.type == "step":
            return float(s.gamma ** (t // s.step_size))
        if s.type == "cosine":
            progress = min(t, decay_steps) / decay_steps
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


class Schedule:
    """A LambdaLR that is not stepped at all when the rate never changes (constant, no warm-up),
    which keeps that common case free of per-step Python work."""

    def __init__(self, optimizer: torch.optim.Optimizer, s: ScheduleSettings, total_steps: int) -> None:
        base_lr = float(optimizer.param_groups[0]["lr"])
        self.scheduler = LambdaLR(optimizer, lr_factor(s, base_lr, total_steps))
        self.active = s.type != "constant" or s.warmup_steps > 0

    def step(self) -> None:
        if self.active:
            self.scheduler.step()

    def current_lr(self) -> float:
        return float(self.scheduler.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, object]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.scheduler.load_state_dict(state)
