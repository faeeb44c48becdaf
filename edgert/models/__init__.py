"""Decoder families, one small file each; `family_for` picks one from GGUF metadata."""

from __future__ import annotations

from ..errors import UnsupportedError
from . import llama, qwen2, qwen3
from .config import ModelConfig
from .family import Family

FAMILIES: tuple[Family, ...] = (llama.FAMILY, qwen2.FAMILY, qwen3.FAMILY)
KNOWN_ARCHS = tuple(a for f in FAMILIES for a in f.archs)


def family_for(arch: str, where: str = "the model") -> Family:
    for f in FAMILIES:
        if arch in f.archs:
            return f
    raise UnsupportedError(
        f"{where} is a {arch!r} model; edgert runs {', '.join(KNOWN_ARCHS)}, so pick one of those."
    )


__all__ = ["FAMILIES", "KNOWN_ARCHS", "Family", "ModelConfig", "family_for"]
