"""The versions of one model this server holds, and which one serves each call.

Explicit version calls reach exactly that version; unversioned calls pick by the traffic
split. Loading a version happens beside serving (a load thread, then a warm-up on the
inference thread); the split only names a version once it is warmed up, and a version
leaves the split before it is unloaded, so changing weights or versions fails no request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor

import torch

from coxswain.artifacts.repository import list_versions
from coxswain_server.batcher import Batcher
from coxswain_server.errors import Conflict, ModelLoadError, NotFound, NotReady
from coxswain_server.metrics import ServerMetrics, VersionMetrics
from coxswain_server.model import LoadedModel, load_version
from coxswain_server.settings import ServerSettings
from coxswain_server.traffic import TrafficSplit, read_traffic_file

log = logging.getLogger("coxswain_server.versions")


class ServedVersion:
    __slots__ = ("active", "batcher", "header", "metrics", "model", "version")

    def __init__(self, model: LoadedModel, batcher: Batcher, metrics: VersionMetrics) -> None:
        self.model = model
        self.version = model.version
        self.header = model.version.encode()
        self.batcher = batcher
        self.metrics = metrics
        self.active = 0  # requests routed here (their body has arrived) and not yet answered

    async def retire(self, grace_seconds: float) -> None:
        """Called once the version is out of routing: wait for the requests already routed here,
        then let the batcher finish what is queued."""
        deadline = asyncio.get_running_loop().time() + grace_seconds
        # polled, not an Event: setting one would cost every request on the hot path, for a rare unload
        while self.active and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        await self.batcher.close(max(0.0, deadline - asyncio.get_running_loop().time()))


class ModelVersions:
    def __init__(
        self,
        settings: ServerSettings,
        metrics: ServerMetrics,
        inference: Executor,
        key: bytes | None,
        device: torch.device,
    ) -> None:
        self.settings = settings
        self.model = settings.model
        self._metrics = metrics
        self._inference = inference
        self._key = key
        self._device = device
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-load")
        self.served: dict[str, ServedVersion] = {}
        self.split = TrafficSplit({})
        self._loading: dict[str, asyncio.Task[ServedVersion]] = {}
        self._lock = asyncio.Lock()  # one traffic change at a time

    # --- the hot path -------------------------------------------------------------------

    def route(self, version: str | None) -> ServedVersion:
        if version is None:
            picked = self.split.pick()
            if picked is None:
                raise NotReady(f"model {self.model} has no version in rotation yet (loading?); retry shortly")
            served = self.served.get(picked)
            if served is not None:
                return served
            raise NotReady(f"model {self.model} version {picked} is not loaded yet; retry shortly")
        served = self.served.get(version)
        if served is None:
            if version in self._loading:
                raise NotReady(f"model {self.model} version {version} is still loading; retry shortly")
            raise NotFound(
                f"model {self.model} has no version {version} loaded; loaded versions: {sorted(self.served) or 'none'}"
            )
        return served

    # --- loading and unloading ----------------------------------------------------------

    def newest_in_repository(self) -> str:
        present = list_versions(self.settings.repository, self.model)
        if not present:
            raise ModelLoadError(
                f"no versions of model {self.model} in {self.settings.repository} (expected "
                f"{self.settings.repository}/{self.model}/<version>/manifest.json); train one or check --repository"
            )
        return present[-1]

    async def load_initial(self) -> dict[str, int]:
        """Load what start-up asks for and put it in rotation; returns the weights.

        Versions: those in the traffic file (if it exists), plus --version (or the keys of
        --weights), else the newest in the repository. Weights: the file's, else --weights,
        else all to the first version.
        """
        s = self.settings
        weights = dict(s.weights)
        wanted = s.initial_versions()
        if s.traffic_file is not None and s.traffic_file.exists():
            weights = read_traffic_file(s.traffic_file)
            wanted = list(dict.fromkeys([*weights, *wanted]))
            log.info("traffic file %s gives weights %s", s.traffic_file, weights)
        if not wanted:
            wanted = [self.newest_in_repository()]
            log.info("no --version given: serving the newest version in the repository, %s", wanted[0])
        if not weights:
            weights = {wanted[0]: 100}
        await asyncio.gather(*(self.load(v) for v in wanted))
        await self.set_weights(weights, load_missing=True, unload_others=False)
        return weights

    async def load(self, version: str) -> ServedVersion:
        """Load, verify and warm up `version` (once, even if asked twice at the same time)."""
        if version in self.served:
            return self.served[version]
        task = self._loading.get(version)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(version))
            self._loading[version] = task
            task.add_done_callback(lambda _: self._loading.pop(version, None))
        return await asyncio.shield(task)

    async def _load(self, version: str) -> ServedVersion:
        loop = asyncio.get_running_loop()
        s = self.settings
        log.info("loading model %s version %s from %s", self.model, version, s.repository)
        model = await loop.run_in_executor(
            self._loader, load_version, s.repository, self.model, version, self._key, self._device
        )
        started = loop.time()
        # warm up on the inference thread: the thread (and its allocator) that serves it
        await loop.run_in_executor(self._inference, model.warm_up, s.max_batch_size)
        seconds = model.load_seconds + (loop.time() - started)
        metrics = self._metrics.version(version)
        metrics.set_load_seconds(seconds)
        batcher = Batcher(
            model.forward,
            self._inference,
            max_batch_size=s.max_batch_size,
            max_latency_s=s.max_latency_ms / 1000.0,
            max_queue_size=s.max_queue_size,
            max_queue_rows=s.queue_rows,
            label=version,
            inline_below_s=s.inline_below_us / 1e6,
            observe_batch=metrics.batch_size.observe,
            count_error=metrics.inference_errors.inc,
        )
        batcher.start()
        metrics.watch_queue(lambda: batcher.depth)
        served = ServedVersion(model, batcher, metrics)
        self.served[version] = served
        log.info(
            "model %s version %s is loaded and warmed up in %.2fs (%s, inputs %s)",
            self.model, version, seconds, model.platform, model.signature.input_names,
        )  # fmt: skip
        return served

    async def unload(self, version: str) -> None:
        """Take `version` out of service: new calls get 404, queued ones finish first."""
        async with self._lock:
            if (
                self.split.weights.get(version, 0) > 0
                and sum(w for v, w in self.split.weights.items() if v != version) == 0
            ):
                raise Conflict(
                    f"version {version} takes all the traffic; give another version weight before unloading it"
                )
            served = self.served.pop(version, None)
            if served is None:
                raise NotFound(f"model {self.model} has no version {version} loaded")
            self._set_split({v: w for v, w in self.split.weights.items() if v != version})
        await served.retire(self.settings.graceful_timeout_seconds)
        served.metrics.set_weight(0)
        log.info("model %s version %s unloaded", self.model, version)

    # --- traffic ------------------------------------------------------------------------

    def _set_split(self, weights: Mapping[str, int]) -> None:
        old = self.split.weights
        self.split = TrafficSplit(weights)
        for version in set(old) | set(weights):
            if version in self.served:
                self.served[version].metrics.set_weight(weights.get(version, 0))

    async def set_weights(
        self, weights: Mapping[str, int], *, load_missing: bool, unload_others: bool
    ) -> None:
        """Switch unversioned traffic to `weights`.

        load_missing: load versions not yet held (the traffic file names the desired set);
        else they must be loaded already (the admin endpoint says exactly what to change).
        unload_others: afterwards unload versions the weights do not name.
        """
        async with self._lock:
            missing = [v for v in weights if v not in self.served]
            if missing and not load_missing:
                raise Conflict(
                    f"versions {missing} are not loaded; load them first (POST /admin/versions/<v>/load)"
                )
            if missing:
                await asyncio.gather(*(self.load(v) for v in missing))
            before = dict(self.split.weights)
            self._set_split(weights)
            log.info("model %s traffic weights changed from %s to %s", self.model, before, dict(weights))
            leaving = [v for v in self.served if v not in weights] if unload_others else []
        for version in leaving:
            served = self.served.pop(version, None)
            if served is not None:
                await served.retire(self.settings.graceful_timeout_seconds)
                log.info(
                    "model %s version %s unloaded: the traffic file no longer names it", self.model, version
                )

    async def close(self) -> None:
        for served in list(self.served.values()):
            await served.retire(self.settings.graceful_timeout_seconds)
        self._loader.shutdown(wait=False, cancel_futures=True)

    def versions_state(self) -> list[dict[str, object]]:
        return [
            {
                "version": v,
                "weight": self.split.weights.get(v, 0),
                "trafficPercent": round(self.split.percent(v), 3),
                "ready": True,
            }
            for v in self.served
        ] + [{"version": v, "weight": 0, "trafficPercent": 0.0, "ready": False} for v in self._loading]
