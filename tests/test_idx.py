import gzip
import struct

import numpy as np
import pytest

from baim.data import DataError, IDXError, read_idx
from baim.data.fashion_mnist import load_fashion_mnist


def _idx_bytes(arr: np.ndarray) -> bytes:
    return (
        struct.pack(">BBBB", 0, 0, 0x08, arr.ndim)
        + b"".join(struct.pack(">I", d) for d in arr.shape)
        + arr.astype(np.uint8).tobytes()
    )


def test_reads_good_file_raw_and_gz(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a-idx3-ubyte").write_bytes(_idx_bytes(arr))
    with gzip.open(tmp_path / "b-idx3-ubyte.gz", "wb") as fh:
        fh.write(_idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "b-idx3-ubyte.gz"), arr)


def test_truncated_file_names_the_file(tmp_path):
    data = _idx_bytes(np.zeros((5, 4, 4), dtype=np.uint8))
    path = tmp_path / "imgs-idx3-ubyte"
    path.write_bytes(data[:-7])
    with pytest.raises(IDXError, match="imgs-idx3-ubyte.*truncated"):
        read_idx(path)


def test_truncated_gzip_stream_names_the_file(tmp_path):
    path = tmp_path / "imgs-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.zeros((50, 8, 8), dtype=np.uint8)))[:40])
    with pytest.raises(IDXError, match="imgs-idx3-ubyte.gz"):
        read_idx(path)


def test_wrong_magic_names_the_file(tmp_path):
    path = tmp_path / "page.html"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(IDXError, match="page.html.*magic"):
        read_idx(path)


def test_missing_dataset_says_which_package(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist.*--data-dir"):
        load_fashion_mnist(tmp_path)


def test_real_fashion_mnist_shapes(fmnist):
    assert len(fmnist.train) == 60000 and len(fmnist.test) == 10000
    x = fmnist.train.load([0, 1])
    assert x.shape == (2, 1, 32, 32) and x.dtype == np.uint8
    # 28×28 padded by 2: the border is empty
    assert x[:, :, :2].max() == 0 and x[:, :, :, -2:].max() == 0
    assert set(np.unique(fmnist.test.labels)) == set(range(10))
