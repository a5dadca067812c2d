"""Each gradient descent mode, optimizer and schedule trains the built-in tasks to a sensible
metric; early stopping stops early; accumulation equals the larger batch; custom tasks run.

Single process, in this process: the loop is the same code the gang runs, without start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from trainer_harness import merge

from coxswain.api.trainingjob import TrainingJobSpec
from coxswain_trainer.checkpoint import CheckpointStore
from coxswain_trainer.config import ConfigError
from coxswain_trainer.distributed import Topology
from coxswain_trainer.loop import RunResult, Trainer
from coxswain_trainer.metrics import TrainerMetrics
from coxswain_trainer.signals import StopRequest
from coxswain_trainer.tasks import build_task

CPU = torch.device("cpu")
ALONE = Topology(rank=0, world_size=1, local_rank=0, local_world_size=1, device=CPU, backend="gloo")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def train(tmp_path: Path, spec: dict[str, Any]) -> tuple[Trainer, RunResult]:
    parsed = TrainingJobSpec.model_validate(merge({"checkpoint": {"intervalSteps": 100000}}, spec))
    task = build_task(parsed, CPU)
    trainer = Trainer(
        parsed, ALONE, task, CheckpointStore(tmp_path / "ckpt", 2), TrainerMetrics(), StopRequest()
    )
    trainer.start(None)
    return trainer, trainer.run()


DIGITS_MLP = {"builtin": {"model": "mlp", "dataset": "digits", "hiddenSizes": [64]}}
DIGITS_CNN = {
    "builtin": {"model": "cnn", "dataset": "digits", "channels": [8, 16], "hiddenSizes": [64], "dropout": 0.1}
}
DIABETES_LINEAR = {"builtin": {"model": "linear", "dataset": "diabetes"}}
SYNTHETIC_LINEAR = {
    "builtin": {"model": "linear", "dataset": "synthetic-regression", "syntheticSamples": 500}
}

CASES = [
    # (id, task, optimization, metric, threshold)
    ("cnn-minibatch-adam-cosine-warmup", DIGITS_CNN,
     {"batchSize": 32, "epochs": 4, "optimizer": {"name": "adam", "learningRate": 0.003},
      "schedule": {"type": "cosine", "warmupSteps": 20}}, "accuracy", 0.9),
    ("mlp-minibatch-sgd-step", DIGITS_MLP,
     {"batchSize": 32, "epochs": 6, "optimizer": {"name": "sgd", "learningRate": 0.05, "momentum": 0.9},
      "schedule": {"type": "step", "stepSize": 150, "gamma": 0.5}}, "accuracy", 0.9),
    ("mlp-fullbatch-adamw-constant", DIGITS_MLP,
     {"gradientDescent": "fullBatch", "epochs": 60, "optimizer": {"name": "adamw", "learningRate": 0.01,
      "weightDecay": 0.01}}, "accuracy", 0.9),
    ("mlp-persample-sgd-clipped", DIGITS_MLP,
     {"gradientDescent": "perSample", "epochs": 2, "gradientClipNorm": 1.0,
      "optimizer": {"name": "sgd", "learningRate": 0.01, "momentum": 0.0}}, "accuracy", 0.85),
    ("linear-fullbatch-sgd-diabetes", DIABETES_LINEAR,
     {"gradientDescent": "fullBatch", "epochs": 100, "optimizer": {"name": "sgd", "learningRate": 0.1}}, "r2", 0.3),
    ("linear-persample-adam-diabetes", DIABETES_LINEAR,
     {"gradientDescent": "perSample", "epochs": 2, "optimizer": {"name": "adam", "learningRate": 0.01}}, "r2", 0.3),
    ("linear-minibatch-adamw-step-synthetic", SYNTHETIC_LINEAR,
     {"batchSize": 16, "epochs": 10, "optimizer": {"name": "adamw", "learningRate": 0.05},
      "schedule": {"type": "step", "stepSize": 100, "gamma": 0.5, "warmupSteps": 5}}, "r2", 0.95),
]  # fmt: skip


@pytest.mark.parametrize(
    ("task", "optimization", "metric", "threshold"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_builtin_tasks_train_to_a_sensible_metric(
    tmp_path: Path, task: dict[str, Any], optimization: dict[str, Any], metric: str, threshold: float
) -> None:
    _, result = train(tmp_path, {"task": task, "optimization": optimization})
    assert result.eval_metrics[metric] >= threshold, result.eval_metrics
    if metric == "r2":
        assert result.eval_metrics["mse"] > 0


def test_early_stopping_stops_before_the_last_epoch(tmp_path: Path) -> None:
    spec = {
        "task": DIGITS_MLP,
        "optimization": {"batchSize": 64, "epochs": 200, "optimizer": {"learningRate": 0.01}},
        "evaluation": {
            "earlyStopping": {"metric": "eval_loss", "mode": "min", "patience": 2, "minDelta": 0.001}
        },
    }
    trainer, result = train(tmp_path, spec)
    assert result.stopped_early
    assert result.step < result.total_steps
    assert trainer.early is not None
    assert trainer.early.bad == 2
    assert result.eval_metrics["accuracy"] > 0.9


def test_gradient_accumulation_equals_the_larger_batch(tmp_path: Path) -> None:
    base = {"task": SYNTHETIC_LINEAR, "seed": 3}
    # 450 training samples; 25 * 3 = 75 divides it, so no step sees a short batch.
    small = merge(base, {"optimization": {"batchSize": 25, "gradientAccumulationSteps": 3, "epochs": 2}})
    large = merge(base, {"optimization": {"batchSize": 75, "epochs": 2}})
    small["task"]["builtin"]["syntheticSamples"] = large["task"]["builtin"]["syntheticSamples"] = 500
    a, ra = train(tmp_path / "a", merge(small, {"evaluation": {"split": 0.1}}))
    b, rb = train(tmp_path / "b", merge(large, {"evaluation": {"split": 0.1}}))
    assert ra.step == rb.step == 12
    for pa, pb in zip(a.module.parameters(), b.module.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def test_max_steps_caps_the_run(tmp_path: Path) -> None:
    _, result = train(tmp_path, {"task": DIGITS_MLP, "optimization": {"epochs": 50, "maxSteps": 7}})
    assert result.step == 7
    assert result.total_steps == 7


def test_eval_interval_steps(tmp_path: Path) -> None:
    trainer, result = train(
        tmp_path, {"task": DIGITS_MLP, "optimization": {"epochs": 1}, "evaluation": {"intervalSteps": 5}}
    )
    assert trainer.last_eval_step == result.step


def test_custom_task_example_trains(tmp_path: Path) -> None:
    spec = {
        "task": {"custom": {"module": "custom_task.sine", "config": {"samples": 1000, "hidden": 32}}},
        "optimization": {"batchSize": 32, "epochs": 15, "optimizer": {"learningRate": 0.01}},
    }
    trainer, result = train(tmp_path, spec)
    assert trainer.task.architecture_kind == "custom"
    assert result.eval_metrics["r2"] > 0.9
    assert result.eval_metrics["eval_loss"] < 0.05


def test_early_stopping_on_a_metric_the_task_lacks_is_a_config_error(tmp_path: Path) -> None:
    spec = {
        "task": DIABETES_LINEAR,
        "evaluation": {"earlyStopping": {"metric": "accuracy", "mode": "max"}},
    }
    with pytest.raises(
        ConfigError, match=r"spec\.evaluation\.earlyStopping\.metric: accuracy .* eval_loss, mse, r2"
    ):
        train(tmp_path, spec)
