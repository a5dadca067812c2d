"""fsdp against ddp on gloo processes of this machine, both measured in the same run:

- parameter + gradient + optimizer-state bytes held per rank (after one Adam step), at 2 and
  4 ranks: goal fsdp/ddp <= 1/N + 10%;
- samples/s of a training step (forward, backward, reduce, Adam) at 2 and 4 ranks (report);
- peak RSS per rank while training a >= 200 M-parameter MLP (built-in `mlp`, hiddenSizes
  16 x [3712] on 64 features: 207 M parameters) for a few steps, 2 ranks. fsdp gathers one
  block (here one Linear) at a time, so its peak is its 1/N share plus about one block's
  parameters and gradients: with 3 x [10240] (210 M, two blocks of 105 M) that transient is
  half the model and fsdp's peak RSS was 0.79 of ddp's; with 16 narrower layers it is 1/16.
  Every rank still builds the whole model once before sharding it (no meta-device init).

Uses the trainer's own model builder and `parallel.wrap`. Prints raw figures, then
`ratio <what> <value>` lines.
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _local_bytes(t: torch.Tensor) -> int:
    local = t.to_local() if hasattr(t, "to_local") else t
    return int(local.numel() * local.element_size())


def _worker(
    rank: int, world: int, port: int, strategy: str, hidden: list[int], batch: int, steps: int, out: Any
) -> None:
    from coxswain_trainer.distributed import Topology
    from coxswain_trainer.models import build_model
    from coxswain_trainer.parallel import wrap

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model("mlp", 64, 10, hidden_sizes=hidden)
    n_params = sum(p.numel() for p in model.parameters())
    trained = wrap(model, strategy, "fp32", Topology(rank, world, rank, world, cpu, "gloo"))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch // world, 64)
    y = torch.randint(0, 10, (batch // world,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        loss_fn(trained(x), y).backward()
        optimizer.step()

    step()  # warm-up, and creates the optimizer state
    state_bytes = sum(_local_bytes(p) for p in model.parameters())
    state_bytes += sum(_local_bytes(p.grad) for p in model.parameters() if p.grad is not None)
    state_bytes += sum(
        _local_bytes(v)
        for s in optimizer.state.values()
        for v in s.values()
        if torch.is_tensor(v) and v.dim() > 0
    )
    optimizer.zero_grad(set_to_none=False)
    dist.barrier()
    started = time.perf_counter()
    for _ in range(steps):
        step()
        optimizer.zero_grad(set_to_none=False)
    dist.barrier()
    elapsed = time.perf_counter() - started
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out.put((rank, n_params, state_bytes, batch * steps / elapsed, peak_rss))
    dist.destroy_process_group()


def measure(strategy: str, world: int, hidden: list[int], batch: int, steps: int) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _port()
    procs = [
        ctx.Process(target=_worker, args=(rank, world, port, strategy, hidden, batch, steps, out))
        for rank in range(world)
    ]
    for proc in procs:
        proc.start()
    results = [out.get() for _ in range(world)]
    for proc in procs:
        proc.join()
    return {
        "params": float(results[0][1]),
        "state_bytes": float(max(r[2] for r in results)),
        "samples_per_second": float(min(r[3] for r in results)),
        "peak_rss": float(max(r[4] for r in results)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--big-steps", type=int, default=2)
    parser.add_argument("--skip-big", action="store_true", help="leave out the 207 M-parameter RSS figure")
    parser.add_argument("--only-big", action="store_true", help="only the 207 M-parameter RSS figure")
    parser.add_argument("--big-hidden", default="3712x16", help="hiddenSizes of the big MLP, WIDTHxLAYERS")
    args = parser.parse_args()
    small = [1024, 1024, 1024]
    ratios: dict[str, float] = {}
    for world in () if args.only_big else (2, 4):
        figures = {s: measure(s, world, small, args.batch, args.steps) for s in ("ddp", "fsdp")}
        for s, f in figures.items():
            print(
                f"{s} ranks={world} mlp={small} params={f['params']:.0f} state_bytes_per_rank={f['state_bytes']:.0f} "
                f"samples_per_second={f['samples_per_second']:.0f}",
                flush=True,
            )
        ratios[f"fsdp_over_ddp_state_bytes_per_rank_{world}_ranks"] = (
            figures["fsdp"]["state_bytes"] / figures["ddp"]["state_bytes"]
        )
        ratios[f"fsdp_goal_state_bytes_per_rank_{world}_ranks"] = 1 / world + 0.1
        ratios[f"fsdp_over_ddp_samples_per_second_{world}_ranks"] = (
            figures["fsdp"]["samples_per_second"] / figures["ddp"]["samples_per_second"]
        )
    if not args.skip_big:
        width, layers = (int(v) for v in args.big_hidden.split("x"))
        big = [width] * layers
        figures = {s: measure(s, 2, big, 64, args.big_steps) for s in ("ddp", "fsdp")}
        for s, f in figures.items():
            print(
                f"{s} ranks=2 mlp={big} params={f['params']:.0f} state_bytes_per_rank={f['state_bytes']:.0f} "
                f"peak_rss_per_rank={f['peak_rss']:.0f}",
                flush=True,
            )
        millions = round(figures["ddp"]["params"] / 1e6)
        ratios[f"fsdp_over_ddp_peak_rss_per_rank_{millions}M_params_{width}x{layers}_2_ranks"] = (
            figures["fsdp"]["peak_rss"] / figures["ddp"]["peak_rss"]
        )
    for name, value in ratios.items():
        print(f"ratio {name} {value:.3f}")


if __name__ == "__main__":
    main()
