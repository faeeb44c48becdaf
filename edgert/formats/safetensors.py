"""safetensors reading into NumPy, memory-mapped: a header of JSON, then raw little-endian bytes.

The `safetensors` package's NumPy loader copies every tensor into memory; a checkpoint is
read here as views of one read-only map instead (bfloat16 is widened to float32 on access,
as NumPy has no bfloat16). Sharded checkpoints list their files in `*.index.json`.
"""

from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

import numpy as np

from ..errors import ModelFileError

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32,
           "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


class SafetensorsFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise ModelFileError(f"{self.path} cannot be read ({e}); check the checkpoint files.") from None
        if len(self._mm) < 8:
            raise ModelFileError(f"{self.path} is too short to be a safetensors file.")
        (n,) = struct.unpack_from("<Q", self._mm, 0)
        if n > len(self._mm) - 8:
            raise ModelFileError(f"{self.path} is truncated: its header claims {n} bytes; download it again.")
        try:
            header = json.loads(bytes(self._mm[8 : 8 + n]))
        except ValueError:
            raise ModelFileError(f"{self.path} has a corrupt header; download it again.") from None
        header.pop("__metadata__", None)
        self._base = 8 + n
        self.tensors: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            start, end = info["data_offsets"]
            if self._base + end > len(self._mm):
                raise ModelFileError(f"{self.path} is truncated: tensor {name!r} runs past the end of the file.")
            self.tensors[name] = (info["dtype"], tuple(info["shape"]), start, end)

    def get(self, name: str) -> np.ndarray:
        dtype, shape, start, end = self.tensors[name]
        if dtype == "BF16":
            raw = np.frombuffer(self._mm, dtype=np.uint16, count=(end - start) // 2, offset=self._base + start)
            return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
        if dtype not in _DTYPES:
            raise ModelFileError(f"{self.path}: tensor {name!r} has dtype {dtype}, which edgert cannot read.")
        dt = np.dtype(_DTYPES[dtype])
        return np.frombuffer(self._mm, dtype=dt, count=(end - start) // dt.itemsize,
                             offset=self._base + start).reshape(shape)


class Checkpoint:
    """All tensors of a (possibly sharded) safetensors checkpoint folder, by name."""

    def __init__(self, folder: Path):
        index = folder / "model.safetensors.index.json"
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in folder.glob("*.safetensors"))
        if not files:
            raise ModelFileError(f"{folder} has no *.safetensors files; edgert converts safetensors checkpoints.")
        self.where: dict[str, SafetensorsFile] = {}
        for name in files:
            f = SafetensorsFile(folder / name)
            for t in f.tensors:
                self.where[t] = f

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> np.ndarray:
        if name not in self.where:
            raise ModelFileError(f"the checkpoint has no tensor {name!r}; it is incomplete or another architecture.")
        return self.where[name].get(name)
