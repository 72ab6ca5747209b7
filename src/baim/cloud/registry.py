"""The cloud's model registry: the compact models a run published, signed, and who may fetch them.

Edges that miss a task in their toolbox fetch its compact model from here, and must be able
to tell a genuine model from a tampered one without trusting the network: every published
version is signed with the registry's Ed25519 key over its manifest (which carries the
weights' sha256), so the signature covers the weights. The signature also covers a registry-wide
publication counter and the issue time: an edge remembers the newest it has seen per task and
refuses an older version offered later (a rollback). The catalogue is SQLite
(``registry.db``): one row per (task, version), written after the model's files, so a row
always points at a complete model. Bearer tokens are stored only as their sha256.

Layout under ``RUN/registry/``::

    registry.db              models(task, version, sha256, bytes, parameters, created, signature, counter)
                             tokens(name, token_sha256, created, expires)
    registry.key / .pub      Ed25519 signing key (0600) and its public key (hex), for edges
    models/TASK/vN/          manifest.json + weights.safetensors of each published version
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_bytes, write_text
from ..errors import BaimError, ConfigError
from ..models.io import MANIFEST, WEIGHTS, load_model
from ..names import check_task_name
from ..runfiles import RunFiles
from ..signing import canonical, load_or_create_key, public_bytes, sign

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    task TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL, bytes INTEGER NOT NULL,
    parameters INTEGER NOT NULL, created REAL NOT NULL, signature TEXT NOT NULL, counter INTEGER,
    PRIMARY KEY (task, version));
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL UNIQUE, created REAL NOT NULL, expires REAL);
"""
# columns added since the first schema: (table, column, type); older catalogues gain them on open
ADDED = (("models", "counter", "INTEGER"), ("tokens", "expires", "REAL"))


class RegistryError(BaimError):
    """A registry that cannot be opened or a model that cannot be published."""


@dataclass(frozen=True)
class Entry:
    """One published version of a task's compact model."""

    task: str
    version: int
    sha256: str
    bytes: int
    parameters: int
    created: float  # the issue time, signed
    signature: str  # hex Ed25519 signature of signed_payload(task, version, manifest, counter, created)
    counter: int  # registry-wide publication counter, signed: later publications have larger ones

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def signed_payload(task: str, version: int, manifest: dict[str, Any], counter: int, issued: float) -> bytes:
    """What the registry signs for one version: binding task and version stops a valid model
    of one task (or an old version) being passed off as another; the counter and issue time
    let an edge tell an older publication from a newer one."""
    return canonical({"task": task, "version": version, "manifest": manifest, "counter": counter, "issued": issued})


@dataclass(frozen=True)
class Token:
    """A client's token as the registry lists it (never the token itself)."""

    name: str
    created: float
    expires: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.key = load_or_create_key(self.root / "registry.key")
        self.public_key = public_bytes(self.key)
        pub = self.root / "registry.pub"
        if not pub.is_file() or pub.read_text().strip() != self.public_key.hex():
            write_text(pub, self.public_key.hex() + "\n")
        with self._db() as db:
            db.executescript(SCHEMA)
            for table, column, kind in ADDED:
                if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self._sign_uncounted()

    def _sign_uncounted(self) -> None:
        """Versions published before signatures carried a counter: counted in publication order
        and signed again, so every entry an edge sees is comparable."""
        with open(self.root / ".publish.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with self._db() as db:
                rows = db.execute("SELECT task, version, created FROM models WHERE counter IS NULL ORDER BY created")
                for task, version, created in rows.fetchall():
                    counter = self._next_counter(db)
                    manifest = json.loads((self.model_dir(task, version) / MANIFEST).read_text())
                    signature = sign(self.key, signed_payload(task, version, manifest, counter, created)).hex()
                    db.execute(
                        "UPDATE models SET counter = ?, signature = ? WHERE task = ? AND version = ?",
                        (counter, signature, task, version),
                    )

    @staticmethod
    def _next_counter(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT COALESCE(MAX(counter), 0) FROM models").fetchone()[0]) + 1

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """One short connection per operation: safe from any thread of the server."""
        try:
            db = sqlite3.connect(self.root / "registry.db", timeout=30)
        except sqlite3.Error as exc:
            raise RegistryError(f"{self.root / 'registry.db'}: cannot open the catalogue: {exc}") from exc
        try:
            with db:
                yield db
        finally:
            db.close()

    # -- models ---------------------------------------------------------------------------
    def model_dir(self, task: str, version: int) -> Path:
        return self.root / "models" / task / f"v{version}"

    def publish(self, folder: str | Path) -> Entry:
        """Publish the compact model saved in ``folder`` as its task's next version (the
        latest entry again if it is the same model: publishing is idempotent). Publishers in
        other processes (``serve publish`` beside a running ``serve cloud``) take turns."""
        with open(self.root / ".publish.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._publish(Path(folder))

    def _publish(self, folder: Path) -> Entry:
        model = load_model(folder, "compact")  # verified: manifest, sha256, every tensor
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
        weights = (Path(folder) / WEIGHTS).read_bytes()
        try:
            task = check_task_name(manifest["task"])
        except ConfigError as exc:
            raise RegistryError(f"{folder}: {exc}") from exc
        latest = self.latest(task)
        if latest is not None and latest.sha256 == manifest["weights_sha256"]:
            return latest
        version = 1 if latest is None else latest.version + 1
        out = self.model_dir(task, version)
        if out.exists():  # left by a publish killed before its row: redo it
            shutil.rmtree(out)
        write_bytes(out / WEIGHTS, weights)
        write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        with self._db() as db:
            counter, issued = self._next_counter(db), time.time()
            entry = Entry(
                task=task,
                version=version,
                sha256=manifest["weights_sha256"],
                bytes=len(weights),
                parameters=model.num_parameters(),  # type: ignore[operator]
                created=issued,
                signature=sign(self.key, signed_payload(task, version, manifest, counter, issued)).hex(),
                counter=counter,
            )
            db.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)", tuple(asdict(entry).values()))
        return entry

    def publish_run(self, run_dir: str | Path) -> list[Entry]:
        """Publish every compact model of a finished run (``cloud/compact/*``)."""
        compact = RunFiles(run_dir).compact_dir()
        folders = sorted(p for p in compact.glob("*") if (p / MANIFEST).is_file()) if compact.is_dir() else []
        if not folders:
            raise RegistryError(
                f"{run_dir}: no compact models under cloud/compact/; finish the run first (rerun `baim run` "
                "with the same arguments to resume it)"
            )
        return [self.publish(f) for f in folders]

    def _entries(self, where: str = "", args: tuple = ()) -> list[Entry]:
        with self._db() as db:
            columns = "task, version, sha256, bytes, parameters, created, signature, counter"
            rows = db.execute(f"SELECT {columns} FROM models {where} ORDER BY task, version", args).fetchall()
        return [Entry(*r) for r in rows]

    def entries(self) -> list[Entry]:
        """The latest version of every task."""
        latest: dict[str, Entry] = {}
        for e in self._entries():
            latest[e.task] = e
        return list(latest.values())

    def tasks(self) -> list[str]:
        return [e.task for e in self.entries()]

    def latest(self, task: str) -> Entry | None:
        found = self._entries("WHERE task = ?", (task,))
        return found[-1] if found else None

    def entry(self, task: str, version: int | None = None) -> Entry | None:
        if version is None:
            return self.latest(task)
        found = self._entries("WHERE task = ? AND version = ?", (task, version))
        return found[0] if found else None

    def manifest(self, entry: Entry) -> dict[str, Any]:
        return json.loads((self.model_dir(entry.task, entry.version) / MANIFEST).read_text())

    def weights_path(self, entry: Entry) -> Path:
        return self.model_dir(entry.task, entry.version) / WEIGHTS

    # -- tokens ---------------------------------------------------------------------------
    def issue_token(self, name: str, expires_s: float | None = None) -> str:
        """A new bearer token for client ``name`` (replacing its old one), valid for
        ``expires_s`` seconds (None: until revoked); only its hash is kept."""
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"client name {name!r}: use 1-64 letters, digits, '-' or '_'")
        if expires_s is not None and not expires_s > 0:
            raise ConfigError(f"token lifetime {expires_s}: give a positive number of seconds (or none: no expiry)")
        token = "baim_" + secrets.token_urlsafe(32)
        now = time.time()
        expires = None if expires_s is None else now + expires_s
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO tokens (name, token_sha256, created, expires) VALUES (?, ?, ?, ?)",
                (name, token_hash(token), now, expires),
            )
        return token

    def tokens(self) -> list[Token]:
        with self._db() as db:
            rows = db.execute("SELECT name, created, expires FROM tokens ORDER BY name").fetchall()
        return [Token(str(n), float(c), None if e is None else float(e)) for n, c, e in rows]

    def revoke_token(self, name: str) -> bool:
        """Forget client ``name``'s token (its next request is refused); False if it had none."""
        with self._db() as db:
            return db.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount > 0

    def client_of(self, token: str) -> str | None:
        """The client a bearer token was issued to, or None (unknown, revoked or expired)."""
        with self._db() as db:
            row = db.execute("SELECT name, expires FROM tokens WHERE token_sha256 = ?", (token_hash(token),)).fetchone()
        if row is None or (row[1] is not None and row[1] <= time.time()):
            return None
        return str(row[0])
