"""Users' own tasks: a module importable in the trainer image that provides

    build_model(config) -> torch.nn.Module
    build_datasets(config) -> (train_dataset, eval_dataset)   # map-style, items (x, y)
    loss_fn(config) -> callable(outputs, targets) -> scalar mean loss

`config` is `spec.task.custom.config`, passed as it is. Optional module attributes:
`shard_blocks(model)` (strategy fsdp: the submodules to `fully_shard` one by one, e.g. the
transformer layers; default: every submodule owning parameters), `TASK_KIND` ("classification" adds accuracy to the eval metrics; default "regression" for
float targets, "classification" for integer targets) and `LABELS` (class names for export).
A `TensorDataset` is moved to the device whole, like the built-in data; any other dataset is
read item by item.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from coxswain_trainer.data import DatasetSource, SampleSource, TaskData, TaskKind, TensorSource
from coxswain_trainer.parallel import ShardPolicy

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class CustomTask:
    model: nn.Module
    data: TaskData
    loss: LossFn
    rebuild: Callable[[], nn.Module]
    shard_blocks: ShardPolicy | None = None


class CustomTaskError(Exception):
    """The user's module broke its contract; the message says which function and how."""


def _source(dataset: Any, device: torch.device, which: str, module: str) -> SampleSource:
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return TensorSource(dataset.tensors[0].to(device), dataset.tensors[1].to(device))
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise CustomTaskError(
            f"{module}.build_datasets returned a {type(dataset).__name__} as the {which} dataset; "
            "it must be a map-style dataset (with __len__ and __getitem__) whose items are (x, y)"
        )
    return DatasetSource(cast(Dataset[tuple[torch.Tensor, torch.Tensor]], dataset), device)


def load_custom_task(module_name: str, config: dict[str, Any], device: torch.device) -> CustomTask:
    module = importlib.import_module(module_name)
    model = module.build_model(config)
    if not isinstance(model, nn.Module):
        raise CustomTaskError(
            f"{module_name}.build_model must return a torch.nn.Module, got {type(model).__name__}"
        )
    datasets = module.build_datasets(config)
    if not (isinstance(datasets, tuple | list) and len(datasets) == 2):
        raise CustomTaskError(f"{module_name}.build_datasets must return (train_dataset, eval_dataset)")
    train = _source(datasets[0], device, "train", module_name)
    evaluation = _source(datasets[1], device, "eval", module_name)
    if len(train) == 0 or len(evaluation) == 0:
        raise CustomTaskError(
            f"{module_name}.build_datasets returned an empty dataset (train {len(train)}, eval {len(evaluation)})"
        )
    loss = module.loss_fn(config)
    if not callable(loss):
        raise CustomTaskError(f"{module_name}.loss_fn must return a callable (outputs, targets) -> loss")
    x0, y0 = train.batch(torch.zeros(1, dtype=torch.long, device=device))
    kind = getattr(module, "TASK_KIND", None)
    if kind not in ("classification", "regression"):
        kind = "regression" if y0.is_floating_point() else "classification"
    model.to(device)
    with torch.no_grad():
        was_training = model.training
        model.eval()
        out = model(x0)
        model.train(was_training)
    labels = getattr(module, "LABELS", None)
    return CustomTask(
        model=model,
        data=TaskData(
            kind=cast(TaskKind, kind),
            train=train,
            eval=evaluation,
            input_shape=tuple(x0.shape[1:]),
            num_outputs=int(out.shape[-1]) if out.dim() > 1 else 1,
            labels=[str(label) for label in labels] if labels is not None else None,
            input_dtype=x0.dtype,
        ),
        loss=cast(LossFn, loss),
        rebuild=lambda: cast(nn.Module, module.build_model(config)),
        shard_blocks=_shard_policy(module, module_name),
    )


def _shard_policy(module: Any, module_name: str) -> ShardPolicy | None:
    policy = getattr(module, "shard_blocks", None)
    if policy is not None and not callable(policy):
        raise CustomTaskError(
            f"{module_name}.shard_blocks must be a function (model) -> iterable of submodules"
        )
    return cast(ShardPolicy | None, policy)
