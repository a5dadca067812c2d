"""`python -m coxswain_trainer --config job.yaml` (under torchrun in a training pod, or by hand).

Exit codes (docs/api.md, Trainer contract): 0 success; 1 the training code failed; 2 bad
configuration (before any work); 3 a peer rank died or hung (collective failed or timed out);
143 after SIGTERM with a checkpoint written (130 after Ctrl-C).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import traceback
from typing import Any

from coxswain_trainer.config import ConfigError, TrainerConfig, load_config
from coxswain_trainer.logs import log

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_PEER = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="coxswain-trainer",
        description="Train a model as one process of a torchrun gang, from a TrainingJob (or its spec).",
    )
    parser.add_argument(
        "--config",
        default=os.environ.get("COXSWAIN_CONFIG", "/etc/coxswain/job.yaml"),
        help="YAML file holding a TrainingJob object or only its spec (default: /etc/coxswain/job.yaml)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        # Validation is torch-free, so this answer comes before the slow import.
        for line in str(exc).splitlines():
            log.error("config_invalid", problem=line, action="fix the TrainingJob spec; nothing was started")
        return EXIT_CONFIG
    return run(config)


def _train_config(config: TrainerConfig, world_size: int) -> dict[str, Any]:
    spec = config.spec
    return {
        "optimization": spec.optimization.to_dict(),
        "evaluation": spec.evaluation.to_dict(),
        "seed": spec.seed,
        "worldSize": world_size,
        "strategy": spec.optimization.strategy.value,
        "precision": spec.optimization.precision.value,
    }


def run(config: TrainerConfig) -> int:
    from coxswain_trainer.signals import Interrupted, StopRequest

    stop = StopRequest()
    stop.install()  # before the slow imports and rendezvous: a SIGTERM then still exits cleanly

    import torch

    from coxswain_trainer.checkpoint import CheckpointStore, chosen_step
    from coxswain_trainer.distributed import init_from_env, is_peer_failure, shutdown, threads_per_process
    from coxswain_trainer.export import export_model, write_termination_log
    from coxswain_trainer.loop import Trainer
    from coxswain_trainer.metrics import TrainerMetrics
    from coxswain_trainer.tasks import build_task

    spec = config.spec
    metrics = TrainerMetrics()
    trainer: Trainer | None = None
    main_rank = os.environ.get("RANK", "0") == "0"
    try:
        topo = init_from_env(spec.backend.value)
    except Exception as exc:
        log.error(
            "rendezvous_failed",
            error=str(exc),
            action="check that all ranks can reach MASTER_ADDR:MASTER_PORT",
        )
        return EXIT_PEER
    log.rank = topo.rank
    torch.set_num_threads(threads_per_process(topo.local_world_size))
    if topo.is_main:
        try:
            port = metrics.serve(config.metrics_port)
            log.info("metrics_listening", port=port, paths="/metrics /progress")
        except OSError as exc:
            # Training matters more than its progress report: go on without them.
            log.error(
                "metrics_unavailable",
                port=config.metrics_port,
                error=str(exc),
                action="free the port or set COXSWAIN_METRICS_PORT; /metrics and /progress are off for this run",
            )
    log.info(
        "started",
        world_size=topo.world_size,
        backend=topo.backend,
        device=str(topo.device),
        threads=torch.get_num_threads(),
        job=config.job.name,
        attempt=config.job.attempt,
    )
    code = EXIT_FAILED
    try:
        task = build_task(spec, topo.device)
        store = CheckpointStore(config.checkpoint_dir, spec.checkpoint.keep)
        trainer = Trainer(spec, topo, task, store, metrics, stop)
        resume_step = chosen_step(store, topo)
        state = trainer.start(resume_step)
        if state is not None:
            log.info(
                "resuming",
                step=state["step"],
                epoch=state["epoch"],
                epoch_samples=state["epoch_samples"],
                written_by=f"{state.get('world_size')} x {state.get('strategy', 'ddp')}",
                world_size=topo.world_size,
                strategy=trainer.strategy,
                checkpoint_dir=str(config.checkpoint_dir),
            )
        result = trainer.run()
        consolidated = trainer.consolidated_model()  # a collective under fsdp
        if topo.is_main:
            assert consolidated is not None
            exported = None
            if config.export is not None:
                metrics.set_state("exporting")
                exported = export_model(
                    dataclasses.replace(task, model=consolidated),
                    config.export,
                    config.job,
                    result.eval_metrics,
                    _train_config(config, topo.world_size),
                )
            write_termination_log(config.termination_log, exported, result.step)
            metrics.set_state("finished")
        code = EXIT_OK
    except ConfigError as exc:
        # Found only once the task is built (e.g. an early-stopping metric the task lacks).
        code = EXIT_CONFIG
        log.error("config_invalid", problem=str(exc), action="fix the TrainingJob spec")
    except Interrupted:
        assert trainer is not None
        trainer.save_checkpoint_alone("signal")
        code = stop.exit_code
        log.info("stopped_by_signal", step=trainer.step, signal=stop.signum, exit_code=code)
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        if topo.distributed and is_peer_failure(exc):
            if stop.requested and trainer is not None:
                # Terminated together with peers that left first: still keep this step's state.
                trainer.save_checkpoint_alone("signal")
                code = stop.exit_code
                log.info("stopped_by_signal", step=trainer.step, signal=stop.signum, exit_code=code)
            else:
                code = EXIT_PEER
                log.error(
                    "peer_failed",
                    error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                    step=trainer.step if trainer else None,
                    action="another rank died or hung; the gang restarts and resumes from the last checkpoint",
                )
        else:
            code = EXIT_FAILED
            log.error(
                "training_failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()
            )
        metrics.set_state("failed")
    finally:
        metrics.stop()
        sys.stdout.flush()
        sys.stderr.flush()
    if code == EXIT_PEER or (code != EXIT_OK and topo.distributed):
        # A process group with a dead member can hang in its destructor; leave without it.
        os._exit(code)
    shutdown()
    if main_rank and code == EXIT_OK:
        log.info("exited", exit_code=code)
    return code


if __name__ == "__main__":
    sys.exit(main())
