"""Building the two services from a run directory, and the local ``pull`` / ``generate``.

A finished ``baim run`` can be served as is: the registry publishes the run's compact models
(``cloud/compact/*``) into ``RUN/registry/``; an edge's toolbox lives in
``RUN/edges/edge-E/toolbox/`` and starts with the edge's own model (personalised, else
deployed).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn

from ..atomic import write_bytes
from ..cloud.registry import Registry
from ..data import to_uint8
from ..edge.toolbox import Signed, ToolboxStore
from ..errors import ConfigError
from ..figures import image_grid, save_png
from ..models.baim import BAIM
from ..models.evaluation import generate
from ..models.io import MANIFEST, WEIGHTS, is_saved, load_model
from ..runfiles import RunFiles
from ..signing import SigningError, public_from_hex
from .access import token_hash
from .client import RegistryClient
from .cloud_app import create_cloud_app
from .edge_app import create_edge_app
from .http import server_config
from .toolbox import Toolbox

OWN_MODELS = ("personalized", "deployed")


def open_registry(run_dir: str | Path, publish: bool = True) -> Registry:
    """The run's registry, with the run's compact models published (idempotent)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory; run `baim run --out {run_dir}` first")
    registry = Registry(RunFiles(run_dir).registry)
    if publish:
        registry.publish_run(run_dir)
    return registry


def read_token(path: str | Path) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the token file ({exc}); create it from `baim serve token`") from exc
    if not token:
        raise ConfigError(f"{path}: the token file is empty")
    return token


def registry_key(run_dir: Path | None, key_file: str | None) -> bytes | None:
    """The registry public key an edge trusts: ``--registry-key``, else the run's own registry
    (same machine), else None (the toolbox's pin, or first use)."""
    try:
        if key_file:
            return public_from_hex(Path(key_file).read_text())
        if run_dir is not None and (RunFiles(run_dir).registry / "registry.pub").is_file():
            return public_from_hex((RunFiles(run_dir).registry / "registry.pub").read_text())
    except (OSError, SigningError) as exc:
        raise ConfigError(f"registry public key: {exc}") from exc
    return None


def own_model(edge_dir: Path) -> Path | None:
    for name in OWN_MODELS:
        if is_saved(edge_dir / name):
            return edge_dir / name
    return None


def user_tokens(path: str | Path) -> Any:
    """The sha256 of the user tokens in ``path`` (one a line), read again when the file changes."""
    path = Path(path)
    state: dict[str, Any] = {"stamp": None, "hashes": frozenset()}

    def current() -> frozenset[str]:
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != state["stamp"]:
                lines = (line.strip() for line in path.read_text().splitlines())
                state["hashes"], state["stamp"] = frozenset(token_hash(t) for t in lines if t), stamp
        except OSError:
            state["hashes"], state["stamp"] = frozenset(), None  # no file, no user: refuse all, not none
        return state["hashes"]

    if not current():
        raise ConfigError(
            f"{path}: no user tokens in it (one a line); write at least one, e.g. from `openssl rand -hex 32`"
        )
    return current


async def edge_toolbox(
    run_dir: str | Path,
    edge: int,
    cloud: str | None,
    token: str | Path | None,
    budget_mb: float = 256.0,
    ca_file: str | None = None,
    key_file: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    disk_budget_mb: float = 1024.0,
    trust_first_use: bool = False,
) -> Toolbox:
    """Edge ``edge``'s toolbox, seeded with its own model. No network here. ``token``: the
    registry token, or its file (read again when it changes). Without a registry key (given,
    the run's own, or pinned before) a miss is refused, unless ``trust_first_use``: then the
    toolbox pins the key the registry presents on its first miss."""
    run_dir = Path(run_dir)
    edge_dir = RunFiles(run_dir).edge(edge)
    if not edge_dir.is_dir():
        raise ConfigError(f"{edge_dir}: no such edge in this run (edges are numbered from 0)")
    client = RegistryClient(cloud, token or "", ca_file, transport=transport) if cloud else None
    key = registry_key(run_dir, key_file)
    store = ToolboxStore(edge_dir / "toolbox", key)
    if store.public_key is None and client is not None:
        print(
            f"baim: no registry key given; the key the registry presents on the first miss will be trusted and "
            f"pinned in {store.root}/registry.pub (pass --registry-key to check it instead)"
            if trust_first_use
            else "baim: no registry key given; misses are refused until you pass --registry-key (or "
            "--trust-on-first-use)",
            file=sys.stderr,
        )
    own = own_model(edge_dir)
    if own is not None:  # the newest of the edge's own models (a later personalisation replaces it)
        store.add_own(own, json.loads((own / MANIFEST).read_text()).get("task"))
    return Toolbox(
        store, client, int(budget_mb * (1 << 20)), int(disk_budget_mb * (1 << 20)), trust_first_use=trust_first_use
    )


def serve_cloud(run_dir: str, host: str, port: int, tls_cert: str | None, tls_key: str | None) -> None:
    registry = open_registry(run_dir)
    entries = registry.entries()
    scheme = "https" if tls_cert else "http"
    print(f"baim registry: {len(entries)} models ({', '.join(e.task for e in entries)}) at {scheme}://{host}:{port}")
    print(f"baim registry: public key {registry.public_key.hex()} ({registry.root / 'registry.pub'})")
    uvicorn.Server(server_config(create_cloud_app(registry), host, port, tls_cert, tls_key)).run()


def serve_edge(
    run_dir: str,
    edge: int,
    cloud: str | None,
    token_file: str | None,
    host: str,
    port: int,
    budget_mb: float,
    ca_file: str | None,
    key_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    refresh_s: float = 0.0,
    disk_budget_mb: float = 1024.0,
    trust_first_use: bool = False,
    user_token_file: str | None = None,
    rate_per_s: float = 20.0,
) -> None:
    if token_file:
        read_token(token_file)  # readable and not empty now; read again by the client when it changes
    elif cloud:
        raise ConfigError("--cloud needs --token-file (issue a token with `baim serve token --run RUN --name NAME`)")
    token = Path(token_file) if token_file else None
    toolbox = asyncio.run(
        edge_toolbox(
            run_dir,
            edge,
            cloud,
            token,
            budget_mb,
            ca_file,
            key_file,
            disk_budget_mb=disk_budget_mb,
            trust_first_use=trust_first_use,
        )
    )
    users = user_tokens(user_token_file) if user_token_file else None
    app = create_edge_app(
        toolbox, f"edge-{edge}", refresh_s=refresh_s, user_tokens=users, rate_per_s=rate_per_s, burst=2 * rate_per_s
    )
    held = ", ".join(h.label for h in toolbox.store.held()) or "(empty)"
    scheme = "https" if tls_cert else "http"
    print(f"baim edge-{edge}: toolbox {held}; page at {scheme}://{host}:{port}/")
    uvicorn.Server(server_config(app, host, port, tls_cert, tls_key)).run()


async def _fetch_verified(
    cloud: str, token: str, task: str, scratch: Path, ca_file: str | None, key_file: str | None, trust_first_use: bool
) -> dict:
    client = RegistryClient(cloud, token, ca_file)
    try:
        key = registry_key(None, key_file)
        if key is None:
            if not trust_first_use:
                raise ConfigError(
                    "no registry key to verify the model with: pass --registry-key (RUN/registry/registry.pub on "
                    "the cloud), or --trust-on-first-use to trust the key the registry presents"
                )
            key = await client.public_key()
            print(
                f"baim: trusting the key the registry presents ({key.hex()[:16]}…); pass --registry-key "
                "(RUN/registry/registry.pub on the cloud) to check it instead",
                file=sys.stderr,
            )
        entry = await client.model(task)
        version = int(entry["version"])
        manifest = entry["manifest"]
        weights = await client.weights(
            task, version, str(manifest.get("weights_sha256")), int(manifest.get("weights_bytes", 0))
        )
    finally:
        await client.aclose()
    held = ToolboxStore(scratch / "toolbox", key).add_fetched(task, Signed.of(entry), manifest, weights)
    model = scratch / "model"
    write_bytes(model / WEIGHTS, (held.folder / WEIGHTS).read_bytes())
    write_bytes(
        model / "signature.json",
        json.dumps({k: entry[k] for k in ("task", "version", "counter", "created", "signature")}).encode(),
    )
    write_bytes(model / MANIFEST, (held.folder / MANIFEST).read_bytes())
    load_model(model, "compact")  # verified once more, as a user would load it
    return {"task": task, "version": version, "bytes": len(weights), "registry_key": key.hex()}


def pull(
    cloud: str,
    token_file: str,
    task: str,
    out: str,
    ca_file: str | None,
    key_file: str | None,
    trust_first_use: bool = False,
) -> dict:
    """Fetch a task's compact model from the registry into ``out``, verified like a toolbox
    fetch (for a user who runs the model on their own machine). Everything happens in a
    scratch folder beside ``out`` that is renamed onto it once verified: a failed pull leaves
    nothing, and an existing ``out`` is never mixed with another model."""
    out_path = Path(out)
    if out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())):
        raise ConfigError(f"{out_path} exists and is not empty; choose another --out or delete it")
    token = read_token(token_file)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.pull-", dir=out_path.parent))
    try:
        result = asyncio.run(_fetch_verified(cloud, token, task, scratch, ca_file, key_file, trust_first_use))
        if out_path.is_dir():
            out_path.rmdir()  # empty (checked above)
        os.replace(scratch / "model", out_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {**result, "out": str(out_path)}


def generate_grid(model_dir: str, n: int, seed: int, out: str, standard: bool = False) -> dict[str, Any]:
    """Generate ``n`` images with a saved compact model: a PNG grid, or ``.npy`` uint8."""
    if not 1 <= n <= 4096:
        raise ConfigError(f"--n {n}: generate between 1 and 4096 images")
    model = load_model(model_dir, "compact")
    assert isinstance(model, BAIM)
    images = to_uint8(generate(model, n, seed, standard=standard))
    if out.endswith(".npy"):
        buf = io.BytesIO()
        np.save(buf, images, allow_pickle=False)
        write_bytes(out, buf.getvalue())
    else:
        save_png(image_grid(images), out)
    return {"model": model_dir, "task": model.task_names[0], "n": n, "seed": seed, "out": out}
