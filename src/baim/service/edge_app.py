"""``baim serve edge``: generation requests answered from the edge's toolbox.

The paper's service lifecycle: a user asks the nearest edge; on a toolbox hit the edge answers
at once, on a miss it fetches the task's compact model from the cloud registry, verifies and
stores it, and answers. ``/v1/reconstruct`` is the path where the user brings data (their
images are encoded and decoded by the task's model; they never leave the edge).
"""

import asyncio
import io
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from importlib import resources
from typing import Annotated, Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from PIL import Image
from pydantic import AfterValidator, BaseModel, Field, field_validator

from .. import __version__
from ..edge.toolbox import OWN, ToolboxError
from ..figures import image_grid
from ..models.baim import BAIM
from ..models.evaluation import generate
from ..names import is_task_name
from .client import RegistryRefused, RegistryUnavailable, UnknownTask
from .http import Metrics, error, install_common, log
from .toolbox import Loaded, Toolbox

MAX_IMAGES = 256
MAX_UPLOAD_FILES = 64
MAX_UPLOAD_BYTES = 8 << 20  # per file
MAX_PIXELS = 4096 * 4096
MAX_JSON_BYTES = 64 << 10


def _task_name(task: str) -> str:
    if not is_task_name(task):
        raise ValueError("a task name is 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit")
    return task


TaskName = Annotated[str, AfterValidator(_task_name)]
TaskQuery = Annotated[str, Query(), AfterValidator(_task_name)]
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


class BadImage(ValueError):
    pass


def to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def encode(images: np.ndarray, fmt: str, ncol: int = 8) -> tuple[bytes, str]:
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, images, allow_pickle=False)
        return buf.getvalue(), "application/x-npy"
    image_grid(images, ncol=min(ncol, len(images))).save(buf, format="PNG")
    return buf.getvalue(), "image/png"


def side_by_side(x: np.ndarray, recon: np.ndarray, fmt: str) -> tuple[bytes, str]:
    """The reconstructions (``npy``), or a PNG of inputs above reconstructions, 8 per row."""
    if fmt == "npy":
        return encode(recon, "npy")
    ncol = min(8, len(x))
    rows = []
    for i in range(0, len(x), ncol):
        rows += [x[i : i + ncol], recon[i : i + ncol]]
    pad = [np.pad(r, ((0, ncol - len(r)), (0, 0), (0, 0), (0, 0)), constant_values=255) for r in rows]
    return encode(np.concatenate(pad), "png", ncol=ncol)


def read_image(data: bytes, name: str, model: BAIM) -> np.ndarray:
    """One uploaded image (PNG/JPEG/... or a .npy of uint8 images) → N×C×H×W uint8 at the
    model's geometry (resized, converted to its channel count)."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise BadImage(f"{name}: {len(data)} bytes; the limit is {MAX_UPLOAD_BYTES} bytes per file")
    size, channels = model.image_size, model.channels
    if name.endswith(".npy"):
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - whatever numpy makes of the bytes, it is the user's file
            raise BadImage(f"{name}: not a readable .npy array ({type(exc).__name__}: {exc})") from exc
        if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != size or arr.shape[-2] != size:
            raise BadImage(f"{name}: a .npy upload must be uint8 N×H×W or N×C×H×W with H = W = {size}")
        arr = arr[:, None] if arr.ndim == 3 else arr
        if arr.shape[1] != channels or not 1 <= len(arr) <= MAX_IMAGES:
            raise BadImage(f"{name}: needs {channels} channel(s) and 1 to {MAX_IMAGES} images")
        return arr
    try:
        opened = Image.open(io.BytesIO(data))
        if opened.width * opened.height > MAX_PIXELS:
            raise BadImage(f"{name}: {opened.width}×{opened.height} pixels; the limit is {MAX_PIXELS} pixels")
        img = opened.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
    except BadImage:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on hostile bytes; all are the file's fault
        raise BadImage(f"{name}: not an image baim can read (PNG, JPEG, ... or .npy): {exc}") from exc
    arr = np.asarray(img, dtype=np.uint8)
    return (arr[None] if channels == 1 else arr.transpose(2, 0, 1))[None]


def create_edge_app(toolbox: Toolbox, edge: str, inference_slots: int = 1, refresh_s: float = 0.0) -> FastAPI:
    """``inference_slots`` forwards run at once; each already uses all of torch's intra-op
    threads, so more slots on a small CPU only make the forwards fight (measured in
    ``benchmarks/service.py``); HTTP parsing and encoding still overlap with them. With
    ``refresh_s`` > 0 the edge asks the registry for newer versions of the tasks it fetched
    every ``refresh_s`` seconds (a refused version changes nothing)."""

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

    @app.middleware("http")
    async def body_limit(request: Request, call_next: Any) -> Response:
        """Refuse oversized bodies before parsing them (JSON is tiny; uploads have a cap)."""
        limit = MAX_UPLOAD_FILES * MAX_UPLOAD_BYTES if request.url.path == "/v1/reconstruct" else MAX_JSON_BYTES
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > limit:
            return error(413, f"request body of {declared} bytes; the limit here is {limit} bytes")
        return await call_next(request)

    app.state.toolbox = toolbox
    page = resources.files("baim.service").joinpath("page.html").read_text()
    slots = asyncio.Semaphore(inference_slots)

    async def compute(fn: Any) -> Any:
        async with slots:
            return await asyncio.to_thread(fn)

    async def model_for(task: str) -> tuple[Loaded, str] | Response:
        try:
            return await toolbox.get(task)
        except UnknownTask as exc:
            known = sorted(set(exc.known) | {h.task for h in toolbox.store.held()})
            return error(404, f"unknown task {task!r}; known tasks: {', '.join(known)}", known_tasks=known)
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

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "edge": edge, "models_on_disk": len(toolbox.store.held())}

    @app.get("/metrics")
    def prometheus() -> Response:
        return metrics.render()

    @app.get("/v1/toolbox")
    async def toolbox_state() -> dict[str, Any]:  # async: reads the LRU on the loop that changes it
        return {"edge": edge, **toolbox.summary()}

    @app.get("/v1/tasks")
    async def tasks() -> dict[str, Any]:
        held = sorted({h.task for h in toolbox.store.held()})
        cloud: list[str] | None = None
        if toolbox.client is not None:
            try:
                cloud = sorted(m["task"] for m in await toolbox.client.models())
            except (RegistryUnavailable, RegistryRefused):
                cloud = None
        return {"toolbox": held, "cloud": cloud, "tasks": sorted(set(held) | set(cloud or []))}

    def local_only(request: Request) -> Response | None:
        """Toolbox administration is for the edge's operator: from this machine only."""
        host = request.client.host if request.client else ""
        if host not in ("127.0.0.1", "::1", "localhost", "testclient"):
            return error(403, "toolbox administration is only allowed from the edge machine itself (loopback)")
        return None

    @app.post("/v1/toolbox/refresh")
    async def refresh(request: Request, task: TaskQuery) -> Any:
        return local_only(request) or await toolbox.refresh(task)

    @app.delete("/v1/toolbox/{task}")
    async def drop(request: Request, task: TaskPath) -> Any:
        """Forget a fetched model (the next request for it is a miss); the edge's own stays."""
        return local_only(request) or {"task": task, "dropped": await toolbox.drop(task)}

    @app.post("/v1/generate")
    async def generate_images(req: GenerateRequest) -> Response:
        t0 = time.perf_counter()
        found = await model_for(req.task)
        if isinstance(found, Response):
            return found
        loaded, status = found
        seed = secrets.randbelow(2**31) if req.seed is None else req.seed

        def run() -> np.ndarray:
            return to_uint8(generate(loaded.model, req.n, seed, standard=req.procedure == "standard"))

        images = await compute(run)
        body, media = await asyncio.to_thread(encode, images, req.format)
        return Response(body, media_type=media, headers=headers(loaded, status, t0, **{"X-Baim-Seed": seed}))

    @app.post("/v1/reconstruct")
    async def reconstruct(
        task: Annotated[TaskName, Form()],
        files: Annotated[list[UploadFile], File(description="images (PNG, JPEG, ...) or .npy uint8 arrays")],
        format: Annotated[Literal["png", "npy"], Form()] = "png",
    ) -> Response:
        t0 = time.perf_counter()
        if len(files) > MAX_UPLOAD_FILES:
            return error(422, f"{len(files)} files; the limit is {MAX_UPLOAD_FILES} per request")
        found = await model_for(task)
        if isinstance(found, Response):
            return found
        loaded, status = found
        model = loaded.model
        assert isinstance(model, BAIM)
        raw = [(await f.read(MAX_UPLOAD_BYTES + 1), f.filename or "upload") for f in files]
        try:  # decoding is CPU work: off the loop, so other requests go on
            parts = await asyncio.to_thread(lambda: [read_image(data, name, model) for data, name in raw])
        except BadImage as exc:
            return error(422, str(exc))
        x = np.concatenate(parts)
        if len(x) > MAX_IMAGES:
            return error(422, f"{len(x)} images; the limit is {MAX_IMAGES} per request")

        @torch.no_grad()
        def run() -> tuple[np.ndarray, float]:
            xt = torch.from_numpy(x).float() / 255.0
            out = model(xt, torch.zeros(len(xt), dtype=torch.long), sample=False).x_hat
            return to_uint8(out), float(((out - xt) ** 2).mean())

        recon, mse = await compute(run)
        body, media = await asyncio.to_thread(side_by_side, x, recon, format)
        return Response(body, media_type=media, headers=headers(loaded, status, t0, **{"X-Baim-MSE": f"{mse:.6f}"}))

    return app
