"""How the model is spread over the ranks (ddp or fsdp) and in which precision it computes.

fsdp: FSDP2's `fully_shard` on every block, then on the whole model, so each rank keeps
1/N of the parameters, gradients and optimizer state and gathers one block at a time for
its forward and backward. A block is, by default, every module that owns parameters itself
(each Linear and Conv2d of the built-in models); a custom task module may choose its own by
defining `shard_blocks(model) -> iterable of submodules` (docs/api.md, Custom tasks), e.g.
the transformer layers of a language model.

Reduce-scatter on gloo: FSDP2 averages gradients with `ReduceOp.AVG` for fp32/bf16, and the
gloo of the torch we ship (2.15) implements AVG for reduce_scatter and all_reduce (checked
by tests/trainer/test_trainer_fsdp.py, whose fsdp and ddp runs agree), so no pre/post
division is needed; fp16 gradients are reduced by FSDP with SUM and a pre/post divide anyway.

Precision: weights and optimizer state stay fp32. ddp runs forward and loss under autocast;
fsdp uses its MixedPrecisionPolicy (parameters gathered and computed in bf16/fp16, gradients
reduced in fp32). fp16 scales the loss (GradScaler; FSDP's sharded variant agrees on
overflow across ranks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from coxswain_trainer.distributed import Topology

ShardPolicy = Callable[[nn.Module], Iterable[nn.Module]]

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_blocks(model: nn.Module) -> list[nn.Module]:
    """Every submodule that owns parameters directly, innermost first (fully_shard's order)."""
    owners = [m for m in model.modules() if m is not model and any(True for _ in m.parameters(recurse=False))]
    return list(reversed(owners))


def compute_dtype(precision: str) -> torch.dtype:
    return _DTYPES[precision]


def wrap(
    module: nn.Module,
    strategy: str,
    precision: str,
    topo: Topology,
    blocks: ShardPolicy | None = None,
) -> nn.Module:
    """The module the loop calls: DDP, fully_shard'ed in place, or `module` itself (one process)."""
    if not topo.distributed:
        return module
    if strategy == "ddp":
        cuda = topo.device.type == "cuda"
        return DistributedDataParallel(
            module, device_ids=[topo.device.index] if cuda else None, gradient_as_bucket_view=True
        )
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {}
    if precision != "fp32":
        kwargs["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=compute_dtype(precision), reduce_dtype=torch.float32, output_dtype=torch.float32
        )
    chosen = list((blocks or default_blocks)(module))
    for block in chosen:
        if not isinstance(block, nn.Module) or block is module:
            raise TypeError("shard_blocks must return submodules of the model (not the model itself)")
        fully_shard(block, **kwargs)
    fully_shard(module, **kwargs)
    return module


class Precision:
    """Autocast (ddp, or one process) and loss scaling (fp16) around the forward and backward."""

    def __init__(self, precision: str, strategy: str, topo: Topology) -> None:
        self.precision = precision
        self.device_type = topo.device.type
        # FSDP's policy already computes in the low precision; autocast would only add casts.
        self.autocast = precision != "fp32" and not (strategy == "fsdp" and topo.distributed)
        self.scaler: Any = None
        if precision == "fp16":
            if strategy == "fsdp" and topo.distributed:
                from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

                self.scaler = ShardedGradScaler(self.device_type)
            else:
                self.scaler = torch.amp.GradScaler(self.device_type)

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        if self.autocast:
            with torch.autocast(self.device_type, dtype=compute_dtype(self.precision)):
                yield
        else:
            yield

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Before clipping: gradients back in their true units."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
