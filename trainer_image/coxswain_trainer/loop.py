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
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
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
from coxswain_trainer.parallel import Precision, wrap
from coxswain_trainer.signals import Interrupted, StopRequest
from coxswain_trainer.tasks import Task

CHECKPOINT_FORMAT = 2  # 2: DCP directories (checkpoint.py); 1 was one torch.save file


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
        self.strategy = spec.optimization.strategy.value
        self.precision_name = spec.optimization.precision.value
        # fsdp with one process has nothing to shard: it trains (and checkpoints) as ddp does.
        self.sharded = self.strategy == "fsdp" and topo.distributed
        self.precision = Precision(self.precision_name, self.strategy, topo)
        self.train_model: nn.Module = self.module
        if self.sharded:
            # Before the optimizer is built: fully_shard swaps the parameters for sharded ones.
            self.train_model = wrap(self.module, "fsdp", self.precision_name, topo, task.shard_blocks)
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
        self.last_checkpoint_step: int | None = None  # the step of this process's newest checkpoint
        self._warned_diverged = False
        self.samples_seen = 0  # rank 0: global samples trained in this process's lifetime
        self.progress_interval = progress_interval_seconds
        self.log_interval = (
            log_interval_seconds
            if log_interval_seconds is not None
            else float(os.environ.get("COXSWAIN_LOG_INTERVAL_SECONDS", "10"))
        )

    # ---- state -------------------------------------------------------------------------

    def trainer_state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        """Everything but the tensors of model and optimizer (those go through DCP)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "epoch": self.epoch,
            "epoch_samples": self.epoch_samples,
            "world_size": self.topo.world_size,
            "strategy": self.strategy,
            "precision": self.precision_name,
            "finished": self.finished,
            "stopped_early": self.stopped_early,
            "scheduler": self.schedule.state_dict(),
            "scaler": self.precision.state_dict(),
            "early_stopping": self.early.state_dict() if self.early else None,
            "eval": dict(self.last_eval),
            "eval_step": self.last_eval_step,
            "rng": rng,
        }

    def tensor_state(self) -> dict[str, Any]:
        """Model and optimizer keyed by parameter name: the same keys for ddp and fsdp, so DCP can
        load either into either (sharded DTensors under fsdp, whole tensors under ddp)."""
        model, optim = get_state_dict(self.module, self.optimizer)
        return {"model": model, "optim": optim}

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        self.schedule.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state.get("scaler"))
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

    def resume(self, step: int) -> dict[str, Any]:
        """Load checkpoint `step` on every rank (a collective); returns its trainer state.

        fsdp: every rank reads its part from the shared volume. ddp: rank 0 reads it all and
        broadcasts it, so the other ranks need no checkpoint volume at all.
        """
        if self.sharded:
            trainer_state = self.store.load_trainer_state(step)
            tensors = self.tensor_state()
            self.store.read_shards(tensors, step, alone=False)
        else:
            box: list[Any] = [None]
            if self.topo.is_main:
                tensors = self.tensor_state()
                self.store.read_shards(tensors, step, alone=True)
                box = [(tensors, self.store.load_trainer_state(step))]
            if self.topo.distributed:
                dist.broadcast_object_list(box, src=0)
            tensors, trainer_state = box[0]
        set_state_dict(
            self.module, self.optimizer, model_state_dict=tensors["model"], optim_state_dict=tensors["optim"]
        )
        self.load_trainer_state(trainer_state)
        return trainer_state

    def start(self, resume_step: int | None) -> dict[str, Any] | None:
        """Load a checkpoint (or seed afresh), then wrap in DDP, which broadcasts rank 0's weights."""
        state = self.resume(resume_step) if resume_step is not None else None
        if state is None:
            _seed_rank_generators(self.spec.seed, self.topo.rank, 0)
        if self.topo.distributed and not self.sharded:
            self.train_model = wrap(self.module, "ddp", self.precision_name, self.topo)
        return state

    def save_checkpoint(self, reason: str) -> None:
        """A collective: every rank calls it at the same step. ddp: rank 0 writes everything;
        fsdp: every rank writes its shard, then rank 0 commits."""
        if self.topo.is_main:
            self.metrics.set_state("checkpointing")
        started = time.perf_counter()
        rng = gather_rng(self.topo)
        self.last_checkpoint_step = None  # until this one is complete (a peer may fail midway)
        if self.sharded:
            if self.topo.is_main:
                self.store.begin(self.step)
            dist.barrier()
            self.store.write_shards(self.tensor_state(), self.step, alone=False)
            mine = self.store.shard_digests(self.step, self.topo.rank)
            gathered: list[Any] = [None] * self.topo.world_size if self.topo.is_main else []
            dist.gather_object(mine, gathered if self.topo.is_main else None, dst=0)
            if self.topo.is_main:
                digests = {name: d for part in gathered for name, d in part.items()}
                self._commit(rng, digests, reason, started)
        elif self.topo.is_main:
            self._write_alone(rng, reason, started)
        self.last_checkpoint_step = self.step
        if self.topo.is_main:
            self.metrics.set_state("training")

    def _stop_agreed(self) -> bool:
        """Whether to stop at this step boundary. ddp: this rank's own signal (rank 0 then writes
        alone). fsdp: whether any rank got one, agreed by all of them with one tiny all-reduce
        per step, so that they stop at the same step and write the signal checkpoint together
        (the pods of a gang get SIGTERM at slightly different times)."""
        if not self.sharded:
            return self.stop.requested
        flag = torch.tensor([1 if self.stop.requested else 0], dtype=torch.int32, device=self.topo.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def save_checkpoint_alone(self, reason: str) -> None:
        """Rank 0 writes without the other ranks (after a signal, when they may be gone)."""
        if not self.topo.is_main or self.last_checkpoint_step == self.step:
            return
        if self.sharded:
            log.warning(
                "checkpoint_skipped",
                step=self.step,
                reason=reason,
                detail="fsdp checkpoints need every rank and a peer was gone; the newest complete "
                "checkpoint is where the next attempt resumes",
            )
            return
        self._write_alone([capture_rng()], reason, time.perf_counter())

    def _write_alone(self, rng: list[dict[str, Any]], reason: str, started: float) -> None:
        self.store.begin(self.step)
        self.store.write_shards(self.tensor_state(), self.step, alone=True)
        self._commit(rng, self.store.shard_digests(self.step, 0), reason, started)

    def _commit(
        self, rng: list[dict[str, Any]], digests: dict[str, dict[str, Any]], reason: str, started: float
    ) -> None:
        path = self.store.commit(self.step, self.trainer_state(rng), digests)
        took = time.perf_counter() - started
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_seconds.observe(took)
        self.metrics.update(
            lastCheckpoint={"step": self.step, "path": str(path), "time": datetime.now(UTC).isoformat()}
        )
        log.info(
            "checkpoint_saved",
            step=self.step,
            path=str(path),
            reason=reason,
            seconds=round(took, 3),
            strategy=self.strategy,
            world_size=self.topo.world_size,
        )

    def consolidated_model(self) -> nn.Module | None:
        """The whole trained model on rank 0 (None elsewhere), for export. A collective under
        fsdp: the shards are gathered into a freshly built copy of the model."""
        if not self.sharded:
            return self.module if self.topo.is_main else None
        full = get_model_state_dict(
            self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if not self.topo.is_main:
            return None
        model = self.task.rebuild()
        model.load_state_dict(full)
        return model.to(self.topo.device)

    # ---- evaluation --------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        if self.topo.is_main:
            self.metrics.set_state("evaluating")
        result = evaluate(self.module, self.task.data, self.task.loss, self.topo, lockstep=self.sharded)
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
        with self.precision.forward():
            loss = self.task.loss(self.train_model(x), y)
        if parts > 1:
            loss = loss / parts
        self.precision.backward(loss)
        return loss.detach().float()

    def _sync_gradients(self, on: bool) -> None:
        """fsdp: reduce-scatter only on the last micro-batch of an accumulated step."""
        if self.sharded:
            self.train_model.set_requires_gradient_sync(on)  # type: ignore[operator]

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
            self.metrics.parallelism.labels(strategy=self.strategy, precision=self.precision_name).set(1)
            self.metrics.learning_rate.set(self.schedule.current_lr())
            self.metrics.update(
                step=self.step,
                totalSteps=plan.total_steps,
                epoch=self.epoch,
                state="training",
                worldSize=world,
                strategy=self.strategy,
                precision=self.precision_name,
            )
            log.info(
                "training_started",
                step=self.step,
                total_steps=plan.total_steps,
                steps_per_epoch=plan.steps_per_epoch,
                micro_batch_per_rank=b,
                accumulation=accumulation,
                world_size=world,
                strategy=self.strategy,
                precision=self.precision_name,
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
            # What the epoch still owes: the permutation after the samples already consumed
            # (possibly by a different number of processes before a resume), data.epoch_shard.
            shard = epoch_shard(
                n_train,
                rank=topo.rank,
                world_size=world,
                seed=spec.seed,
                epoch=self.epoch,
                device=topo.device,
                start=min(self.epoch_samples, n_train),
            )
            micro = [shard[i : i + b] for i in range(0, int(shard.shape[0]), b)]
            g = 0
            if not micro:  # nothing left of it (a checkpoint taken at its very end)
                self.epoch += 1
                self.epoch_samples = 0
                continue
            while g < len(micro):
                chunk = micro[g : g + accumulation]
                parts = len(chunk)
                if parts > 1:
                    self._sync_gradients(False)
                for j in range(parts - 1):
                    x, y = data.train.batch(chunk[j])
                    if ddp is not None:
                        with ddp.no_sync():  # gradients are all-reduced once, on the last micro-batch
                            loss = self._micro_step(x, y, parts)
                    else:
                        loss = self._micro_step(x, y, parts)
                    if main:
                        loss_sum += loss
                if parts > 1:
                    self._sync_gradients(True)
                x, y = data.train.batch(chunk[-1])
                loss = self._micro_step(x, y, parts)
                if main:
                    loss_sum += loss
                if clip is not None:
                    self.precision.unscale(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(params, clip)
                self.precision.step(self.optimizer)
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
                if self._stop_agreed():
                    if self.sharded and self.last_checkpoint_step != self.step:
                        # Every rank is here at this step: the one chance to write fsdp's shards.
                        self.save_checkpoint("signal")
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
