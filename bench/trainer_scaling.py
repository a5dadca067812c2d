"""2 processes against 1 on this machine, for coxswain_trainer and for a bare DDP loop on the
same larger CNN, data and global batch, in the same run (one intra-op thread per process, so
the second process adds the second core).

A tiny model's all-reduce dominates its step, so scaling is reported against bare DDP's own
scaling on the same model (docs design.md, Targets), not only against 2.0x.
Prints raw figures, then `ratio <what> <value>` lines. Goal: trainer 2-vs-1 >= 1.8x.
"""

from __future__ import annotations

import argparse

from trainer_throughput import run_bare, run_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    channels, hidden = [32, 64], [256]
    print(
        f"model cnn channels={channels} hidden={hidden} global_batch={args.batch} steps={args.steps} threads_per_process=1"
    )
    figures: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.repeats):
        for world in (1, 2):
            for name, run in (("bare_ddp", run_bare), ("coxswain_trainer", run_trainer)):
                rate, _ = run(channels, hidden, args.batch, args.steps, world)
                figures.setdefault((name, world), []).append(rate)
                print(f"{name} processes={world} samples_per_second {rate:.0f}", flush=True)
    # Best of the repeats: the figure least disturbed by other work on a shared machine.
    med = {key: max(values) for key, values in figures.items()}
    bare = med[("bare_ddp", 2)] / med[("bare_ddp", 1)]
    ours = med[("coxswain_trainer", 2)] / med[("coxswain_trainer", 1)]
    print(f"ratio bare_ddp_2_vs_1_processes {bare:.3f}")
    print(f"ratio trainer_2_vs_1_processes {ours:.3f}")
    print(f"ratio trainer_scaling_vs_bare_ddp_scaling {ours / bare:.3f}")
    print(f"ratio trainer_vs_bare_ddp_2_processes {med[('coxswain_trainer', 2)] / med[('bare_ddp', 2)]:.3f}")


if __name__ == "__main__":
    main()
