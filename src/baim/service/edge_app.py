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
import hashlib
import io
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
from PIL import Image
from pydantic import AfterValidator, BaseModel, Field, field_validator
from starlette.requests import ClientDisconnect

from .. import __version__
from ..data import to_uint8
from ..edge.toolbox import OWN, ToolboxError
from ..figures import image_grid
from ..models.baim import BAIM
from ..models.evaluation import generate
from ..names import is_task_name
from .client import CredentialRefused, RegistryRefused, RegistryUnavailable, UnknownTask
from .http import Metrics, error, install_common, log
from .limits import RateLimit, UploadTooLarge, install_body_limit, read_uploads
from .toolbox import Loaded, Toolbox

MAX_IMAGES = 256
MAX_UPLOAD_FILES = 64
MAX_UPLOAD_BYTES = 8 << 20  # per file
MAX_UPLOAD_TOTAL = 32 << 20  # per request, counted as received (the spool never holds more)
MAX_PIXELS = 4096 * 4096  # per image
MAX_REQUEST_PIXELS = 4096 * 4096  # per request, read from the images' headers before decoding any
DECODE_CPU_S = 2.0  # CPU seconds decoding one request's uploads may take
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


class BadImage(ValueError):
    pass


def encode_images(images: np.ndarray, fmt: str, ncol: int = 8) -> tuple[bytes, str]:
    """uint8 images as a ``.npy`` array or a PNG grid, with the media type."""
    buf = io.BytesIO()
    if fmt == "npy":
        np.save(buf, images, allow_pickle=False)
        return buf.getvalue(), "application/x-npy"
    image_grid(images, ncol=min(ncol, len(images))).save(buf, format="PNG")
    return buf.getvalue(), "image/png"


def side_by_side(x: np.ndarray, recon: np.ndarray, fmt: str) -> tuple[bytes, str]:
    """The reconstructions (``npy``), or a PNG of inputs above reconstructions, 8 per row."""
    if fmt == "npy":
        return encode_images(recon, "npy")
    ncol = min(8, len(x))
    rows = []
    for i in range(0, len(x), ncol):
        rows += [x[i : i + ncol], recon[i : i + ncol]]
    pad = [np.pad(r, ((0, ncol - len(r)), (0, 0), (0, 0), (0, 0)), constant_values=255) for r in rows]
    return encode_images(np.concatenate(pad), "png", ncol=ncol)


def read_images(files: list[tuple[bytes, str]], model: BAIM) -> np.ndarray:
    """Uploaded images (PNG/JPEG/... or ``.npy`` uint8 arrays) → N×C×H×W uint8 at the model's
    geometry, within the decode budget: every image's size is read from its header first and
    the request refused if their pixels add up past :data:`MAX_REQUEST_PIXELS`; decoding then
    stops once it has used :data:`DECODE_CPU_S` CPU seconds."""
    opened: list[tuple[str, Image.Image | None, bytes]] = []
    pixels = 0
    for data, name in files:
        if len(data) > MAX_UPLOAD_BYTES:
            raise BadImage(f"{name}: {len(data)} bytes; the limit is {MAX_UPLOAD_BYTES} bytes per file")
        if name.endswith(".npy"):
            opened.append((name, None, data))
            continue
        try:
            header: Image.Image = Image.open(io.BytesIO(data))  # reads the header only
        except Exception as exc:  # noqa: BLE001 - PIL raises many types on hostile bytes; all are the file's fault
            raise BadImage(f"{name}: not an image baim can read (PNG, JPEG, ... or .npy): {exc}") from exc
        if header.width * header.height > MAX_PIXELS:
            raise BadImage(f"{name}: {header.width}×{header.height} pixels; the limit is {MAX_PIXELS} pixels")
        pixels += header.width * header.height
        if pixels > MAX_REQUEST_PIXELS:
            raise BadImage(
                f"the images add up to more than {MAX_REQUEST_PIXELS} pixels (at {name}); the decode budget is "
                f"{MAX_REQUEST_PIXELS} pixels per request: send fewer or smaller images"
            )
        opened.append((name, header, data))
    cpu0 = time.thread_time()
    parts = []
    for name, img, data in opened:
        if time.thread_time() - cpu0 > DECODE_CPU_S:
            raise BadImage(f"decoding stopped at {name}: the decode budget is {DECODE_CPU_S} CPU seconds per request")
        parts.append(_npy(data, name, model) if img is None else _pixels(img, name, model))
    return np.concatenate(parts)


def _npy(data: bytes, name: str, model: BAIM) -> np.ndarray:
    size, channels = model.image_size, model.channels
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


def _pixels(img: Image.Image, name: str, model: BAIM) -> np.ndarray:
    size, channels = model.image_size, model.channels
    try:
        img.draft("L" if channels == 1 else "RGB", (size, size))  # JPEG: decode at a reduced scale
        small = img.convert("L" if channels == 1 else "RGB").resize(
            (size, size), Image.Resampling.BILINEAR, reducing_gap=3.0
        )
    except Exception as exc:  # noqa: BLE001 - PIL raises many types on hostile bytes; all are the file's fault
        raise BadImage(f"{name}: not an image baim can read (PNG, JPEG, ... or .npy): {exc}") from exc
    arr = np.asarray(small, dtype=np.uint8)
    return (arr[None] if channels == 1 else arr.transpose(2, 0, 1))[None]


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


LOOPBACK = ("127.0.0.1", "::1", "localhost", "testclient")


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
    limiter = RateLimit(rate_per_s, burst)
    active = [0]

    async def compute(fn: Any) -> Any:
        async with slots:
            return await asyncio.to_thread(fn)

    def is_operator(request: Request) -> bool:
        return (request.client.host if request.client else "") in LOOPBACK

    def bearer(request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    def admit(request: Request) -> Response | None:
        """401 without a valid user token (when tokens are on), 429 past the client's rate."""
        token = bearer(request)
        who = request.client.host if request.client else "?"
        if user_tokens is not None:
            if token is None or token_hash(token) not in user_tokens():
                return error(401, "this edge needs a user token (Authorization: Bearer TOKEN); ask its operator")
            who = "token:" + token_hash(token)
        wait = limiter.wait_s(who)
        if wait > 0:
            resp = error(429, f"too many requests from this client; the limit is {rate_per_s:g} per second")
            resp.headers["Retry-After"] = str(max(1, round(wait)))
            return resp
        return None

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

    @asynccontextmanager
    async def busy_gate() -> AsyncIterator[Response | None]:
        """At most ``max_active`` expensive requests in progress; the rest get 503 at once."""
        if active[0] >= max_active:
            resp = error(503, f"this edge is busy ({max_active} requests in progress); retry shortly")
            resp.headers["Retry-After"] = "1"
            yield resp
            return
        active[0] += 1
        try:
            yield None
        finally:
            active[0] -= 1

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

    def local_only(request: Request) -> Response | None:
        """Toolbox administration is for the edge's operator: from this machine only."""
        if not is_operator(request):
            return error(403, "toolbox administration is only allowed from the edge machine itself (loopback)")
        return None

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
