"""Reader for the IDX file format (MNIST / Fashion-MNIST), gzip or raw.

Every failure names the file and says what was wrong, because the usual causes (a truncated
download, an HTML error page saved under the data set's name, images and labels swapped) are
otherwise very hard to tell apart.
"""

from __future__ import annotations

import gzip
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


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array of its declared shape."""
    path = Path(path)
    if not path.is_file():
        raise IDXError(f"IDX file not found: {path}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as exc:
        raise IDXError(
            f"cannot read IDX file {path}: {exc} (the file is damaged or truncated; reinstall or re-copy it)"
        ) from exc
    if len(raw) < 4:
        raise IDXError(f"{path}: only {len(raw)} bytes, too short for an IDX header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise IDXError(
            f"{path}: wrong magic number {raw[:4].hex()} (expected 0000 + type code + ndim, "
            "e.g. 00000803 for images); this is not an IDX file"
        )
    dtype: np.dtype = np.dtype(_DTYPES[raw[2]])  # type: ignore[call-overload]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{path}: truncated header (needs {header} bytes, has {len(raw)})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise IDXError(
            f"{path}: truncated or oversized file: header declares shape {shape} "
            f"({expected} bytes) but the file has {len(raw)} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
