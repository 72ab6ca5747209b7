"""Users' images in and out of the edge service: uploads decoded to the model's geometry
within a decode budget (pixels read from the headers first, then CPU seconds), and images
encoded as a PNG grid or a ``.npy`` array."""

import io
import time

import numpy as np
from PIL import Image

from ..figures import image_grid
from ..models.baim import BAIM

MAX_IMAGES = 256
MAX_UPLOAD_BYTES = 8 << 20  # per file
MAX_PIXELS = 4096 * 4096  # per image
MAX_REQUEST_PIXELS = 4096 * 4096  # per request, read from the images' headers before decoding any
DECODE_CPU_S = 2.0  # CPU seconds decoding one request's uploads may take


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
