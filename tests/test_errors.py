"""Bad files and bad requests end in one sentence naming the problem, through the API and the
CLI (exit status 1, no traceback)."""

from __future__ import annotations

import struct

import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as T

import edgert
from edgert.cli import cli
from edgert.errors import EdgertError

import synth


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return synth.write_model(tmp_path_factory.mktemp("m") / "good.gguf", "llama", T.Q8_0, n_layer=1)


def _variant(tmp_path, good, name, mutate):
    data = bytearray(good.read_bytes())
    mutate(data)
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return p


def _first_tensor_dims_offset(data: bytes) -> int:
    """Byte offset of the first tensor's first dimension in the header (after the metadata)."""
    from edgert.formats.gguf import _Cursor

    cur = _Cursor(memoryview(bytes(data)), "x")
    cur.pos = 8
    cur.scalar("Q")
    n_kv = cur.scalar("Q")
    for _ in range(n_kv):
        cur.string()
        cur.value(cur.scalar("I"))
    cur.string()
    cur.scalar("I")
    return cur.pos


CASES = {
    "bad magic": (lambda d: d.__setitem__(slice(0, 4), b"GGML"), "not a GGUF file"),
    "version": (lambda d: d.__setitem__(slice(4, 8), struct.pack("<I", 1)), "version 1"),
    "truncated header": (lambda d: d.__delitem__(slice(2000, None)), "truncated"),
    "truncated data": (lambda d: d.__delitem__(slice(len(d) - 100, None)), "truncated"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_file_api_and_cli(tmp_path, good, case):
    mutate, words = CASES[case]
    p = _variant(tmp_path, good, case.replace(" ", "_") + ".gguf", mutate)
    with pytest.raises(EdgertError, match=words):
        edgert.load(str(p))
    r = CliRunner().invoke(cli, ["run", str(p), "hi"])
    assert r.exit_code == 1
    assert words in r.output and "Traceback" not in r.output


def test_shape_disagreeing_with_metadata(tmp_path, good):
    def mutate(d):
        o = _first_tensor_dims_offset(d)
        (dim0,) = struct.unpack_from("<Q", d, o)
        struct.pack_into("<Q", d, o, dim0 * 2)  # a wider row than the metadata says
    with pytest.raises(EdgertError, match="shape|truncated|corrupt"):
        edgert.load(str(_variant(tmp_path, good, "shape.gguf", mutate)))


def test_unsupported_arch(tmp_path):
    p = synth.write_model(tmp_path / "gemma.gguf", "gemma", T.Q8_0, n_layer=1)
    with pytest.raises(EdgertError, match="'gemma' model; edgert runs llama"):
        edgert.load(str(p))


def test_unsupported_quant_type(tmp_path):
    import gguf
    import numpy as np

    p = tmp_path / "iq.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 84), np.uint8), raw_dtype=T.Q2_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    from edgert.formats.gguf import read_gguf
    from edgert.models.decoder import _matrix

    with pytest.raises(EdgertError, match="Q2_K, which edgert's CPU kernels do not run"):
        _matrix(read_gguf(p), "token_embd.weight")


def test_missing_file_and_unknown_name():
    r = CliRunner().invoke(cli, ["run", "/nonexistent/model.gguf", "hi"])
    assert r.exit_code == 1 and "no such file" in r.output
    r = CliRunner().invoke(cli, ["run", "no-such-model", "hi"])
    assert r.exit_code == 1 and "smollm2-135m" in r.output


def test_prompt_longer_than_context(tmp_path, good):
    m = edgert.load(str(good), n_ctx=16)
    with pytest.raises(EdgertError, match="context holds 16"):
        m.generate("the " * 40)


def test_bad_sampling_flags(tmp_path, good):
    r = CliRunner().invoke(cli, ["run", str(good), "hi", "--top-p", "0"])
    assert r.exit_code == 1 and "top_p" in r.output
