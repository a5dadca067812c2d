"""Optimizers and learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch

from coxswain_trainer.optim import OptimizerSettings, Schedule, ScheduleSettings, build_optimizer, lr_factor

pytestmark = pytest.mark.unit


def test_warmup_is_linear_then_hands_over_to_the_schedule() -> None:
    f = lr_factor(ScheduleSettings(type="constant", warmup_steps=4), 0.1, 100)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_step_schedule_decays_by_gamma_every_step_size() -> None:
    f = lr_factor(ScheduleSettings(type="step", step_size=10, gamma=0.5), 0.1, 100)
    assert f(0) == 1.0
    assert f(9) == 1.0
    assert f(10) == 0.5
    assert f(25) == 0.25


def test_cosine_ends_at_the_floor_after_warmup() -> None:
    f = lr_factor(ScheduleSettings(type="cosine", warmup_steps=10, min_learning_rate=0.01), 0.1, 110)
    assert f(9) == 1.0
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1)
    assert f(500) == pytest.approx(0.1)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_are_built_with_their_hyper_parameters(name: str) -> None:
    model = torch.nn.Linear(2, 1)
    opt = build_optimizer(
        model.parameters(), OptimizerSettings(name=name, learning_rate=0.05, weight_decay=0.01)
    )
    group = opt.param_groups[0]
    assert group["lr"] == 0.05
    assert group["weight_decay"] == 0.01
    if name == "sgd":
        assert group["momentum"] == 0.9
    else:
        assert group["betas"] == (0.9, 0.999)


def test_schedule_steps_the_learning_rate_and_round_trips() -> None:
    model = torch.nn.Linear(2, 1)
    opt = build_optimizer(model.parameters(), OptimizerSettings(name="sgd", learning_rate=1.0))
    sched = Schedule(opt, ScheduleSettings(type="step", step_size=2, gamma=0.1), 10)
    for _ in range(2):
        opt.step()
        sched.step()
    assert sched.current_lr() == pytest.approx(0.1)
    state = sched.state_dict()
    opt2 = build_optimizer(
        torch.nn.Linear(2, 1).parameters(), OptimizerSettings(name="sgd", learning_rate=1.0)
    )
    sched2 = Schedule(opt2, ScheduleSettings(type="step", step_size=2, gamma=0.1), 10)
    sched2.load_state_dict(state)
    opt2.step()
    sched2.step()
    opt2.step()
    sched2.step()
    assert sched2.current_lr() == pytest.approx(0.01)
