"""``baim serve edge``: generation requests answered from the edge's toolbox.

The paper's service lifecycle: a user asks the nearest edge; on a toolbox hit the edge answers
at once, on a miss it fetches the task's compact model from the cloud registry, verifies and
stores it, and answers. ``/v1/reconstruct`` is the path where the user brings data (their
images are encoded and decoded by the task's model; they never leave the edge).

What a caller may spend is bounded (:mod:`baim.service.limits`): body bytes as received,
requests per second per client, requests in progress, and the pixels and CPU seconds spent
decoding uploads. With user tokens on, only token holders get past ``/`` and ``/healthz``;
toolbox administration is for the edge machine itself, and refresh needs a request a web page
cannot send without asking (a custom header or a JSON body).
"""

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from importlib import resources
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import AfterValidator, BaseModel, Field, field_validator
from starlette.requests import ClientDisconnect

from .. import __version__
from ..data import to_uint8
from ..edge.toolbox import OWN, ToolboxError
from ..models.baim import BAIM
from ..models.evaluation import generate
from ..names import is_task_name
from .access import Access, is_operator, local_only
from .client import CredentialRefused, RegistryRefused, RegistryUnavailable, UnknownTask
from .http import Metrics, error, install_common, log
from .images import MAX_IMAGES, MAX_UPLOAD_BYTES, BadImage, encode_images, read_images, side_by_side
from .limits import InProgress, UploadTooLarge, install_body_limit, read_uploads
from .toolbox import Loaded, Toolbox

MAX_UPLOAD_FILES = 64
MAX_UPLOAD_TOTAL = 32 << 20  # per request, counted as received (the spool never holds more)
MAX_JSON_BYTES = 64 << 10
ADMIN_HEADER = "X-Baim-Admin"  # a custom header: a web page cannot send it cross-origin without asking


def _task_name(task: str) -> str:
    if not is_task_name(task):
        raise ValueError("a task name is 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return task


TaskName = Annotated[str, AfterValidator(_task_name)]
TaskPath = Annotated[str, Path(), AfterValidator(_task_name)]


class GenerateRequest(BaseModel):
    task: TaskName
    n: int = Field(16, description=f"number of images, 1..{MAX_IMAGES}")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="sampling seed (random when absent)")
    format: Literal["png", "npy"] = "png"
    procedure: Literal["fitted", "standard"] = Field(
        "fitted", description="z from the model's fitted prior (what the run's FID uses) or from N(0, I)"
    )

    @field_validator("n")
    @classmethod
    def _n_in_range(cls, n: int) -> int:
        if not 1 <= n <= MAX_IMAGES:
            raise ValueError(f"n must be between 1 and {MAX_IMAGES} images per request, got {n}")
        return n


def create_edge_app(
    toolbox: Toolbox,
    edge: str,
    inference_slots: int = 1,
    refresh_s: float = 0.0,
    user_tokens: Callable[[], frozenset[str]] | None = None,
    rate_per_s: float = 20.0,
    burst: float = 40.0,
    max_active: int = 64,
) -> FastAPI:
    """``inference_slots`` forwards run at once; each already uses all of torch's intra-op
    threads, so more slots on a small CPU only make the forwards fight (measured in
    ``benchmarks/service.py``); HTTP parsing and encoding still overlap with them. With
    ``refresh_s`` > 0 the edge asks the registry for newer versions of the tasks it fetched
    every ``refresh_s`` seconds (a refused version changes nothing).

    ``user_tokens`` gives the sha256 of the tokens users must present (read again on each
    call, so a changed file takes effect); None serves anyone. Each client (token, else
    address) may make ``rate_per_s`` requests a second (bursts of ``burst``); at most
    ``max_active`` generation or reconstruction requests are in progress at once."""

    async def refresher() -> None:
        while True:
            await asyncio.sleep(refresh_s)
            for task in sorted({h.task for h in toolbox.store.held() if h.version != OWN}):
                try:
                    await toolbox.refresh(task)
                except Exception:  # noqa: BLE001 - a failed refresh must not end the refresher
                    log.exception("refresh of %s failed", task)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        job = asyncio.create_task(refresher()) if refresh_s > 0 else None
        yield
        if job is not None:
            job.cancel()
            with suppress(asyncio.CancelledError):
                await job
        await toolbox.aclose()

    app = FastAPI(
        title=f"baim edge service ({edge})", version=__version__, docs_url="/docs", redoc_url=None, lifespan=lifespan
    )
    metrics = Metrics("baim_edge")
    install_common(app, metrics)
    install_body_limit(app, lambda path: MAX_UPLOAD_TOTAL if path == "/v1/reconstruct" else MAX_JSON_BYTES)

    app.state.toolbox = toolbox
    page = resources.files("baim.service").joinpath("page.html").read_text()
    slots = asyncio.Semaphore(inference_slots)
    admit = Access(user_tokens, rate_per_s, burst).admit
    busy_gate = InProgress(max_active).gate

    async def compute(fn: Any) -> Any:
        async with slots:
            return await asyncio.to_thread(fn)

    async def model_for(task: str) -> tuple[Loaded, str] | Response:
        try:
            return await toolbox.get(task)
        except UnknownTask as exc:
            known = sorted(set(exc.known) | {h.task for h in toolbox.store.held()})
            return error(404, f"unknown task {task!r}; known tasks: {', '.join(known)}", known_tasks=known)
        except CredentialRefused as exc:
            log.error("the cloud registry refused this edge's credential: %s", exc)
            return error(
                503,
                f"task {task!r} is not in this edge's toolbox and the cloud registry refused this edge's credential "
                "(its token is revoked, expired or wrong); the edge's operator must write a new token to the token "
                "file (read again when it changes)",
                toolbox=sorted({h.task for h in toolbox.store.held()}),
            )
        except RegistryUnavailable as exc:
            held = sorted({h.task for h in toolbox.store.held()})
            return error(
                503,
                f"task {task!r} is not in this edge's toolbox and the cloud registry cannot be reached "
                f"({exc}); tasks served without the cloud: {', '.join(held) or '(none)'}",
                toolbox=held,
            )
        except (ToolboxError, RegistryRefused) as exc:
            return error(502, f"the cloud's model for {task!r} was refused: {exc}")

    def headers(loaded: Loaded, status: str, t0: float, **extra: Any) -> dict[str, str]:
        return {
            "X-Baim-Toolbox": status,
            "X-Baim-Model": loaded.label,
            "X-Baim-Edge": edge,
            "X-Baim-Latency-Ms": f"{(time.perf_counter() - t0) * 1000:.1f}",
            **{k: str(v) for k, v in extra.items()},
        }

    @app.get("/", include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page.replace("{{edge}}", edge))

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "edge": edge}

    @app.get("/metrics")
    def prometheus(request: Request) -> Response:
        return admit(request) or metrics.render()

    @app.get("/v1/toolbox")
    async def toolbox_state(request: Request) -> Any:  # async: reads the LRU on the loop that changes it
        """The toolbox's state; ``last_error`` only for the edge's operator (loopback)."""
        return admit(request) or {"edge": edge, **toolbox.summary(errors=is_operator(request))}

    @app.get("/v1/tasks")
    async def tasks(request: Request) -> Any:
        refused = admit(request)
        if refused is not None:
            return refused
        held = sorted({h.task for h in toolbox.store.held()})
        cloud: list[str] | None = None
        if toolbox.client is not None:
            try:
                cloud = sorted(await toolbox.cloud_tasks())
            except (RegistryUnavailable, RegistryRefused):
                cloud = None
        return {"toolbox": held, "cloud": cloud, "tasks": sorted(set(held) | set(cloud or []))}

    @app.post("/v1/toolbox/refresh")
    async def refresh(request: Request, task: Annotated[str | None, Query()] = None) -> Any:
        """Ask the registry for a newer version of ``task`` (query or JSON body ``{"task": ...}``).
        Needs the ``X-Baim-Admin`` header or a JSON body: requests a web page may send without
        the browser asking first (a form post, a plain fetch) are refused."""
        refused = local_only(request)
        if refused is not None:
            return refused
        is_json = request.headers.get("content-type", "").split(";")[0].strip() == "application/json"
        if ADMIN_HEADER.lower() not in request.headers and not is_json:
            return error(
                403,
                f"refresh needs the {ADMIN_HEADER} header or a JSON body (so that a web page cannot trigger it): "
                f"curl -X POST -H '{ADMIN_HEADER}: 1' 'URL/v1/toolbox/refresh?task=TASK'",
            )
        if is_json:
            try:
                body = await request.json()
            except ValueError:
                return error(422, 'the JSON body must be {"task": "NAME"}')
            task = body.get("task") if isinstance(body, dict) else None
        try:
            name = _task_name(task if isinstance(task, str) else "")
        except ValueError as exc:
            return error(422, f"task: {exc}")
        return await toolbox.refresh(name)

    @app.delete("/v1/toolbox/{task}")
    async def drop(request: Request, task: TaskPath) -> Any:
        """Forget a fetched model (the next request for it is a miss); the edge's own stays."""
        return local_only(request) or {"task": task, "dropped": await toolbox.drop(task)}

    @app.post("/v1/generate")
    async def generate_images(req: GenerateRequest, request: Request) -> Response:
        t0 = time.perf_counter()
        refused = admit(request)
        if refused is not None:
            return refused
        async with busy_gate() as busy:
            if busy is not None:
                return busy
            found = await model_for(req.task)
            if isinstance(found, Response):
                return found
            loaded, status = found
            seed = secrets.randbelow(2**31) if req.seed is None else req.seed

            def run() -> np.ndarray:
                return to_uint8(generate(loaded.model, req.n, seed, standard=req.procedure == "standard"))

            images = await compute(run)
            body, media = await asyncio.to_thread(encode_images, images, req.format)
        return Response(body, media_type=media, headers=headers(loaded, status, t0, **{"X-Baim-Seed": seed}))

    @app.post(
        "/v1/reconstruct",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["task", "files"],
                            "properties": {
                                "task": {"type": "string"},
                                "format": {"type": "string", "enum": ["png", "npy"], "default": "png"},
                                "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                            },
                        }
                    }
                },
            }
        },
    )
    async def reconstruct(request: Request) -> Response:
        """Images (PNG, JPEG, ... or ``.npy`` uint8 arrays, ``files``) through ``task``'s model."""
        t0 = time.perf_counter()
        refused = admit(request)
        if refused is not None:
            return refused
        async with busy_gate() as busy:  # before the body is read: at most max_active spools
            if busy is not None:
                return busy
            try:
                fields, files = await read_uploads(request, MAX_UPLOAD_FILES, MAX_UPLOAD_BYTES)
            except UploadTooLarge as exc:
                return error(413, str(exc))
            except ClientDisconnect:  # or cut off by the body limit, which answers 413 itself
                return error(400, "the request body ended early")
            except ValueError as exc:
                return error(422, str(exc))
            try:
                task, fmt = _task_name(fields.get("task", "")), fields.get("format", "png")
            except ValueError as exc:
                return error(422, f"task: {exc}")
            if fmt not in ("png", "npy"):
                return error(422, f"format: 'png' or 'npy', got {fmt[:20]!r}")
            if not files:
                return error(422, "files: upload at least one image (field 'files')")
            raw = [(await f.read(MAX_UPLOAD_BYTES + 1), f.filename or "upload") for f in files]
            for f in files:
                await f.close()
            found = await model_for(task)
            if isinstance(found, Response):
                return found
            loaded, status = found
            model = loaded.model
            assert isinstance(model, BAIM)
            try:  # decoding is CPU work: off the loop, so other requests go on
                x = await asyncio.to_thread(read_images, raw, model)
            except BadImage as exc:
                return error(422, str(exc))
            if len(x) > MAX_IMAGES:
                return error(422, f"{len(x)} images; the limit is {MAX_IMAGES} per request")

            @torch.no_grad()
            def run() -> tuple[np.ndarray, float]:
                xt = torch.from_numpy(x).float() / 255.0
                out = model(xt, torch.zeros(len(xt), dtype=torch.long), sample=False).x_hat
                return to_uint8(out), float(((out - xt) ** 2).mean())

            recon, mse = await compute(run)
            body, media = await asyncio.to_thread(side_by_side, x, recon, fmt)
        return Response(body, media_type=media, headers=headers(loaded, status, t0, **{"X-Baim-MSE": f"{mse:.6f}"}))

    return app
