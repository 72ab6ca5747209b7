"""The edge's toolbox at serving time: models in memory under a byte budget, fetched once.

Three tiers: memory (an LRU of loaded models whose weights fit ``budget_bytes``), the verified
disk store (:class:`baim.edge.toolbox.ToolboxStore`), and the cloud registry. A request whose
task is in memory or on disk is a *hit* (no network); otherwise it is a *miss* and the model
is fetched, verified and stored. The pains this avoids:

- **double loads**: concurrent requests for one absent task share one in-flight future
  (single flight), so 16 misses cause one fetch and one load;
- **head-of-line blocking**: flights are per task and the slow parts (download, verify, load)
  run off the event loop, so a miss for one task never delays another task's request;
- **memory creep**: an evicted model is dropped from every table at once, so nothing keeps
  its tensors alive (``benchmarks/service.py`` measures RSS over 100 evict/load cycles).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..edge.toolbox import OWN, Held, ToolboxError, ToolboxStore
from ..errors import BaimError
from ..models.io import Model
from .client import RegistryClient, RegistryRefused, RegistryUnavailable, UnknownTask
from .http import log


def model_bytes(model: Model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


@dataclass
class Loaded:
    held: Held
    model: Model
    nbytes: int

    @property
    def label(self) -> str:
        return self.held.label


@dataclass
class Stats:
    hits: int = 0  # served without the network (memory or disk)
    memory_hits: int = 0  # served from memory (no load)
    misses: int = 0  # needed the cloud
    fetches: int = 0  # models downloaded and verified
    disk_loads: int = 0  # loads from the disk store into memory
    evictions: int = 0
    refused: int = 0  # fetched models that failed verification
    fetch_seconds: float = 0.0


class Toolbox:
    def __init__(self, store: ToolboxStore, client: RegistryClient | None, budget_bytes: int):
        self.store, self.client, self.budget = store, client, int(budget_bytes)
        self.memory: OrderedDict[str, Loaded] = OrderedDict()
        self.flights: dict[str, asyncio.Task[tuple[Loaded, str]]] = {}
        self.locks: dict[str, asyncio.Lock] = {}  # one per task: bring, refresh and drop never interleave
        self.stats = Stats()
        self.last_error: dict[str, str] = {}

    @property
    def memory_bytes(self) -> int:
        return sum(x.nbytes for x in self.memory.values())

    def _lock(self, task: str) -> asyncio.Lock:
        return self.locks.setdefault(task, asyncio.Lock())

    async def get(self, task: str) -> tuple[Loaded, str]:
        """The model serving ``task`` and ``"hit"`` or ``"miss"``. Raises UnknownTask,
        RegistryUnavailable (cloud down on a miss) or ToolboxError (refused model).

        Every request waits on the task's one flight (a task of its own, shielded), so a
        client that goes away cancels only its own wait, never the fetch others wait for."""
        loaded = self.memory.get(task)
        if loaded is not None:
            self.memory.move_to_end(task)
            self.stats.hits += 1
            self.stats.memory_hits += 1
            return loaded, "hit"
        flight = self.flights.get(task)
        if flight is None:
            flight = asyncio.create_task(self._bring(task))
            self.flights[task] = flight

            def landed(t: asyncio.Task, task: str = task) -> None:
                if self.flights.get(task) is t:
                    del self.flights[task]
                if not t.cancelled():
                    t.exception()  # retrieved here, so an unawaited failure is not logged as lost

            flight.add_done_callback(landed)
        try:
            shared, status = await asyncio.shield(flight)
        except (RegistryUnavailable, UnknownTask, ToolboxError, RegistryRefused):
            self.stats.misses += 1  # it needed the network, whatever the network said
            raise
        if status == "hit":  # every request counts once, whoever did the work
            self.stats.hits += 1
        else:
            self.stats.misses += 1
        return shared, status

    async def _bring(self, task: str) -> tuple[Loaded, str]:
        async with self._lock(task):
            if task in self.memory:  # a refresh admitted it meanwhile
                return self.memory[task], "hit"
            held = await asyncio.to_thread(self.store.best, task)
            status = "hit"
            model: Model | None = None
            if held is not None:
                try:
                    model = await asyncio.to_thread(self.store.load, held)
                except BaimError as exc:  # altered or corrupt at rest: drop it and fetch again
                    log.warning("toolbox entry %s failed verification, fetching it again: %s", held.label, exc)
                    self.last_error[task] = str(exc)
                    if held.version == OWN:
                        raise
                    await asyncio.to_thread(self.store.remove, held)
                    held = None
            if held is None or model is None:
                held = await self._fetch(task)
                status = "miss"
                model = await asyncio.to_thread(self.store.load, held)
            self.stats.disk_loads += 1
            loaded = Loaded(held, model, model_bytes(model))
            self._admit(task, loaded)
            return loaded, status

    async def _fetch(self, task: str, newer_than: int = 0) -> Held:
        if self.client is None:
            raise RegistryUnavailable(f"task {task!r} is not in this edge's toolbox and no cloud registry is set")
        t0 = time.perf_counter()
        if self.store.public_key is None:  # trust on first use, pinned from then on
            key = await self.client.public_key()
            log.warning("trusting registry key %s… on first use (pinned in %s)", key.hex()[:16], self.store.root)
            await asyncio.to_thread(self.store.pin, key)
        entry = await self.client.model(task)
        version = int(entry["version"])
        if version <= newer_than:
            raise _NothingNewer(version)
        manifest = entry["manifest"]
        weights = await self.client.weights(
            task, version, str(manifest.get("weights_sha256")), int(manifest.get("weights_bytes", 0))
        )
        try:
            held = await asyncio.to_thread(
                self.store.add_fetched, task, version, manifest, weights, str(entry.get("signature", ""))
            )
        except ToolboxError as exc:
            self.stats.refused += 1
            self.last_error[task] = str(exc)
            raise
        self.stats.fetches += 1
        self.stats.fetch_seconds += time.perf_counter() - t0
        return held

    def _admit(self, task: str, loaded: Loaded) -> None:
        """Keep ``loaded`` in memory, evicting least recently used models to fit the budget.
        A model larger than the whole budget is served but not kept."""
        self.memory.pop(task, None)  # a version replaced by a newer one is not an eviction
        if loaded.nbytes > self.budget:
            return
        while self.memory and self.memory_bytes + loaded.nbytes > self.budget:
            self.memory.popitem(last=False)
            self.stats.evictions += 1
        self.memory[task] = loaded

    async def refresh(self, task: str) -> dict[str, Any]:
        """Ask the registry for a newer version of a fetched task and switch to it once it is
        verified; a refused version changes nothing (the version held is still served). The
        superseded version is removed from disk."""
        async with self._lock(task):
            held = await asyncio.to_thread(self.store.best, task)
            serving = held.label if held else None
            if held is not None and held.version == OWN:
                return {"task": task, "serving": serving, "updated": False, "reason": "the edge's own model"}
            current = int(held.version) if held is not None else 0
            try:
                new = await self._fetch(task, newer_than=current)
                model = await asyncio.to_thread(self.store.load, new)
            except _NothingNewer:
                return {"task": task, "serving": serving, "updated": False, "reason": "up to date"}
            except BaimError as exc:
                return {"task": task, "serving": serving, "updated": False, "reason": str(exc)}
            self._admit(task, Loaded(new, model, model_bytes(model)))
            if held is not None:
                await asyncio.to_thread(self.store.remove, held)
            return {"task": task, "serving": new.label, "updated": True}

    async def drop(self, task: str) -> list[str]:
        """Forget the fetched versions of ``task`` (memory and disk); the edge's own model stays."""
        async with self._lock(task):
            loaded = self.memory.get(task)
            if loaded is not None and loaded.held.version != OWN:
                del self.memory[task]
            dropped = []
            for held in await asyncio.to_thread(self.store.held):
                if held.task == task and held.version != OWN:
                    await asyncio.to_thread(self.store.remove, held)
                    dropped.append(held.label)
            return dropped

    def summary(self) -> dict[str, Any]:
        held = self.store.held()
        return {
            "budget_bytes": self.budget,
            "memory_bytes": self.memory_bytes,
            "in_memory": [x.label for x in self.memory.values()],
            "on_disk": [{"model": h.label, "bytes": h.bytes} for h in held],
            "disk_bytes": sum(h.bytes for h in held),
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in vars(self.stats).items()},
            "last_error": dict(self.last_error),
        }

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()


class _NothingNewer(Exception):
    def __init__(self, version: int):
        super().__init__(f"the registry's latest is version {version}")
