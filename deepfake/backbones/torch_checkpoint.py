"""Read a PyTorch tensor checkpoint (``torch.save``, legacy serialisation) without PyTorch.

A ``.pth`` file is a pickle, and unpickling can run arbitrary code. This reader admits only the
few globals a plain tensor checkpoint needs (an ``OrderedDict`` of tensors rebuilt from typed
storages, as ``torch.load(weights_only=True)`` does) and refuses anything else with a clear
error, so a tampered file cannot execute anything. Tensors come back as NumPy arrays.

Legacy format (``torch.save(..., _use_new_zipfile_serialization=False)``): five consecutive
pickles — magic number, protocol version, system info, the object (storages as persistent ids),
the list of storage keys — followed by each storage's raw bytes, prefixed by its element count.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch.<Type>Storage -> NumPy dtype (little-endian, as torch writes on every platform it supports).
STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8",
    "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}


class CheckpointError(Exception):
    """The file is not a plain tensor checkpoint (or is damaged); the message says what was found."""


@dataclass
class _Storage:
    key: str
    dtype: str
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple

    def materialise(self) -> np.ndarray:
        flat = self.storage.data
        if flat is None:
            raise CheckpointError(f"storage {self.storage.key} has no data in the file")
        if not self.size:
            return np.array(flat[self.offset])
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size, strides=tuple(s * itemsize for s in self.stride), writeable=False)
        return np.array(view)  # a contiguous copy


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise CheckpointError("tensor without a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only an allow-list of globals; storages arrive as persistent ids."""

    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(
            f"refusing to load '{module}.{name}': a weights checkpoint holds only tensors, so this file "
            "may be tampered with or is not a plain state dict")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id {pid!r:.60}")
        _, storage_type, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError("storage views are not supported")
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError("storage of an unknown type")
        if key not in self.storages:
            self.storages[key] = _Storage(str(key), STORAGE_DTYPES[storage_type.name], int(numel))
        return self.storages[key]


class _DataOnly(pickle.Unpickler):
    """For the header pickles and the key list, which hold plain data only."""

    def find_class(self, module, name):
        raise CheckpointError(f"refusing to load '{module}.{name}' from the checkpoint header")


def _resolve(obj):
    if isinstance(obj, _TensorRef):
        return obj.materialise()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """``{name: array}`` of a legacy-format ``torch.save`` state dict, read without PyTorch or code execution."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"PK":
        raise CheckpointError(f"{path} uses the zip serialisation of torch >= 1.6; only the legacy format is read")
    f = io.BytesIO(raw)
    try:
        if _DataOnly(f).load() != MAGIC_NUMBER:
            raise CheckpointError(f"{path} is not a PyTorch checkpoint (wrong magic number)")
        if _DataOnly(f).load() != PROTOCOL_VERSION:
            raise CheckpointError(f"{path}: unsupported PyTorch checkpoint protocol")
        _DataOnly(f).load()  # sys info: endianness and type sizes
        storages: dict[str, _Storage] = {}
        obj = _RestrictedUnpickler(f, storages).load()
        keys = _DataOnly(f).load()
        for key in keys:
            storage = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            dtype = np.dtype(storage.dtype)
            buf = f.read(numel * dtype.itemsize)
            if len(buf) != numel * dtype.itemsize:
                raise CheckpointError(f"{path} is truncated (storage {key})")
            storage.data = np.frombuffer(buf, dtype=dtype).astype(dtype.newbyteorder("="))
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is damaged or not a tensor checkpoint ({type(exc).__name__})") from None
    state = _resolve(obj)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict")
    return state
