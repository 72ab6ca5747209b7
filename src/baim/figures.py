"""Pictures and plots for reports: sample grids (PIL) and line/bar charts (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_write


def image_grid(images: np.ndarray, ncol: int = 8, pad: int = 2, scale: int = 2) -> Image.Image:
    """uint8 N×C×H×W → one PIL image laid out in rows of ``ncol``."""
    n, c, h, w = images.shape
    nrow = (n + ncol - 1) // ncol
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, ncol)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + k * (w + pad) : pad + k * (w + pad) + w] = images[
            i
        ].transpose(1, 2, 0)
    img = Image.fromarray(grid[..., 0] if c == 1 else grid, "L" if c == 1 else "RGB")
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img


def save_png(img: Image.Image, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    out = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return out


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
