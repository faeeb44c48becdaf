"""GGUF reading: metadata as plain Python values, tensors as zero-copy views of a memory map.

The `gguf` package supplies the format's facts (magic, value types, quant block sizes).
Its `GGUFReader` parses every metadata array element as its own NumPy object, which takes
about 6 s on the default model's 49k-token vocabulary here; the header is parsed below with
`struct` instead (about 0.1 s), and tensor bytes stay in one read-only `np.memmap`.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFileError, UnsupportedError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# GGUFValueType -> struct format for scalars (the gguf package's enum, values fixed by the spec)
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32,
          6: np.float32, 7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: int
    shape: tuple[int, ...]  # NumPy order: the GGUF dims reversed, rows first
    offset: int             # absolute byte offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.ggml_type)

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def ggml_type_name(t: int) -> str:
    from gguf import GGMLQuantizationType

    try:
        return GGMLQuantizationType(t).name
    except ValueError:
        return f"type {t}"


class _Cursor:
    """Little-endian reads over a bytes-like object; running past the end is a truncated file."""

    def __init__(self, buf, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def _need(self, n: int) -> None:
        if self.pos + n > len(self.buf):
            raise ModelFileError(
                f"{self.path} is truncated: its header ends at byte {len(self.buf)} but needs "
                f"{self.pos + n}; download the file again."
            )

    def scalar(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        self._need(size)
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return v

    def string(self) -> str:
        n = self.scalar("Q")
        self._need(n)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int):
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.scalar("I"), self.scalar("Q")
            if etype in _NUMPY:
                dt = np.dtype(_NUMPY[etype]).newbyteorder("<")
                self._need(count * dt.itemsize)
                arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).copy()
                self.pos += count * dt.itemsize
                return arr.tolist()
            if etype == _STRING:
                return self._strings(count)
            return [self.value(etype) for _ in range(count)]
        raise ModelFileError(f"{self.path} has a metadata value of unknown type {vtype}; the file is corrupt.")

    def _strings(self, count: int) -> list[str]:
        out, buf, pos, end = [], self.buf, self.pos, len(self.buf)
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            if pos + 8 > end:
                self.pos = pos
                self._need(8)
            (n,) = unpack(buf, pos)
            pos += 8
            if pos + n > end:
                self.pos = pos
                self._need(n)
            out.append(str(buf[pos : pos + n], "utf-8", "replace"))
            pos += n
        self.pos = pos
        return out


class GGUFFile:
    """An opened GGUF file: `meta` (key -> value), `tensors` (name -> TensorInfo), raw bytes mapped."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path} does not exist; give a .gguf path or a catalogue name.")
        size = self.path.stat().st_size
        if size < 24:
            raise ModelFileError(f"{self.path} is {size} bytes, too short to be a GGUF file.")
        with open(self.path, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.file_size = size
        cur = _Cursor(self._mm, self.path)
        magic = bytes(self._mm[:4])
        if magic != GGUF_MAGIC:
            raise ModelFileError(
                f"{self.path} is not a GGUF file (magic {magic!r}, expected b'GGUF'); "
                "convert it with `edgert convert` or pick a .gguf file."
            )
        cur.pos = 4
        self.version = cur.scalar("I")
        if self.version not in SUPPORTED_VERSIONS:
            hint = " (it may be big-endian)" if self.version > 0xFFFF else ""
            raise UnsupportedError(
                f"{self.path} is GGUF version {self.version}{hint}; edgert reads versions 2 and 3, "
                "re-convert it with a current llama.cpp or `edgert convert`."
            )
        n_tensors, n_kv = cur.scalar("Q"), cur.scalar("Q")
        if n_tensors > 1_000_000 or n_kv > 1_000_000:
            raise ModelFileError(f"{self.path} declares {n_tensors} tensors and {n_kv} keys; the header is corrupt.")
        self.meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            self.meta[key] = cur.value(cur.scalar("I"))
        infos = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.scalar("I")
            if n_dims > 8:
                raise ModelFileError(f"{self.path}: tensor {name!r} has {n_dims} dimensions; the file is corrupt.")
            dims = [cur.scalar("Q") for _ in range(n_dims)]
            infos.append((name, dims, cur.scalar("I"), cur.scalar("Q")))
        align = int(self.meta.get("general.alignment", DEFAULT_ALIGNMENT))
        if align <= 0 or align & (align - 1):
            raise ModelFileError(f"{self.path} has alignment {align}, which is not a power of two.")
        self.data_offset = -(-cur.pos // align) * align
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, ttype, rel in infos:
            self.tensors[name] = self._tensor_info(name, dims, ttype, rel)

    def _tensor_info(self, name: str, dims: list[int], ttype: int, rel: int) -> TensorInfo:
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise UnsupportedError(
                f"{self.path}: tensor {name!r} has GGML type {ttype}, which the gguf package does not know; "
                "upgrade `gguf` or re-quantize the model."
            ) from None
        shape = tuple(int(d) for d in reversed(dims)) or (1,)
        if shape[-1] % block:
            raise ModelFileError(
                f"{self.path}: tensor {name!r} has rows of {shape[-1]} values, not a multiple of the "
                f"{ggml_type_name(ttype)} block size {block}; the file is corrupt."
            )
        n = int(np.prod(shape, dtype=np.int64))
        nbytes = n // block * type_size
        offset = self.data_offset + rel
        if offset + nbytes > self.file_size:
            raise ModelFileError(
                f"{self.path} is truncated or corrupt: tensor {name!r} needs bytes {offset}..{offset + nbytes} "
                f"but the file has {self.file_size}; download the file again."
            )
        return TensorInfo(name, ttype, shape, offset, nbytes)

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as a read-only uint8 view shaped (rows, row_bytes); no copy."""
        info = self.tensors[name]
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(info.ggml_type)]
        row_bytes = info.shape[-1] // block * type_size
        rows = info.nbytes // row_bytes
        arr = np.frombuffer(self._mm, dtype=np.uint8, count=info.nbytes, offset=info.offset)
        return arr.reshape(rows, row_bytes)

    def array(self, name: str) -> np.ndarray:
        """A float tensor (F32/F16/BF16-free path) as its NumPy dtype in its shape; zero-copy."""
        info = self.tensors[name]
        dtypes = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64,
                  28: np.float64}
        if info.ggml_type not in dtypes:
            raise UnsupportedError(f"tensor {name!r} is {info.type_name}, not a plain array type.")
        dt = np.dtype(dtypes[info.ggml_type])
        arr = np.frombuffer(self._mm, dtype=dt, count=info.nbytes // dt.itemsize, offset=info.offset)
        return arr.reshape(info.shape)

    def release(self, name: str, start: int = 0, stop: int | None = None) -> None:
        """Drop bytes start..stop of a tensor from this process's memory (after they were copied
        elsewhere, e.g. repacked); reading them again faults them back in from the file."""
        info = self.tensors[name]
        stop = info.nbytes if stop is None else stop
        page = mmap.PAGESIZE
        start = -(-(info.offset + start) // page) * page
        end = (info.offset + stop) // page * page
        if end > start and hasattr(mmap, "MADV_DONTNEED"):
            self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def close(self) -> None:
        try:
            self._mm.close()
        except BufferError:  # views still alive; the map closes when they go
            pass


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    return GGUFFile(path)
