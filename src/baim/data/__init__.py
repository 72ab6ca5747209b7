"""Data sets, tasks and the federation layout."""

from .base import DataError, DataSet, Task, to_float, to_uint8
from .celeba import load_celeba
from .fashion_mnist import load_fashion_mnist
from .idx import IDXError, read_idx
from .image_folder import load_image_folder


def load_dataset(name: str, data_dir: str | None = None, **kwargs) -> DataSet:
    """Load a data set by name: ``fashion-mnist`` (default), ``celeba`` or ``image-folder``."""
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    if data_dir is None:
        raise DataError(f"data set {name!r} needs --data-dir")
    if name == "celeba":
        return load_celeba(data_dir)
    if name == "image-folder":
        return load_image_folder(data_dir, **kwargs)
    raise DataError(f"unknown data set {name!r}; choose fashion-mnist, celeba or image-folder")


__all__ = ["DataError", "DataSet", "IDXError", "Task", "load_dataset", "read_idx", "to_float", "to_uint8"]
