"""The distributed training loop: gradient descent modes, accumulation, clipping, evaluation,
early stopping, periodic checkpoints and resume.

The inner loop does what a bare DDP loop does (index a batch, forward, backward, step) plus
integer bookkeeping; anything that synchronises with the device (`.item()`) or costs Python
time per sample happens only at the progress interval, at evaluations and at checkpoints.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from coxswain.api.trainingjob import GradientDescent, TrainingJobSpec
from coxswain_trainer.checkpoint import CheckpointStore, capture_rng, gather_rng, restore_rng
from coxswain_trainer.config import ConfigError
from coxswain_trainer.data import epoch_shard
from coxswain_trainer.distributed import Topology
from coxswain_trainer.evaluation import EarlyStopper, evaluate
from coxswain_trainer.logs import log
from coxswain_trainer.metrics import TrainerMetrics
from coxswain_trainer.optim import OptimizerSettings, Schedule, ScheduleSettings, build_optimizer
from coxswain_trainer.signals import Interrupted, StopRequest
from coxswain_trainer.tasks import Task

CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class Plan:
    """How one epoch is cut into optimizer steps on each rank."""

    micro_batch: int  # samples per rank per forward/backward
    accumulation: int  # micro-batches per optimizer step
    shard_size: int  # samples per rank per epoch (DistributedSampler pads to equal shares)
    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    epochs: int


def make_plan(spec: TrainingJobSpec, n_train: int, world_size: int) -> Plan:
    opt = spec.optimization
    shard = math.ceil(n_train / world_size)
    if opt.gradient_descent == GradientDescent.FULL_BATCH:
        micro = shard
    elif opt.gradient_descent == GradientDescent.PER_SAMPLE:
        micro = 1
    else:
        micro = max(1, opt.batch_size // world_size)  # the global batch, shared out
    micro = min(micro, shard)
    micro_batches = math.ceil(shard / micro)
    steps_per_epoch = math.ceil(micro_batches / opt.gradient_accumulation_steps)
    total = opt.epochs * steps_per_epoch
    if opt.max_steps is not None:
        total = min(total, opt.max_steps)
    return Plan(
        micro, opt.gradient_accumulation_steps, shard, micro_batches, steps_per_epoch, total, opt.epochs
    )


@dataclass
class RunResult:
    step: int
    total_steps: int
    epoch: int
    stopped_early: bool
    eval_metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None


def _seed_rank_generators(seed: int, rank: int, step: int) -> None:
    """Dropout and any user randomness: different per rank, reproducible per (seed, rank, step)."""
    derived = int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
    torch.manual_seed(derived)
    np.random.seed(derived)
    random.seed(derived)


class Trainer:
    def __init__(
        self,
        spec: TrainingJobSpec,
        topo: Topology,
        task: Task,
        store: CheckpointStore,
        metrics: TrainerMetrics,
        stop: StopRequest,
        *,
        progress_interval_seconds: float = 1.0,
        log_interval_seconds: float | None = None,
    ) -> None:
        self.spec, self.topo, self.task, self.store, self.metrics, self.stop = (
            spec,
            topo,
            task,
            store,
            metrics,
            stop,
        )
        self.module: nn.Module = task.model
        self.plan = make_plan(spec, len(task.data.train), topo.world_size)
        o, s = spec.optimization.optimizer, spec.optimization.schedule
        self.optimizer = build_optimizer(
            self.module.parameters(),
            OptimizerSettings(
                o.name.value, o.learning_rate, o.momentum, o.weight_decay, (o.betas[0], o.betas[1])
            ),
        )
        self.schedule = Schedule(
            self.optimizer,
            ScheduleSettings(s.type.value, s.warmup_steps, s.step_size, s.gamma, s.min_learning_rate),
            self.plan.total_steps,
        )
        es = spec.evaluation.early_stopping
        available = (
            ("eval_loss", "accuracy") if task.data.kind == "classification" else ("eval_loss", "mse", "r2")
        )
        if es is not None and es.metric.value not in available:
            raise ConfigError(
                f"spec.evaluation.earlyStopping.metric: {es.metric.value} is not measured for a "
                f"{task.data.kind} task; use one of {', '.join(available)}"
            )
        self.early = EarlyStopper(es.metric.value, es.mode.value, es.patience, es.min_delta) if es else None
        kind = task.data.kind
        self.headline_metric = es.metric.value if es else ("accuracy" if kind == "classification" else "r2")
        self.step = 0
        self.epoch = 0
        self.epoch_samples = 0  # global samples consumed in the current epoch
        self.finished = False
        self.stopped_early = False
        self.last_eval: dict[str, float] = {}
        self.last_eval_step = -1
        self.resumed_from: int | None = None
        self._warned_diverged = False
        self.samples_seen = 0  # rank 0: global samples trained in this process's lifetime
        self.train_model: nn.Module = self.module
        self.progress_interval = progress_interval_seconds
        self.log_interval = (
            log_interval_seconds
            if log_interval_seconds is not None
            else float(os.environ.get("COXSWAIN_LOG_INTERVAL_SECONDS", "10"))
        )

    # ---- state -------------------------------------------------------------------------

    def state_dict(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "epoch_samples": self.epoch_samples,
            "world_size": self.topo.world_size,
            "finished": self.finished,
            "stopped_early": self.stopped_early,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "early_stopping": self.early.state_dict() if self.early else None,
            "eval": dict(self.last_eval),
            "eval_step": self.last_eval_step,
            "rng": rng,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.epoch_samples = int(state["epoch_samples"])
        self.finished, self.stopped_early = bool(state["finished"]), bool(state["stopped_early"])
        if self.early and state.get("early_stopping"):
            self.early.load_state_dict(state["early_stopping"])
        self.last_eval = {k: float(v) for k, v in state.get("eval", {}).items()}
        self.last_eval_step = int(state.get("eval_step", -1))
        rng = state.get("rng") or []
        if len(rng) == self.topo.world_size:
            restore_rng(rng[self.topo.rank])
        else:
            # Written on SIGTERM by rank 0 alone, or by a different world size.
            _seed_rank_generators(self.spec.seed, self.topo.rank, self.step)
        self.resumed_from = self.step
        self.metrics.update(resumedFromStep=self.step)

    def start(self, state: dict[str, Any] | None) -> None:
        """Load a checkpoint (or seed afresh), then wrap in DDP, which broadcasts rank 0's weights."""
        if state is not None:
            self.load_state_dict(state)
        else:
            _seed_rank_generators(self.spec.seed, self.topo.rank, 0)
        if self.topo.distributed:
            cuda = self.topo.device.type == "cuda"
            self.train_model = DistributedDataParallel(
                self.module,
                device_ids=[self.topo.device.index] if cuda else None,
                gradient_as_bucket_view=True,
            )

    def save_checkpoint(self, reason: str) -> None:
        """A collective: every rank calls it at the same step; rank 0 writes."""
        if self.topo.is_main:
            self.metrics.set_state("checkpointing")
        rng = gather_rng(self.topo)
        if self.topo.is_main:
            self._write(rng, reason)
            self.metrics.set_state("training")

    def save_checkpoint_alone(self, reason: str) -> None:
        """Rank 0 writes without the other ranks (after a signal, when they may be gone)."""
        if self.topo.is_main:
            self._write([capture_rng()], reason)

    def _write(self, rng: list[dict[str, Any]], reason: str) -> None:
        started = time.perf_counter()
        path = self.store.save(self.state_dict(rng), self.step)
        took = time.perf_counter() - started
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_seconds.observe(took)
        self.metrics.update(
            lastCheckpoint={"step": self.step, "path": str(path), "time": datetime.now(UTC).isoformat()}
        )
        log.info("checkpoint_saved", step=self.step, path=str(path), reason=reason, seconds=round(took, 3))

    # ---- evaluation --------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        if self.topo.is_main:
            self.metrics.set_state("evaluating")
        result = evaluate(self.module, self.task.data, self.task.loss, self.topo)
        self.last_eval, self.last_eval_step = result, self.step
        if self.topo.is_main:
            for name, value in result.items():
                self.metrics.eval_metric.labels(name=name).set(value)
            self.metrics.update(
                evalMetric=result.get(self.headline_metric),
                evalMetricName=self.headline_metric,
                state="training",
            )
            log.info(
                "evaluated", step=self.step, epoch=self.epoch, **{k: round(v, 6) for k, v in result.items()}
            )
        return result

    # ---- training ----------------------------------------------------------------------

    def _micro_step(self, x: torch.Tensor, y: torch.Tensor, parts: int) -> torch.Tensor:
        loss = self.task.loss(self.train_model(x), y)
        if parts > 1:
            loss = loss / parts
        loss.backward()  # type: ignore[no-untyped-call]
        return loss.detach()

    def run(self) -> RunResult:
        plan, topo, data = self.plan, self.topo, self.task.data
        spec = self.spec
        main, world = topo.is_main, topo.world_size
        ckpt_every = spec.checkpoint.interval_steps
        eval_every = spec.evaluation.interval_steps
        clip = spec.optimization.gradient_clip_norm
        params = [p for p in self.module.parameters() if p.requires_grad]
        ddp = self.train_model if isinstance(self.train_model, DistributedDataParallel) else None
        n_train = len(data.train)
        b, accumulation = plan.micro_batch, plan.accumulation

        if main:
            self.metrics.world_size.set(world)
            self.metrics.learning_rate.set(self.schedule.current_lr())
            self.metrics.update(
                step=self.step, totalSteps=plan.total_steps, epoch=self.epoch, state="training"
            )
            log.info(
                "training_started",
                step=self.step,
                total_steps=plan.total_steps,
                steps_per_epoch=plan.steps_per_epoch,
                micro_batch_per_rank=b,
                accumulation=accumulation,
                world_size=world,
                train_samples=n_train,
                eval_samples=len(data.eval),
                resumed_from=self.resumed_from,
            )
        loss_sum = torch.zeros((), device=topo.device)
        window_steps = window_samples = 0
        window_start = last = time.perf_counter()
        next_refresh = last + self.progress_interval
        next_log = last + self.log_interval
        self.train_model.train()

        while not self.finished and self.step < plan.total_steps and self.epoch < plan.epochs:
            shard = epoch_shard(
                n_train,
                rank=topo.rank,
                world_size=world,
                seed=spec.seed,
                epoch=self.epoch,
                device=topo.device,
            )
            micro = [shard[i : i + b] for i in range(0, int(shard.shape[0]), b)]
            g = min(self.epoch_samples // (b * world), len(micro))
            while g < len(micro):
                chunk = micro[g : g + accumulation]
                parts = len(chunk)
                for j in range(parts - 1):
                    x, y = data.train.batch(chunk[j])
                    if ddp is not None:
                        with ddp.no_sync():  # gradients are all-reduced once, on the last micro-batch
                            loss = self._micro_step(x, y, parts)
                    else:
                        loss = self._micro_step(x, y, parts)
                    if main:
                        loss_sum += loss
                x, y = data.train.batch(chunk[-1])
                loss = self._micro_step(x, y, parts)
                if main:
                    loss_sum += loss
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.schedule.step()
                g += parts
                self.step += 1
                step_samples = (b * (parts - 1) + int(chunk[-1].shape[0])) * world
                self.epoch_samples += step_samples
                epoch_done = g >= len(micro)
                if epoch_done:
                    self.epoch += 1
                    self.epoch_samples = 0

                if main:
                    now = time.perf_counter()
                    self.metrics.step_duration.observe(now - last)
                    last = now
                    window_steps += 1
                    window_samples += step_samples
                    if now >= next_refresh:
                        self._refresh(
                            loss_sum, window_steps, window_samples, now - window_start, now >= next_log
                        )
                        loss_sum.zero_()
                        window_steps = window_samples = 0
                        window_start, next_refresh = now, now + self.progress_interval
                        if now >= next_log:
                            next_log = now + self.log_interval

                if (eval_every is not None and self.step % eval_every == 0) or (
                    eval_every is None and epoch_done
                ):
                    result = self.evaluate()
                    if self.early is not None and self.early.update(result[self.early.metric]):
                        self.finished = self.stopped_early = True
                        if main:
                            log.info(
                                "early_stopped",
                                step=self.step,
                                metric=self.early.metric,
                                best=self.early.best,
                                patience=self.early.patience,
                            )
                if self.step >= plan.total_steps:
                    self.finished = True
                if self.finished:
                    break
                if self.step % ckpt_every == 0:
                    self.save_checkpoint("interval")
                if self.stop.requested:
                    raise Interrupted()
            if self.finished:
                break

        self.finished = True
        if main and window_steps:
            self._refresh(loss_sum, window_steps, window_samples, time.perf_counter() - window_start, True)
        if self.last_eval_step != self.step:
            self.evaluate()
        self.save_checkpoint("final")
        if main:
            self.metrics.update(step=self.step, etaSeconds=0.0)
            log.info(
                "training_finished",
                step=self.step,
                total_steps=plan.total_steps,
                stopped_early=self.stopped_early,
                **{k: round(v, 6) for k, v in self.last_eval.items()},
            )
        return RunResult(
            self.step,
            plan.total_steps,
            self.epoch,
            self.stopped_early,
            dict(self.last_eval),
            self.resumed_from,
        )

    def _refresh(
        self, loss_sum: torch.Tensor, steps: int, samples: int, elapsed: float, write_log: bool
    ) -> None:
        """Rank 0: turn the window's sums into progress and metrics (the one `.item()` sync)."""
        train_loss = float(loss_sum.item()) / max(steps, 1)
        if not math.isfinite(train_loss) and not self._warned_diverged:
            self._warned_diverged = True
            log.warning(
                "loss_not_finite",
                step=self.step,
                loss=train_loss,
                action="training diverged: lower optimization.optimizer.learningRate or set gradientClipNorm",
            )
        rate = samples / elapsed if elapsed > 0 else 0.0
        self.samples_seen += samples
        eta = (self.plan.total_steps - self.step) * elapsed / steps if steps else None
        lr = self.schedule.current_lr()
        self.metrics.learning_rate.set(lr)
        self.metrics.update(
            step=self.step,
            epoch=self.epoch,
            trainLoss=train_loss,
            samplesPerSecond=round(rate, 2),
            etaSeconds=round(eta, 1) if eta is not None else None,
        )
        if write_log:
            log.info(
                "progress",
                step=self.step,
                total_steps=self.plan.total_steps,
                epoch=self.epoch,
                loss=train_loss,
                lr=lr,
                samples_per_second=round(rate, 1),
                samples_seen=self.samples_seen,
                cpu_seconds=round(time.process_time(), 3),  # this process's CPU time: overhead shows here
                eta_seconds=round(eta, 1) if eta is not None else None,
            )
