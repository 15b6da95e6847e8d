"""Read PyTorch checkpoints (`.pth`, `.pt`, `.tar`, `.safetensors`) into numpy arrays, without torch.

The reference solution's weights are PyTorch 0.4 checkpoints (`final.pth`, `NNN.pth`), and torch is an
optional dependency of several GB (the CUDA wheel): far too much to ask of a user who only imports weights
into Keras.
Both of torch's formats are a pickle plus raw storage bytes, so a restricted unpickler, which rebuilds only
tensors and plain containers and refuses every other global (never running a file's code), and numpy suffice:

- zip (torch >= 1.6): `<prefix>/data.pkl`, one `<prefix>/data/<key>` per storage, `<prefix>/byteorder`
  (absent: little-endian);
- legacy (torch < 1.6, or `_use_new_zipfile_serialization=False`): consecutive pickles (magic number,
  protocol version 1001, sys_info, the object, the storage keys), then each storage in that key order as its
  element count (int64) and its bytes, little-endian (see torch's `_legacy_save`, `_legacy_load` and
  `THPStorage_writeFileRaw`; torch 0.4 wrote the count in the machine's order: little-endian on x86).
"""

from __future__ import annotations

import builtins
import collections
import pickle
import struct
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hpa_tf.errors import ModelError

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")
STORAGE_IDS = ("storage", b"storage")
# torch.<Kind>Storage -> numpy type code, without byte order (BFloat16 is read as its raw 16 bits)
KINDS = {"Float": "f4", "Double": "f8", "Half": "f2", "BFloat16": "u2", "Long": "i8", "Int": "i4",
         "Short": "i2", "Char": "i1", "Byte": "u1", "Bool": "?", "Untyped": "u1"}


class CheckpointError(ModelError):
    """A checkpoint that is missing, damaged, not a checkpoint, or names a global the reader refuses."""


class _Storage(NamedTuple):
    key: str
    kind: str
    offset: int  # in elements: a legacy storage view starts inside its root storage


class _Tensor(NamedTuple):
    storage: _Storage
    offset: int
    size: tuple
    stride: tuple


def _rebuild_tensor(storage, offset, size, stride, *_):
    """torch._utils._rebuild_tensor(_v2): a tensor to materialise once the storages are read."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor without a storage")
    return _Tensor(storage, offset, tuple(size), tuple(stride))


def _numpy_scalar(dtype, data):
    """numpy's scalar reconstructor, limited to numeric bytes (e.g. a numpy.float64 best_score)."""
    data = data.encode("latin1") if isinstance(data, str) else data
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("a numpy scalar without a dtype and bytes")
    return np.frombuffer(data, dtype=dtype)[0]


ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): lambda data, *_: data,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),  # bytes in protocol 2
    **{("builtins", name): getattr(builtins, name) for name in ("set", "frozenset", "bytes", "complex")},
}


class _Unpickler(pickle.Unpickler):
    """An unpickler that builds only ALLOWED globals, and storages as lazy references recorded in `found`."""

    def __init__(self, file, path: Path, found: dict | None = None):
        super().__init__(file, encoding="latin1")
        self.path, self.found = path, found

    def find_class(self, module, name):
        if module in ("torch", "torch.storage") and name.endswith("Storage") and name[:-7] in KINDS:
            return name[:-7]
        if (module, name) in ALLOWED:
            return ALLOWED[module, name]
        raise CheckpointError(f"{self.path}: refused to load the global {module}.{name}: only tensors and "
                              "plain containers are read from a checkpoint (is it a whole pickled model?)")

    def persistent_load(self, pid):
        if self.found is None or not isinstance(pid, tuple) or len(pid) < 5 or pid[0] not in STORAGE_IDS:
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]}")
        kind, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) > 5 else None
        if kind not in KINDS or int(numel) < 0:
            raise pickle.UnpicklingError(f"unknown storage type {kind!r} or size {numel!r}")
        self.found.setdefault(str(key), (kind, int(numel)))
        return _Storage(str(key), kind, int(view[1]) if view else 0)


def _read_zip(path: Path) -> tuple[object, dict[str, np.ndarray]]:
    """The object and the storages (1-d arrays by key) of a checkpoint in torch's zip format."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [name for name in names if name.rsplit("/", 1)[-1] == "data.pkl"]
        if not pickles:
            raise CheckpointError(f"{path}: a zip archive without data.pkl, not a PyTorch checkpoint")
        prefix = min(pickles, key=len)[: -len("data.pkl")]
        order = ">" if prefix + "byteorder" in names and archive.read(prefix + "byteorder") == b"big" else "<"
        found = {}
        obj = _Unpickler(archive.open(prefix + "data.pkl"), path, found).load()
        raw = {key: (archive.read(f"{prefix}data/{key}"), kind) for key, (kind, _) in found.items()}
    return obj, {key: np.frombuffer(data, order + KINDS[kind]) for key, (data, kind) in raw.items()}


def _read_legacy(path: Path) -> tuple[object, dict[str, np.ndarray]]:
    """The object and the storages (1-d arrays by key) of a checkpoint in torch's legacy format."""
    with open(path, "rb") as file:
        try:
            magic = _Unpickler(file, path).load()
        except (CheckpointError, OSError):
            raise
        except Exception:
            magic = None
        if type(magic) is not int or magic != MAGIC_NUMBER:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither torch's zip nor legacy format)")
        if (version := _Unpickler(file, path).load()) != PROTOCOL_VERSION:
            raise CheckpointError(f"{path}: unsupported legacy checkpoint protocol version {version}")
        _Unpickler(file, path).load()  # sys_info: storages are little-endian whatever it says
        found = {}
        obj = _Unpickler(file, path, found).load()
        storages, end = {}, path.stat().st_size
        for key in _Unpickler(file, path).load():
            kind, numel = found[key]
            dtype = np.dtype("<" + KINDS[kind])
            if file.tell() + 8 + numel * dtype.itemsize > end:
                raise CheckpointError(f"{path}: truncated: the file ends inside storage {key}")
            if struct.unpack("<q", file.read(8))[0] != numel:
                raise CheckpointError(f"{path}: damaged: storage {key} has the wrong element count")
            storages[key] = np.frombuffer(file.read(numel * dtype.itemsize), dtype)
    return obj, storages


def _to_array(tensor: _Tensor, storages: dict[str, np.ndarray], path: Path) -> np.ndarray:
    """A contiguous, independent, native-order copy of a tensor: its offset, size and stride applied."""
    buffer, size, stride = storages[tensor.storage.key], tensor.size, tensor.stride
    start = tensor.storage.offset + tensor.offset
    if len(size) != len(stride) or min(size, default=0) < 0:
        raise CheckpointError(f"{path}: damaged: a tensor with size {size} and stride {stride}")
    if 0 in size:
        array = np.zeros(size, buffer.dtype)
    else:
        last = start + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if start < 0 or min(stride, default=0) < 0 or last >= buffer.size:
            raise CheckpointError(f"{path}: damaged: a tensor reaches outside its storage")
        steps = [s * buffer.itemsize for s in stride]
        array = np.lib.stride_tricks.as_strided(buffer[start:], size, steps, writeable=False)
    array = np.array(array, dtype=buffer.dtype.newbyteorder("="), order="C")
    if tensor.storage.kind == "BFloat16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array


def read_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """The state dict's tensors of a checkpoint file, by key, and its other top-level plain values."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.numpy import load_file

            tensors, info = load_file(path), {}
        else:
            with open(path, "rb") as file:
                is_zip = file.read(4) == b"PK\x03\x04"
            obj, storages = _read_zip(path) if is_zip else _read_legacy(path)
            if not isinstance(obj, dict):
                raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
            key = next((key for key in STATE_DICT_KEYS if isinstance(obj.get(key), dict)), None)
            state = obj[key] if key else obj
            tensors = {str(k): _to_array(v, storages, path) for k, v in state.items()
                       if isinstance(v, _Tensor)}
            plain = (bool, int, float, str, np.generic, type(None))
            info = {str(k): v.item() if isinstance(v, np.generic) else v
                    for k, v in obj.items() if k != key and isinstance(v, plain)}
    except (CheckpointError, PermissionError):
        raise
    except Exception as error:
        message = f"{path}: truncated or damaged checkpoint ({type(error).__name__}: {error})"
        raise CheckpointError(message) from error
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors, info


def read_state_dict(path) -> dict[str, np.ndarray]:
    """The state dict's tensors of a checkpoint file (`.pth` of any torch version, `.safetensors`), by key."""
    return read_checkpoint(path)[0]
