"""samples/s of coxswain_trainer against a bare torch DDP loop: same model, data, batch, run.

Both run as 2 gloo processes on this machine (one intra-op thread each), alternating
bare/trainer a few times so load from elsewhere hits both alike. Throughput is measured after
a warm-up: the bare loop times its steps after `WARMUP`; the trainer's figure comes from its
own progress log (samples and time between the first and last progress lines), so neither
start-up, evaluation nor the final checkpoint is counted.

Prints raw figures, then `ratio <what> <value>` lines. Goal: trainer/bare >= 0.97.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
WARMUP = 30


def bare_worker(channels: list[int], hidden: list[int], batch: int, steps: int, seed: int) -> None:
    """The baseline: the loop a user would write by hand with DDP (about 30 lines)."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from coxswain_trainer.data import load_builtin
    from coxswain_trainer.models import build_model

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo")
    data = load_builtin("digits", eval_fraction=0.2, seed=seed, standardize=True, device=torch.device("cpu"))
    x, y = data.train.x, data.train.y  # type: ignore[attr-defined]
    torch.manual_seed(seed)
    model = build_model("cnn", 64, 10, hidden_sizes=hidden, channels=channels)
    ddp = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    per_rank, step, epoch, started, cpu_started = batch // world, 0, 0, 0.0, 0.0
    while step < steps:
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + epoch))[rank::world]
        for i in range(0, len(perm), per_rank):
            if step == WARMUP:
                started, cpu_started = time.perf_counter(), time.process_time()
            idx = perm[i : i + per_rank]
            opt.zero_grad(set_to_none=True)
            loss_fn(ddp(x[idx]), y[idx]).backward()
            opt.step()
            step += 1
            if step >= steps:
                break
        epoch += 1
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    # Each step trains `batch` samples across the gang except an epoch's last, shorter one.
    trained = sum(min(per_rank, len(perm) - i) for i in range(0, len(perm), per_rank)) * world
    steps_per_epoch = -(-len(perm) // per_rank)
    measured = steps - WARMUP
    samples = measured * trained / steps_per_epoch
    if rank == 0:
        print(
            json.dumps({"samples_per_second": samples / elapsed, "samples_per_cpu_second": samples / cpu}),
            flush=True,
        )
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(argv: list[str], world: int, extra_env: dict[str, str], workdir: Path) -> list[str]:
    """Start `world` ranks with torchrun's environment; return rank 0's stdout+stderr."""
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            **extra_env,
        }
        procs.append(
            subprocess.Popen(
                argv, env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for rank, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
        if proc.returncode != 0:
            raise SystemExit(f"rank {rank} exited {proc.returncode}:\n{out[-3000:]}")
    return outputs[0].splitlines()


def run_bare(
    channels: list[int], hidden: list[int], batch: int, steps: int, world: int
) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second of rank 0)."""
    argv = [sys.executable, __file__, "--bare-worker", json.dumps([channels, hidden, batch, steps, 0])]
    with tempfile.TemporaryDirectory() as tmp:
        for line in _launch(argv, world, {}, Path(tmp)):
            if line.startswith("{"):
                figures = json.loads(line)
                return float(figures["samples_per_second"]), float(figures["samples_per_cpu_second"])
    raise SystemExit("the bare loop printed no figure")


def trainer_spec(channels: list[int], hidden: list[int], batch: int, steps: int) -> dict[str, Any]:
    return {
        "task": {
            "builtin": {"model": "cnn", "dataset": "digits", "channels": channels, "hiddenSizes": hidden}
        },
        "optimization": {"batchSize": batch, "epochs": 100000, "maxSteps": steps},
        # Only the final evaluation and checkpoint, after the measured window.
        "evaluation": {"intervalSteps": 10_000_000},
        "checkpoint": {"intervalSteps": 10_000_000},
    }


def run_trainer(
    channels: list[int], hidden: list[int], batch: int, steps: int, world: int
) -> tuple[float, float]:
    """(samples per wall second, samples per CPU second of rank 0), from the progress log."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "job.yaml").write_text(yaml.safe_dump(trainer_spec(channels, hidden, batch, steps)))
        env = {
            "COXSWAIN_LOG_FORMAT": "json",
            "COXSWAIN_LOG_INTERVAL_SECONDS": "0",
            "COXSWAIN_METRICS_PORT": "0",
            "COXSWAIN_CHECKPOINT_DIR": str(workdir / "ckpt"),
        }
        lines = _launch(
            [sys.executable, "-m", "coxswain_trainer", "--config", "job.yaml"], world, env, workdir
        )
    progress = [json.loads(line) for line in lines if line.startswith("{") and '"event": "progress"' in line]
    # Drop the first window (warm-up) and the last (cut short by the end of training).
    window = progress[1:-1]
    if len(window) < 2:
        raise SystemExit("run too short for a steady-state figure; raise --steps")
    first, last = window[0], window[-1]
    t0, t1 = (datetime.fromisoformat(e["time"].replace("Z", "+00:00")).timestamp() for e in (first, last))
    samples = last["samples_seen"] - first["samples_seen"]
    return samples / (t1 - t0), samples / (last["cpu_seconds"] - first["cpu_seconds"])


def in_process_loops(
    channels: list[int], hidden: list[int], batch: int, steps: int, rounds: int
) -> tuple[list[float], list[float]]:
    """CPU seconds of the trainer's loop and of the bare loop, one rank, alternating in this process.

    Without DDP and without process start-up this isolates the per-step work the trainer adds;
    CPU time (not wall time) keeps other work on the machine out of the figure.
    """
    import torch
    from torch import nn

    from coxswain.api.trainingjob import TrainingJobSpec
    from coxswain_trainer.checkpoint import CheckpointStore
    from coxswain_trainer.distributed import Topology
    from coxswain_trainer.loop import Trainer
    from coxswain_trainer.metrics import TrainerMetrics
    from coxswain_trainer.signals import StopRequest
    from coxswain_trainer.tasks import build_task

    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    spec = TrainingJobSpec.model_validate(trainer_spec(channels, hidden, batch, steps))

    def ours(tmp: Path) -> float:
        task = build_task(spec, cpu)
        topo = Topology(0, 1, 0, 1, cpu, "gloo")
        trainer = Trainer(
            spec,
            topo,
            task,
            CheckpointStore(tmp, 1),
            TrainerMetrics(),
            StopRequest(),
            log_interval_seconds=1e9,
        )
        trainer.start(None)
        trainer.save_checkpoint = lambda reason: None  # type: ignore[method-assign]  # the loop only
        trainer.evaluate = lambda: {}  # type: ignore[method-assign]
        started = time.process_time()
        trainer.run()
        return time.process_time() - started

    def bare() -> float:
        task = build_task(spec, cpu)
        x, y = task.data.train.x, task.data.train.y  # type: ignore[attr-defined]
        model, loss_fn = task.model, nn.CrossEntropyLoss()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        step, epoch, started = 0, 0, time.process_time()
        while step < steps:
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
            for i in range(0, len(perm), batch):
                idx = perm[i : i + batch]
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x[idx]), y[idx]).backward()
                opt.step()
                step += 1
                if step >= steps:
                    break
            epoch += 1
        return time.process_time() - started

    bare_times, our_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            bare_times.append(bare())
            our_times.append(ours(Path(tmp)))
    return bare_times, our_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bare-worker", help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--world", type=int, default=2)
    args = parser.parse_args()
    if args.bare_worker:
        bare_worker(*json.loads(args.bare_worker))
        return
    channels, hidden = [16, 32], [128, 64]  # the built-in digits CNN's defaults
    print(
        f"model cnn channels={channels} hidden={hidden} global_batch={args.batch} "
        f"processes={args.world} steps={args.steps} threads_per_process=1"
    )
    bare, ours, bare_cpu, ours_cpu = [], [], [], []
    for i in range(args.repeats):
        wall, cpu = run_bare(channels, hidden, args.batch, args.steps, args.world)
        bare.append(wall)
        bare_cpu.append(cpu)
        wall, cpu = run_trainer(channels, hidden, args.batch, args.steps, args.world)
        ours.append(wall)
        ours_cpu.append(cpu)
        print(
            f"repeat {i}: bare_ddp samples_per_second {bare[-1]:.0f} samples_per_cpu_second {bare_cpu[-1]:.0f} | "
            f"coxswain_trainer samples_per_second {ours[-1]:.0f} samples_per_cpu_second {ours_cpu[-1]:.0f}",
            flush=True,
        )
    # Best of the repeats is the wall-clock figure least disturbed by other work on a shared
    # machine; samples per CPU second of rank 0 hardly depends on that load, and it is where
    # any per-step overhead of the trainer would show.
    med = statistics.median
    print(
        f"bare_ddp samples_per_second best {max(bare):.0f} median {med(bare):.0f} per_cpu_second {med(bare_cpu):.0f}"
    )
    print(
        f"coxswain_trainer samples_per_second best {max(ours):.0f} median {med(ours):.0f} "
        f"per_cpu_second {med(ours_cpu):.0f}"
    )
    print(f"ratio trainer_vs_bare_ddp_samples_per_second {max(ours) / max(bare):.3f}")
    print(f"ratio trainer_vs_bare_ddp_samples_per_second_median {med(ours) / med(bare):.3f}")
    print(f"ratio trainer_vs_bare_ddp_samples_per_cpu_second {med(ours_cpu) / med(bare_cpu):.3f}")

    from coxswain_trainer.logs import log

    log.stream = open(os.devnull, "w")  # noqa: SIM115 - the in-process trainer's event lines
    bare_t, our_t = in_process_loops(channels, hidden, args.batch // args.world, 300, 6)
    print(
        f"in_process_one_rank cpu_seconds bare {[round(t, 3) for t in bare_t]} trainer {[round(t, 3) for t in our_t]}"
    )
    print(f"ratio trainer_loop_vs_bare_loop_in_process_cpu {med(bare_t) / med(our_t):.3f}")


if __name__ == "__main__":
    main()
