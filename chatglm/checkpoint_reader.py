"""Read checkpoint tensors one at a time, straight from the files, without a memory map.

Streaming a 13 GB checkpoint into a 4 GB quantized model must not make the checkpoint itself resident.
Pages of a memory-mapped file count in the process's resident set once touched, so reading a mapped
shard from end to end makes the whole shard resident until it is closed (`safe_open`, and `torch.load`
with `mmap=True`, both work that way). Here a tensor is only described by where its bytes lie (file,
offset, dtype, shape); plain file reads then fill the destination tensor directly, in bounded chunks.

Formats: safetensors (a JSON header, then raw bytes) and torch's zip `.bin` (a pickle that names storages
stored uncompressed in the archive). The pickle is read with a whitelist of what a weights file holds,
like `torch.load(weights_only=True)`: no code from the file runs.
"""

import collections
import json
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass

import torch

# Largest conversion buffer: reads in another dtype go through a buffer of at most this many bytes.
CHUNK_BYTES = 4 << 20

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
# The storage classes a torch pickle names, by the dtype they stand for.
TORCH_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
WEIGHTS_NAMES = ("model.safetensors", "pytorch_model.bin")  # in order of preference


@dataclass(frozen=True)
class StoredTensor:
    """A contiguous tensor inside a checkpoint file: `shape` elements of `dtype` from byte `offset`."""

    path: str
    offset: int
    dtype: torch.dtype
    shape: tuple

    @property
    def row_elements(self):
        """Elements per index of the first dimension."""
        return int(torch.Size(self.shape[1:]).numel())

    def read(self, dtype=None):
        """The whole tensor, converted to `dtype` (default: as stored)."""
        if not self.shape:
            return self.read_rows(0, 1, dtype).reshape(())
        return self.read_rows(0, self.shape[0], dtype)

    def read_rows(self, start, stop, dtype=None):
        """Rows [start, stop) of the first dimension, converted to `dtype` (default: as stored)."""
        shape = (stop - start, *self.shape[1:])
        out = torch.empty(shape, dtype=dtype or self.dtype)
        self._read_into(out.view(-1), start * self.row_elements)
        return out

    def _read_into(self, out, first):
        """Fill the flat tensor `out` with the elements from index `first` on."""
        item = self.dtype.itemsize
        with open(self.path, "rb", buffering=0) as file:
            file.seek(self.offset + first * item)
            if out.dtype == self.dtype:
                _read_exactly(file, out)
                return
            # Another dtype: read through a bounded buffer and let copy_ convert.
            step = max(1, CHUNK_BYTES // item)
            buffer = torch.empty(min(step, out.numel()), dtype=self.dtype)
            for begin in range(0, out.numel(), step):
                part = buffer[: min(step, out.numel() - begin)]
                _read_exactly(file, part)
                out[begin : begin + part.numel()].copy_(part)


def _read_exactly(file, tensor):
    view = memoryview(tensor.view(torch.uint8).numpy()).cast("B")
    done = 0
    while done < len(view):
        count = file.readinto(view[done:])
        if not count:
            raise ValueError(f"{file.name} ends early: the checkpoint file is truncated")
        done += count


def weight_files(folder):
    """The weight files of a checkpoint folder, in the order their index lists them (safetensors preferred)."""
    for name in WEIGHTS_NAMES:
        index = os.path.join(folder, name + ".index.json")
        if os.path.isfile(index):
            with open(index) as file:
                weight_map = json.load(file)["weight_map"]
            return [os.path.join(folder, shard) for shard in dict.fromkeys(weight_map.values())]
        if os.path.isfile(os.path.join(folder, name)):
            return [os.path.join(folder, name)]
    raise FileNotFoundError(
        f"{folder} holds no weights: expected model.safetensors or pytorch_model.bin (or a sharded "
        "*.index.json with its shards)"
    )


def stored_tensors(path):
    """{name: StoredTensor} of one weights file (.safetensors or torch .bin), in file order."""
    if path.endswith(".safetensors"):
        return _safetensors_index(path)
    if zipfile.is_zipfile(path):
        return _torch_zip_index(path)
    raise ValueError(f"{path} is neither safetensors nor a torch zip checkpoint (torch.save since torch 1.6); "
                     "re-save it with a current torch")


def _safetensors_index(path):
    with open(path, "rb") as file:
        (header_size,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(header_size))
    header.pop("__metadata__", None)
    data_start = 8 + header_size
    entries = sorted(header.items(), key=lambda item: item[1]["data_offsets"][0])
    return {
        name: StoredTensor(path, data_start + info["data_offsets"][0], SAFETENSORS_DTYPES[info["dtype"]],
                           tuple(info["shape"]))
        for name, info in entries
    }


def _torch_zip_index(path):
    with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
        pickle_name = next(name for name in archive.namelist() if name.endswith("/data.pkl"))
        prefix = pickle_name[: -len("data.pkl")] + "data/"
        storage_offsets = {}
        for info in archive.infolist():
            if info.filename.startswith(prefix):
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ValueError(f"{path}: compressed storages are not supported; re-save with torch.save")
                storage_offsets[info.filename[len(prefix) :]] = _member_data_offset(raw, info)
        with archive.open(pickle_name) as file:
            state = _WeightsUnpickler(file, path, storage_offsets).load()
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def _member_data_offset(raw, info):
    # The local file header: 30 fixed bytes, then the name and an extra field whose lengths it gives.
    raw.seek(info.header_offset)
    header = raw.read(30)
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_length + extra_length


class _WeightsUnpickler(pickle.Unpickler):
    """Turns a state-dict pickle into {name: StoredTensor}; refuses anything a weights file does not need."""

    def __init__(self, file, path, storage_offsets):
        super().__init__(file)
        self.path, self.storage_offsets = path, storage_offsets

    def find_class(self, module, name):
        if module == "torch" and name in TORCH_STORAGE_DTYPES:
            return TORCH_STORAGE_DTYPES[name]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self.rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return lambda data, requires_grad, backward_hooks: data
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{self.path}: {module}.{name} has no place in a weights file; not loading it")

    def persistent_load(self, saved_id):
        _, dtype, key, _location, _numel = saved_id  # ("storage", dtype, key, location, numel)
        return key, dtype

    def rebuild_tensor(self, storage, storage_offset, size, stride, *_):
        key, dtype = storage
        size = tuple(size)
        if tuple(stride) != torch.empty(size, device="meta").stride() and torch.Size(size).numel() > 1:
            raise ValueError(f"{self.path} holds a non-contiguous tensor; re-save the checkpoint with save_pretrained")
        return StoredTensor(self.path, self.storage_offsets[key] + storage_offset * dtype.itemsize, dtype, size)
