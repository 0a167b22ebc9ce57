"""The IDX file format of MNIST and Fashion-MNIST (LeCun et al., "THE MNIST DATABASE").

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim``
big-endian uint32 sizes, then the values in C order. MNIST uses type 0x08
(unsigned byte): images are ``idx3`` (N, 28, 28), labels ``idx1`` (N,). Files may be
gzipped; we detect that from the gzip magic bytes, not the file name.

Numpy parses the few header bytes fine; we write this ourselves because torchvision's
reader is private API and does not check the file size against the header.
"""
from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from bench.errors import BenchError
from bench.io import sha256_bytes

_GZIP_MAGIC = b"\x1f\x8b"
UBYTE = 0x08

# The four files of a standard MNIST-style folder: split -> (images, labels).
IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx_bytes(path: Path) -> bytes:
    """Raw (decompressed) bytes of an IDX file, gzipped or not."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BenchError(f"cannot read IDX file {path}: {exc.strerror or exc}") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise BenchError(f"IDX file {path} is not a valid gzip file ({exc}); re-download it") from None
    return raw


def parse_idx(data: bytes, path: Path | str, ndim: int | None = None) -> np.ndarray:
    """Parse IDX bytes into a uint8 array, checking magic number and size.

    ``ndim`` pins the expected number of dimensions (3 for images, 1 for labels).
    """
    if len(data) < 4:
        raise BenchError(f"IDX file {path} is too short ({len(data)} bytes) to hold a header")
    zero, dtype_code, nd = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != UBYTE or nd == 0 or (ndim is not None and nd != ndim):
        want = f"0x000008{ndim:02x}" if ndim is not None else "0x000008<ndim>"
        raise BenchError(
            f"IDX file {path} has bad magic number 0x{int.from_bytes(data[:4], 'big'):08x} "
            f"(expected {want}, unsigned-byte data); is it the right file?"
        )
    header = 4 + 4 * nd
    if len(data) < header:
        raise BenchError(f"IDX file {path} is truncated inside its header ({len(data)} bytes)")
    dims = struct.unpack(f">{nd}I", data[4:header])
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise BenchError(
            f"IDX file {path} has {len(data)} bytes but its header {dims} needs {expected}; "
            "the file is truncated or corrupted, re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write a uint8 array as an IDX file (used by tests and to export data)."""
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, UBYTE, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    blob = header + arr.tobytes()
    # mtime=0 keeps the gzip bytes (and so their checksum) reproducible.
    path.write_bytes(gzip.compress(blob, mtime=0) if compress else blob)


def find_idx_file(root: Path, stem: str) -> Path:
    """``root/stem`` or ``root/stem.gz``; the uncompressed file wins when both exist."""
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise BenchError(f"{root} has no {stem} or {stem}.gz; put the four standard IDX files there")


def load_idx_split(
    root: Path, split: str, image_shape: tuple[int, int] = (28, 28), num_classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    """Images uint8 (N, 1, H, W), labels int64 (N,), and {path: sha256} of the two files."""
    img_stem, lbl_stem = IDX_FILES[split]
    img_path, lbl_path = find_idx_file(root, img_stem), find_idx_file(root, lbl_stem)
    img_raw, lbl_raw = read_idx_bytes(img_path), read_idx_bytes(lbl_path)
    images = parse_idx(img_raw, img_path, ndim=3)  # (N, H, W)
    labels = parse_idx(lbl_raw, lbl_path, ndim=1)  # (N,)
    if tuple(images.shape[1:]) != image_shape:
        raise BenchError(f"IDX file {img_path} holds {images.shape[1:]} images, expected {image_shape}")
    if len(images) != len(labels):
        raise BenchError(f"{img_path} has {len(images)} images but {lbl_path} has {len(labels)} labels")
    if labels.size and int(labels.max()) >= num_classes:
        raise BenchError(f"IDX file {lbl_path} has label {int(labels.max())}, expected 0..{num_classes - 1}")
    x = torch.from_numpy(images.copy()).unsqueeze(1)  # (N, 1, H, W) uint8
    y = torch.from_numpy(labels.astype(np.int64))  # (N,)
    # Checksums of the decompressed content: the same whether a file is gzipped or not.
    sums = {str(img_path): sha256_bytes(img_raw), str(lbl_path): sha256_bytes(lbl_raw)}
    return x, y, sums
