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
from ..models.io import Model
from .client import RegistryClient, RegistryUnavailable, UnknownTask


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
        self.flights: dict[str, asyncio.Future[tuple[Loaded, str]]] = {}
        self.stats = Stats()
        self.last_error: dict[str, str] = {}

    @property
    def memory_bytes(self) -> int:
        return sum(x.nbytes for x in self.memory.values())

    async def get(self, task: str) -> tuple[Loaded, str]:
        """The model serving ``task`` and ``"hit"`` or ``"miss"``. Raises UnknownTask,
        RegistryUnavailable (cloud down on a miss) or ToolboxError (refused model)."""
        loaded = self.memory.get(task)
        if loaded is not None:
            self.memory.move_to_end(task)
            self.stats.hits += 1
            self.stats.memory_hits += 1
            return loaded, "hit"
        flight = self.flights.get(task)
        if flight is None:
            flight = asyncio.get_running_loop().create_future()
            self.flights[task] = flight
            try:
                result = await self._bring(task)
            except BaseException as exc:
                flight.set_exception(exc)
                flight.exception()  # followers may be none: mark it retrieved
                raise
            else:
                flight.set_result(result)
            finally:
                del self.flights[task]
            return result
        shared, status = await asyncio.shield(flight)
        if status == "hit":  # every request counts once, whoever did the work
            self.stats.hits += 1
        else:
            self.stats.misses += 1
        return shared, status

    async def _bring(self, task: str) -> tuple[Loaded, str]:
        held = await asyncio.to_thread(self.store.best, task)
        status = "hit"
        if held is None:
            self.stats.misses += 1
            held = await self._fetch(task)
            status = "miss"
        else:
            self.stats.hits += 1
        model = await asyncio.to_thread(self.store.load, held)
        self.stats.disk_loads += 1
        loaded = Loaded(held, model, model_bytes(model))
        self._admit(task, loaded)
        return loaded, status

    async def _fetch(self, task: str, newer_than: int = 0) -> Held:
        if self.client is None:
            raise RegistryUnavailable(f"task {task!r} is not in this edge's toolbox and no cloud registry is set")
        t0 = time.perf_counter()
        entry = await self.client.model(task)
        version = int(entry["version"])
        if version <= newer_than:
            raise _NothingNewer(version)
        weights = await self.client.weights(task, version, str(entry["manifest"].get("weights_sha256")))
        try:
            held = await asyncio.to_thread(
                self.store.add_fetched, task, version, entry["manifest"], weights, str(entry.get("signature", ""))
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
        old = self.memory.pop(task, None)
        if old is not None and old is not loaded:
            self.stats.evictions += 1
        if loaded.nbytes > self.budget:
            self.stats.evictions += 1
            return
        while self.memory and self.memory_bytes + loaded.nbytes > self.budget:
            self.memory.popitem(last=False)
            self.stats.evictions += 1
        self.memory[task] = loaded

    async def refresh(self, task: str) -> dict[str, Any]:
        """Ask the registry for a newer version of a fetched task and switch to it once it is
        verified; a refused version changes nothing (the version held is still served)."""
        held = await asyncio.to_thread(self.store.best, task)
        current = int(held.version) if held is not None and held.version.isdigit() else 0
        if held is not None and not held.version.isdigit():
            return {"task": task, "serving": held.label, "updated": False, "reason": "the edge's own model"}
        try:
            new = await self._fetch(task, newer_than=current)
        except _NothingNewer:
            return {"task": task, "serving": held.label if held else None, "updated": False, "reason": "up to date"}
        except (ToolboxError, RegistryUnavailable, UnknownTask) as exc:
            return {"task": task, "serving": held.label if held else None, "updated": False, "reason": str(exc)}
        model = await asyncio.to_thread(self.store.load, new)
        self._admit(task, Loaded(new, model, model_bytes(model)))
        return {"task": task, "serving": new.label, "updated": True}

    def drop(self, task: str) -> list[str]:
        """Forget the fetched versions of ``task`` (memory and disk); the edge's own model stays."""
        dropped = []
        loaded = self.memory.get(task)
        if loaded is not None and loaded.held.version != OWN:
            del self.memory[task]
        for held in self.store.held():
            if held.task == task and held.version != OWN:
                self.store.remove(held)
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


class _NothingNewer(Exception):
    def __init__(self, version: int):
        super().__init__(f"the registry's latest is version {version}")
