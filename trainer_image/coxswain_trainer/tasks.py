"""Turn `spec.task` into what the loop trains: a model, its data, its loss, and how to
describe the architecture in the export manifest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from coxswain.api.trainingjob import TrainingJobSpec
from coxswain_trainer.custom_task import load_custom_task
from coxswain_trainer.data import TaskData, load_builtin
from coxswain_trainer.models import build_model
from coxswain_trainer.parallel import ShardPolicy


@dataclass
class Task:
    model: nn.Module
    data: TaskData
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    architecture_kind: str  # linear | mlp | cnn | custom
    architecture_config: dict[str, Any] = field(default_factory=dict)
    # A new, untrained model of the same architecture (export gathers fsdp shards into it).
    rebuild: Callable[[], nn.Module] = field(default=lambda: nn.Identity())
    # fsdp: the submodules to shard one by one (None: every module owning parameters).
    shard_blocks: ShardPolicy | None = None


def build_task(spec: TrainingJobSpec, device: torch.device) -> Task:
    """The same model initialisation on every rank: seeded from `spec.seed` alone."""
    torch.manual_seed(spec.seed)
    if spec.task.custom is not None:
        custom = spec.task.custom
        loaded = load_custom_task(custom.module, dict(custom.config), device)
        return Task(
            model=loaded.model,
            data=loaded.data,
            loss=loaded.loss,
            architecture_kind="custom",
            architecture_config={"module": custom.module, "config": dict(custom.config)},
            rebuild=loaded.rebuild,
            shard_blocks=loaded.shard_blocks,
        )
    builtin = spec.task.builtin
    assert builtin is not None  # the API's rule: exactly one of builtin / custom
    data = load_builtin(
        builtin.dataset.value,
        eval_fraction=spec.evaluation.split,
        seed=spec.seed,
        standardize=builtin.standardize,
        device=device,
        synthetic_samples=builtin.synthetic_samples,
        synthetic_features=builtin.synthetic_features,
    )

    def rebuild() -> nn.Module:
        return build_model(
            builtin.model.value,
            data.input_shape[0],
            data.num_outputs,
            hidden_sizes=builtin.hidden_sizes,
            channels=builtin.channels,
            dropout=builtin.dropout,
        )

    model = rebuild().to(device)
    loss: nn.Module = nn.CrossEntropyLoss() if data.kind == "classification" else nn.MSELoss()
    config: dict[str, Any] = {
        "model": builtin.model.value,
        "dataset": builtin.dataset.value,
        "inFeatures": data.input_shape[0],
        "outFeatures": data.num_outputs,
        "standardize": builtin.standardize,
    }
    if builtin.model.value in ("mlp", "cnn"):
        config["hiddenSizes"] = list(builtin.hidden_sizes)
        config["dropout"] = builtin.dropout
    if builtin.model.value == "cnn":
        config["channels"] = list(builtin.channels)
    return Task(
        model=model,
        data=data,
        loss=loss,
        architecture_kind=builtin.model.value,
        architecture_config=config,
        rebuild=rebuild,
    )
