"""Reader for the IDX file format (MNIST / Fashion-MNIST), gzip or raw.

Every failure names the file and says what was wrong, because the usual causes (a truncated
download, an HTML error page saved under the data set's name, images and labels swapped) are
otherwise very hard to tell apart.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class IDXError(DataError):
    """An IDX file is missing, truncated or not an IDX file at all."""


MAX_BYTES = 4 << 30  # the largest IDX payload baim reads (Fashion-MNIST's training images: 47 MB)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array of its declared shape.

    The header is read first and the declared size checked against :data:`MAX_BYTES` before
    the payload is read, so a header (or a gzip stream) claiming terabytes costs nothing."""
    path = Path(path)
    if not path.is_file():
        raise IDXError(f"IDX file not found: {path}")
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
            magic = fh.read(4)
            if len(magic) < 4:
                raise IDXError(f"{path}: only {len(magic)} bytes, too short for an IDX header")
            if magic[0] != 0 or magic[1] != 0 or magic[2] not in _DTYPES:
                raise IDXError(
                    f"{path}: wrong magic number {magic.hex()} (expected 0000 + type code + ndim, "
                    "e.g. 00000803 for images); this is not an IDX file"
                )
            dtype: np.dtype = np.dtype(_DTYPES[magic[2]])  # type: ignore[call-overload]
            ndim = magic[3]
            dims = fh.read(4 * ndim)
            header = 4 + 4 * ndim
            if len(dims) < 4 * ndim:
                raise IDXError(f"{path}: truncated header (needs {header} bytes, has {4 + len(dims)})")
            shape = tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))
            size = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if size > MAX_BYTES:
                raise IDXError(
                    f"{path}: header declares shape {shape} ({size:,} bytes), over baim's limit of "
                    f"{MAX_BYTES:,}; the file is damaged or not a data set baim can hold in memory"
                )
            raw = fh.read(size + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise IDXError(
            f"cannot read IDX file {path}: {exc} (the file is damaged or truncated; reinstall or re-copy it)"
        ) from exc
    if len(raw) != size:
        raise IDXError(
            f"{path}: truncated or oversized file: header declares shape {shape} "
            f"({header + size} bytes) but the file has {'more than ' if len(raw) > size else ''}"
            f"{header + len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
