"""A streaming, validating safetensors reader (one tensor at a time, no memory map kept).

Reads a checkpoint directory with ``model.safetensors`` or ``model.safetensors.index.json`` (sharded).
The header of every shard is parsed and checked up front (JSON, dtypes, offsets inside the file), so a
corrupt or truncated shard fails before anything is written, with the file's name in the message.
Tensors are read with ``readinto`` into a fresh array: resident memory holds one tensor, not the file.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ml_dtypes
import numpy as np

from omni_jax.errors import InputFileError

DTYPES = {
    "BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(InputFileError):
    """A checkpoint that cannot be read: the message names the file or tensor and the problem."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    file: Path
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: Path) -> dict[str, TensorInfo]:
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise CheckpointError(f"{path}: corrupt safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{path}: corrupt safetensors file (header length {n} exceeds the file)")
            header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors file (header is not valid JSON)") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors file (header is not a JSON object)")
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(DTYPES[meta["dtype"]])
            shape = tuple(int(s) for s in meta["shape"])
            start, end = (int(o) for o in meta["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt safetensors header entry for tensor {name!r}") from None
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - start != nbytes or base + end > size:
            raise CheckpointError(
                f"{path}: corrupt or truncated safetensors file (tensor {name!r} needs bytes {start}..{end} "
                f"of a {size - base}-byte data section)")
        out[name] = TensorInfo(name, path, dtype, shape, base + start, nbytes)
    return out


def read_tensor(info: TensorInfo) -> np.ndarray:
    out = np.empty(info.shape, info.dtype)
    try:
        with open(info.file, "rb") as f:
            f.seek(info.offset)
            got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
    except OSError as e:
        raise CheckpointError(f"{info.file}: cannot read tensor {info.name!r} ({e.strerror or e})") from None
    if got != info.nbytes:
        raise CheckpointError(f"{info.file}: truncated while reading tensor {info.name!r}")
    return out


def read_rows(info: TensorInfo, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of the tensor's first dimension: only those bytes are read."""
    if not info.shape:
        return read_tensor(info)
    row = int(np.prod(info.shape[1:], dtype=np.int64)) * info.dtype.itemsize
    out = np.empty((stop - start,) + info.shape[1:], info.dtype)
    try:
        with open(info.file, "rb") as f:
            f.seek(info.offset + start * row)
            got = f.readinto(memoryview(out.reshape(-1).view(np.uint8)))
    except OSError as e:
        raise CheckpointError(f"{info.file}: cannot read tensor {info.name!r} ({e.strerror or e})") from None
    if got != (stop - start) * row:
        raise CheckpointError(f"{info.file}: truncated while reading tensor {info.name!r}")
    return out


class SafetensorsCheckpoint:
    """All tensors of a HF checkpoint directory, indexed by name; read lazily, one at a time."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index = self.directory / INDEX_NAME
        single = self.directory / SINGLE_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
                raise CheckpointError(f"{index}: not a valid safetensors index (no weight_map)") from None
            files = sorted(set(weight_map.values()))
        elif single.is_file():
            weight_map, files = None, [SINGLE_NAME]
        else:
            shards = sorted(p.name for p in self.directory.glob("*.safetensors"))
            if not shards:
                raise CheckpointError(f"{self.directory}: no model.safetensors or {INDEX_NAME} found")
            weight_map, files = None, shards
        self.tensors: dict[str, TensorInfo] = {}
        for name in files:
            path = self.directory / name
            if not path.is_file():
                raise CheckpointError(f"{path}: shard listed in {INDEX_NAME} is missing")
            for tname, info in read_header(path).items():
                if tname in self.tensors:
                    raise CheckpointError(f"{path}: tensor {tname!r} also appears in {self.tensors[tname].file.name}")
                self.tensors[tname] = info
        if weight_map is not None:
            for tname, fname in weight_map.items():
                info = self.tensors.get(tname)
                if info is None or info.file.name != fname:
                    raise CheckpointError(f"{self.directory / fname}: tensor {tname!r} listed in the index is not there")

    def names(self) -> list[str]:
        return list(self.tensors)

    def read(self, name: str) -> np.ndarray:
        try:
            info = self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.directory}: missing tensor {name!r}") from None
        return read_tensor(info)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        try:
            info = self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.directory}: missing tensor {name!r}") from None
        return read_rows(info, start, stop)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in self.tensors:
            yield name, self.read(name)

    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self.tensors.values())


def is_hf_checkpoint(directory: str | Path) -> bool:
    d = Path(directory)
    return (d / INDEX_NAME).is_file() or (d / SINGLE_NAME).is_file() or any(d.glob("*.safetensors"))


def file_size(path: Path) -> int:
    return os.stat(path).st_size


DTYPE_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...], np.dtype]], produce) -> None:
    """Write a safetensors file whose tensors are produced one at a time by ``produce(name) -> array``.

    ``tensors`` lists (name, shape, dtype) in file order; memory holds one tensor at a time.
    """
    header, offset = {}, 0
    for name, shape, dtype in tensors:
        nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": DTYPE_NAMES[np.dtype(dtype)], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dtype in tensors:
            arr = np.ascontiguousarray(produce(name), dtype=dtype)
            if tuple(arr.shape) != tuple(shape):
                raise ValueError(f"{path}: tensor {name!r} produced with shape {arr.shape}, declared {shape}")
            f.write(memoryview(arr.reshape(-1).view(np.uint8)))


def write_sharded(directory: Path, tensors: list[tuple[str, tuple[int, ...], np.dtype]], produce,
                  max_shard_bytes: int = 2 << 30) -> list[str]:
    """Write ``model-0000i-of-0000n.safetensors`` shards plus ``model.safetensors.index.json``."""
    shards, current, size = [], [], 0
    for t in tensors:
        nbytes = int(np.prod(t[1], dtype=np.int64)) * np.dtype(t[2]).itemsize
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += nbytes
    if current:
        shards.append(current)
    names, weight_map, total = [], {}, 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(directory / fname, shard, produce)
        names.append(fname)
        for name, shape, dtype in shard:
            weight_map[name] = fname
            total += int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2))
    return names
