"""An edge's toolbox on disk: the generative models it can serve without asking the cloud.

The toolbox holds the edge's own model (personalised, else deployed: trusted, it never left the
edge) and the compact models of other tasks fetched from the cloud registry. A fetched model is
stored only after it is verified — the weights' sha256 against the manifest, the registry's
Ed25519 signature over (task, version, manifest), the manifest's kind and task — so a tampered
or unsigned model never enters the toolbox and the version already held keeps being served.
Entries are verified again when loaded (``load_model`` checks the hash and every tensor).
Signatures carry the registry's publication counter and issue time; the toolbox remembers the
newest it has accepted per task (``seen.json``, kept when a model is dropped) and refuses an
older version offered later, so a network in the middle cannot roll an edge back.

Layout under ``EDGE/toolbox/``::

    registry.pub            the registry's public key this toolbox trusts (pinned)
    seen.json               per task: the newest version, counter and issue time accepted
    TASK/VERSION/           manifest.json + weights.safetensors + entry.json (written last)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_bytes, write_json
from ..errors import BaimError
from ..models.io import MANIFEST, WEIGHTS, Model, is_saved, load_model
from ..names import is_task_name
from ..signing import canonical, verify

OWN = "own"  # version label of the edge's own model


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


class ToolboxError(BaimError):
    """A model refused by the toolbox (tampered, unsigned, wrong task) or an unusable toolbox."""


@dataclass(frozen=True)
class Held:
    """One model version the toolbox holds on disk."""

    task: str
    version: str  # "own" or the registry's version number
    folder: Path
    bytes: int

    @property
    def label(self) -> str:
        return f"{self.task}@{self.version}"


@dataclass(frozen=True)
class Signed:
    """What the registry signed for one version besides its manifest."""

    version: int
    counter: int
    issued: float
    signature: str

    @classmethod
    def of(cls, entry: Any) -> Signed:
        """From a registry entry or a stored ``entry.json``; a missing field fails the signature."""
        try:
            issued = entry["issued"] if "issued" in entry else entry["created"]  # the registry calls it created
            return cls(int(entry["version"]), int(entry["counter"]), float(issued), str(entry["signature"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ToolboxError(f"a registry entry without its signed version, counter and issue time: {exc}") from exc


def check_signed(task: str, signed: Signed, manifest: Any, weights: bytes, public_key: bytes) -> None:
    """Refuse a fetched model unless it is exactly what the registry signed for ``task``."""
    version = signed.version
    if not isinstance(manifest, dict):
        raise ToolboxError(f"{task}@{version}: the manifest is not a JSON object")
    if manifest.get("kind") != "compact" or manifest.get("task") != task:
        raise ToolboxError(
            f"{task}@{version}: the manifest describes a {manifest.get('kind')!r} model of task "
            f"{manifest.get('task')!r}, not the compact model of {task!r}"
        )
    digest = hashlib.sha256(weights).hexdigest()
    if digest != manifest.get("weights_sha256"):
        raise ToolboxError(
            f"{task}@{version}: weights sha256 {digest[:12]}… does not match the signed manifest's "
            f"{str(manifest.get('weights_sha256'))[:12]}…; the weights were altered in transit or at rest"
        )
    try:
        sig = bytes.fromhex(signed.signature)
    except (TypeError, ValueError):
        sig = b""
    fields = {"counter": signed.counter, "issued": signed.issued}
    payload = canonical({"task": task, "version": version, "manifest": manifest, **fields})
    if not verify(public_key, payload, sig):
        raise ToolboxError(
            f"{task}@{version}: the registry's signature does not verify with the pinned public key "
            f"{public_key.hex()[:16]}…; refused (is the edge pointed at the right registry?)"
        )


class ToolboxStore:
    def __init__(self, root: str | Path, public_key: bytes | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.public_key: bytes | None = None
        pin = self.root / "registry.pub"
        if pin.is_file():
            self.public_key = bytes.fromhex(pin.read_text().strip())
        if public_key is not None:
            self.pin(public_key)

    def pin(self, public_key: bytes) -> None:
        """Trust ``public_key`` from now on; a different key than the one pinned is refused."""
        if self.public_key is not None and self.public_key != public_key:
            raise ToolboxError(
                f"{self.root / 'registry.pub'} pins registry key {self.public_key.hex()[:16]}…, but "
                f"{public_key.hex()[:16]}… was given; a registry does not change its key. Delete the pin only "
                "if you trust the new one"
            )
        if self.public_key is None:
            write_bytes(self.root / "registry.pub", (public_key.hex() + "\n").encode())
        self.public_key = public_key

    def _folder(self, task: str, version: str) -> Path:
        if not is_task_name(task):
            raise ToolboxError(f"task name {task[:60]!r} cannot name a toolbox folder")
        return self.root / task / version

    def add_own(self, folder: str | Path, task: str) -> Held:
        """Hold the edge's own model (copied from ``folder``) as ``task@own``; nothing to do
        when that exact model is already held."""
        dest = self._folder(task, OWN)
        if (dest / "entry.json").is_file():
            same = (dest / MANIFEST).read_bytes() == (Path(folder) / MANIFEST).read_bytes()
            if same and _sha256(dest / WEIGHTS) == json.loads((dest / MANIFEST).read_text()).get("weights_sha256"):
                return self._held(dest)  # that exact model, intact
            self.remove(self._held(dest))
        load_model(folder, "compact")  # verified before it is trusted
        for name in (WEIGHTS, MANIFEST):
            write_bytes(dest / name, (Path(folder) / name).read_bytes())
        write_json(dest / "entry.json", {"task": task, "version": OWN, "source": str(folder)})
        return self._held(dest)

    def seen(self) -> dict[str, Any]:
        """Per task, the newest signed version this toolbox has accepted."""
        path = self.root / "seen.json"
        try:
            return dict(json.loads(path.read_text())) if path.is_file() else {}
        except (OSError, ValueError) as exc:
            raise ToolboxError(f"{path}: unreadable ({exc}); it guards against rollbacks, restore it") from exc

    def add_fetched(self, task: str, signed: Signed, manifest: Any, weights: bytes) -> Held:
        """Verify and store a model fetched from the registry; refused models leave no trace.
        A version older than one accepted before (by counter or version) is a rollback."""
        if self.public_key is None:
            raise ToolboxError("this toolbox has no registry public key pinned; it cannot verify fetched models")
        check_signed(task, signed, manifest, weights, self.public_key)
        seen = self.seen()
        newest = seen.get(task)
        if newest is not None and (signed.counter < newest["counter"] or signed.version < newest["version"]):
            raise ToolboxError(
                f"{task}@{signed.version}: older than {task}@{newest['version']} (publication {newest['counter']}) "
                "which this edge accepted before; refused as a rollback"
            )
        dest = self._folder(task, str(signed.version))
        if dest.exists():
            shutil.rmtree(dest)
        write_bytes(dest / WEIGHTS, weights)
        write_bytes(dest / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        record = {"version": signed.version, "counter": signed.counter, "issued": signed.issued}
        write_json(dest / "entry.json", {"task": task, **record, "signature": signed.signature})
        write_json(self.root / "seen.json", {**seen, task: record})
        return self._held(dest)

    def _held(self, folder: Path) -> Held:
        entry = json.loads((folder / "entry.json").read_text())
        return Held(str(entry["task"]), str(entry["version"]), folder, (folder / WEIGHTS).stat().st_size)

    def held(self) -> list[Held]:
        """Every complete entry (``entry.json`` is written last)."""
        out = []
        for entry in sorted(self.root.glob("*/*/entry.json")):
            if not entry.parent.parent.name.startswith(".") and is_saved(entry.parent):
                out.append(self._held(entry.parent))
        return out

    def remove(self, held: Held) -> None:
        """Delete a held model, its completion marker first (a kill midway leaves no entry)."""
        (held.folder / "entry.json").unlink(missing_ok=True)
        shutil.rmtree(held.folder, ignore_errors=True)

    def best(self, task: str) -> Held | None:
        """What to serve for ``task``: the edge's own model, else the newest fetched version."""
        candidates = [h for h in self.held() if h.task == task]
        own = [h for h in candidates if h.version == OWN]
        if own:
            return own[0]
        fetched = sorted((h for h in candidates if h.version.isdigit()), key=lambda h: int(h.version))
        return fetched[-1] if fetched else None

    def load(self, held: Held) -> Model:
        """Load a held model; fetched ones are re-verified against the pinned key first."""
        if held.version != OWN:
            if self.public_key is None:
                raise ToolboxError(f"{held.label}: no registry key pinned to verify it against")
            entry = json.loads((held.folder / "entry.json").read_text())
            manifest = json.loads((held.folder / MANIFEST).read_text())
            weights = (held.folder / WEIGHTS).read_bytes()
            check_signed(held.task, Signed.of(entry), manifest, weights, self.public_key)
        return load_model(held.folder, "compact")
