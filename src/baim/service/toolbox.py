"""The edge's toolbox at serving time: models in memory under a byte budget, fetched once.

Three tiers: memory (an LRU of loaded models whose weights fit ``budget_bytes``), the verified
disk store (:class:`baim.edge.toolbox.ToolboxStore`, fetched models kept under
``disk_budget_bytes``, least recently used removed first), and the cloud registry. A request
is answered from ``memory``, from ``disk`` (verified and loaded again: no network, but far
slower) or is a ``miss`` (fetched, verified, stored). The pains this avoids:

- **double loads**: concurrent requests for one absent task share one in-flight future
  (single flight), so 16 misses cause one fetch and one load;
- **head-of-line blocking**: flights are per task and the slow parts (download, verify, load)
  run off the event loop, so a miss for one task never delays another task's request;
- **memory creep**: an evicted model is dropped from every table at once, so nothing keeps
  its tensors alive (``benchmarks/service.py`` measures RSS over evict/load cycles);
- **lookups on behalf of strangers**: the cloud's task list is cached for ``catalogue_ttl_s``
  after a lookup, so requests for tasks it does not have are answered without the network
  (random names cost one lookup per interval, not one each), and per-task locks live only
  while someone uses them.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from ..edge.toolbox import OWN, Held, Signed, ToolboxError, ToolboxStore
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
    memory_hits: int = 0  # served from memory (no load, no network)
    disk_hits: int = 0  # loaded and verified again from the disk store (no network)
    misses: int = 0  # needed the cloud
    unknown: int = 0  # refused from the cached catalogue, without asking the cloud
    fetches: int = 0  # models downloaded and verified
    disk_loads: int = 0  # loads from the disk store into memory
    evictions: int = 0
    disk_evictions: int = 0  # fetched models removed from disk to keep the disk budget
    refused: int = 0  # fetched models that failed verification
    fetch_seconds: float = 0.0


MAX_ERRORS = 64  # last_error keeps the newest this many tasks


class Toolbox:
    def __init__(
        self,
        store: ToolboxStore,
        client: RegistryClient | None,
        budget_bytes: int,
        disk_budget_bytes: int = 1 << 30,
        trust_first_use: bool = False,
        catalogue_ttl_s: float = 30.0,
    ):
        self.store, self.client, self.budget = store, client, int(budget_bytes)
        self.disk_budget, self.trust_first_use, self.catalogue_ttl_s = (
            int(disk_budget_bytes),
            trust_first_use,
            catalogue_ttl_s,
        )
        self.memory: OrderedDict[str, Loaded] = OrderedDict()
        self.flights: dict[str, asyncio.Task[tuple[Loaded, str]]] = {}
        # one lock per task in use (bring, refresh and drop never interleave), counted users
        self.locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        self.catalogue: tuple[float, frozenset[str]] | None = None  # (when, the cloud's tasks)
        self._listing: asyncio.Task[frozenset[str]] | None = None
        self.stats = Stats()
        self.last_error: OrderedDict[str, str] = OrderedDict()

    @property
    def memory_bytes(self) -> int:
        return sum(x.nbytes for x in self.memory.values())

    @asynccontextmanager
    async def _locked(self, task: str) -> AsyncIterator[None]:
        """The task's lock, removed from the table when its last user is done."""
        lock, users = self.locks.setdefault(task, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self.locks[task]

    def _error(self, task: str, message: str) -> None:
        self.last_error.pop(task, None)
        self.last_error[task] = message
        while len(self.last_error) > MAX_ERRORS:
            self.last_error.popitem(last=False)

    def learn_catalogue(self, tasks: list[str]) -> None:
        self.catalogue = (time.monotonic(), frozenset(tasks))

    async def cloud_tasks(self) -> frozenset[str]:
        """The cloud's task list, cached for ``catalogue_ttl_s``; concurrent callers share one
        lookup (a burst of new names asks the cloud once, not once per name)."""
        assert self.client is not None
        if self.catalogue is not None and time.monotonic() - self.catalogue[0] <= self.catalogue_ttl_s:
            return self.catalogue[1]
        if self._listing is None or self._listing.done():
            self._listing = asyncio.create_task(self._list())
            self._listing.add_done_callback(lambda t: t.cancelled() or t.exception())
        return await asyncio.shield(self._listing)

    async def _list(self) -> frozenset[str]:
        assert self.client is not None
        self.learn_catalogue([str(m["task"]) for m in await self.client.models()])
        assert self.catalogue is not None
        return self.catalogue[1]

    async def get(self, task: str) -> tuple[Loaded, str]:
        """The model serving ``task`` and where it came from: ``"memory"``, ``"disk"`` or
        ``"miss"``. Raises UnknownTask, RegistryUnavailable (cloud down on a miss) or
        ToolboxError (refused model).

        Every request waits on the task's one flight (a task of its own, shielded), so a
        client that goes away cancels only its own wait, never the fetch others wait for."""
        loaded = self.memory.get(task)
        if loaded is not None:
            self.memory.move_to_end(task)
            self.stats.memory_hits += 1
            return loaded, "memory"
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
        except UnknownTask:
            raise  # counted in _fetch: a lookup (miss) or the cached catalogue (unknown)
        except (RegistryUnavailable, ToolboxError, RegistryRefused):
            self.stats.misses += 1  # it needed the network, whatever the network said
            raise
        if status == "memory":  # every request counts once, whoever did the work
            self.stats.memory_hits += 1
        elif status == "disk":
            self.stats.disk_hits += 1
        else:
            self.stats.misses += 1
        return shared, status

    async def _bring(self, task: str) -> tuple[Loaded, str]:
        async with self._locked(task):
            if task in self.memory:  # a refresh admitted it meanwhile
                return self.memory[task], "memory"
            held = await asyncio.to_thread(self.store.best, task)
            status = "disk"
            model: Model | None = None
            if held is not None:
                try:
                    model = await asyncio.to_thread(self.store.load, held)
                except BaimError as exc:  # altered or corrupt at rest: drop it and fetch again
                    log.warning("toolbox entry %s failed verification, fetching it again: %s", held.label, exc)
                    self._error(task, str(exc))
                    if held.version == OWN:
                        raise
                    await asyncio.to_thread(self.store.remove, held)
                    held = None
                else:
                    await asyncio.to_thread(_touch, held)
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
        known = await self.cloud_tasks()
        if task not in known:
            self.stats.unknown += 1
            raise UnknownTask(task, sorted(known))
        if self.store.public_key is None:
            if not self.trust_first_use:
                raise ToolboxError(
                    "this edge has no registry public key to verify fetched models with; pass --registry-key "
                    "(RUN/registry/registry.pub on the cloud), or --trust-on-first-use to pin the key the registry "
                    "presents"
                )
            key = await self.client.public_key()
            log.warning("trusting registry key %s… on first use (pinned in %s)", key.hex()[:16], self.store.root)
            await asyncio.to_thread(self.store.pin, key)
        try:
            entry = await self.client.model(task)
        except UnknownTask as exc:  # withdrawn since the catalogue was read
            self.stats.misses += 1
            self.learn_catalogue(exc.known)
            raise
        version = int(entry["version"])
        if version <= newer_than:
            raise _NothingNewer(version)
        manifest = entry["manifest"]
        weights = await self.client.weights(
            task, version, str(manifest.get("weights_sha256")), int(manifest.get("weights_bytes", 0))
        )
        try:
            held = await asyncio.to_thread(self.store.add_fetched, task, Signed.of(entry), manifest, weights)
        except ToolboxError as exc:
            self.stats.refused += 1
            self._error(task, str(exc))
            raise
        self.stats.fetches += 1
        self.stats.fetch_seconds += time.perf_counter() - t0
        await asyncio.to_thread(self._keep_disk_budget, held)
        return held

    def _keep_disk_budget(self, keep: Held) -> None:
        """Remove the least recently used fetched models (not ``keep``, not the edge's own, not
        one in memory) until the fetched models on disk fit the disk budget."""
        fetched = [h for h in self.store.held() if h.version != OWN]
        used = sum(h.bytes for h in fetched)
        in_memory = {x.held.folder for x in self.memory.values()}
        for h in sorted(fetched, key=_last_used):
            if used <= self.disk_budget:
                break
            if h.folder == keep.folder or h.folder in in_memory:
                continue
            self.store.remove(h)
            used -= h.bytes
            self.stats.disk_evictions += 1

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
        async with self._locked(task):
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
        async with self._locked(task):
            loaded = self.memory.get(task)
            if loaded is not None and loaded.held.version != OWN:
                del self.memory[task]
            dropped = []
            for held in await asyncio.to_thread(self.store.held):
                if held.task == task and held.version != OWN:
                    await asyncio.to_thread(self.store.remove, held)
                    dropped.append(held.label)
            return dropped

    def summary(self, errors: bool = True) -> dict[str, Any]:
        """The toolbox's state; ``errors`` adds ``last_error`` (for the edge's operator)."""
        held = self.store.held()
        return {
            "budget_bytes": self.budget,
            "memory_bytes": self.memory_bytes,
            "disk_budget_bytes": self.disk_budget,
            "in_memory": [x.label for x in self.memory.values()],
            "on_disk": [{"model": h.label, "bytes": h.bytes} for h in held],
            "disk_bytes": sum(h.bytes for h in held),
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in vars(self.stats).items()},
            **({"last_error": dict(self.last_error)} if errors else {}),
        }

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()


def _last_used(held: Held) -> float:
    try:
        return (held.folder / "entry.json").stat().st_mtime
    except OSError:
        return 0.0


def _touch(held: Held) -> None:
    """Mark a model used (the disk budget removes the least recently used first)."""
    if held.version != OWN:
        try:
            os.utime(held.folder / "entry.json")
        except OSError:
            pass


class _NothingNewer(Exception):
    def __init__(self, version: int):
        super().__init__(f"the registry's latest is version {version}")
