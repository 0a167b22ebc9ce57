"""The user's own data: a folder of images (``folder``) or an ``.npz`` of arrays (``npz``).

``folder`` reads PNG/JPEG files (Pillow). Its layout says what is what::

    root/cat/1.png, root/dog/2.png ...          labels from class subfolders (sorted names -> 0, 1, ...)
    root/1.png, root/2.png ...                  no labels
    root/train/..., root/test/...               either of the above, with the split given

``npz`` reads ``x`` (uint8 images ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``, C = 1 or 3),
optional ``y`` (integer labels), and optional ``x_test`` / ``y_test`` (the split given).

Without a given test split, bench makes one: a seeded permutation (``split_seed``) puts
``test_fraction`` of the examples in the test split; ``Dataset.indices`` records which. The decoded
uint8 arrays are cached under ``cache_dir()/datasets`` with a sha256 sidecar (``bench.io``), keyed
by the sha256 of the source files' content and the conversion options, so a changed file is a new
cache entry and a corrupted cache file is an error, never silently used or replaced.

Anything malformed (wrong dtype, mixed image sizes or channel counts, an empty folder, a file
that is not an image, labels out of range, an array whose header declares more data than the
file holds) is a one-line ``BenchError`` that names the file.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import Field

from bench.data import Dataset, DatasetOptions, register_dataset
from bench.errors import BenchError
from bench.io import read_verified, sha256_bytes, sidecar, write_with_sidecar
from bench.seeds import Seed

CONVERT_VERSION = "1"  # part of every cache key: bump when a conversion changes
DEFAULT_TEST_FRACTION = 0.2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
NATIVE_MODES = {"L": 1, "1": 1, "RGB": 3}  # Pillow modes whose channel count is unambiguous (1 = bilevel)
MAX_ARRAY_BYTES = 2**34  # 16 GiB: a larger declared array is refused before anything is allocated


class SplitOptions(DatasetOptions):
    """How bench makes a test split when the data do not come with one."""

    test_fraction: float | None = Field(None, gt=0, lt=1)  # share held out as test; None: 0.2 (error if a split is given)
    split_seed: Seed = 0  # seeds the permutation that picks the test examples


class FolderOptions(SplitOptions):
    root: str  # folder of images (see the module docstring for the layouts); relative to the working directory
    labels: Literal["auto", "subfolders", "none"] = "auto"  # auto: class subfolders if there are any, else none
    channels: Literal[1, 3] | None = None  # convert every image to L (1) or RGB (3); None: take them as they are


class NpzOptions(SplitOptions):
    path: str  # the .npz file; relative to the working directory
    layout: Literal["auto", "nchw", "nhwc"] = "auto"  # 4-D x: where the channels are; auto: the axis of size 1 or 3
    num_classes: int | None = Field(None, gt=0)  # None: largest label + 1; set it to check the labels' range


# ----------------------------------------------------------------------------- shared: cache and split


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz with fixed timestamps, so the same data give the same bytes.

    ``np.savez`` stamps the current time into the zip; identical bytes make the sidecar digest
    reproducible and let two processes that build the cache at once agree.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(arr, order="C"), allow_pickle=False)  # keeps 0-d arrays 0-d
    return buf.getvalue()


def read_npz(data: bytes, where: Path | str) -> dict[str, np.ndarray]:
    """The arrays of an .npz held in memory, refusing object arrays and headers that overstate the data.

    Each member's .npy header is read first: an array whose declared shape needs more bytes than
    the member holds (or more than ``MAX_ARRAY_BYTES``) is refused before numpy allocates it.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            out = {}
            for info in zf.infolist():
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, fortran, dtype = read_header(f)
                    name = info.filename.removesuffix(".npy")
                    if dtype.hasobject:
                        raise BenchError(f"{where}: array {name!r} holds Python objects (dtype {dtype}); save numeric arrays")
                    need, have = math.prod(shape) * dtype.itemsize, info.file_size - f.tell()
                    if need > MAX_ARRAY_BYTES:
                        raise BenchError(f"{where}: array {name!r} declares shape {shape} of {dtype} ({need} bytes), "
                                         f"more than bench loads ({MAX_ARRAY_BYTES} bytes)")
                    if need != have:
                        raise BenchError(f"{where}: array {name!r} declares shape {shape} of {dtype} ({need} bytes) but "
                                         f"holds {have} bytes; the file is truncated, corrupted or not written by numpy")
                with zf.open(info) as f:  # read_array parses the header again from the start
                    out[name] = np.lib.format.read_array(f, allow_pickle=False)
            return out
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise BenchError(f"{where}: not a readable .npz file ({type(e).__name__}: {e})") from None


def cached_arrays(cache: Path, key: str, build: Callable[[], dict[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays cached under ``key`` (sidecar-checked), building and caching them on first use."""
    path = cache / "datasets" / f"{key}.npz"
    if path.is_file() and sidecar(path).is_file():
        data, digest = read_verified(path)
        return read_npz(data, path), {"cache": str(path), "cache_sha256": digest, "cache_hit": True}
    arrays = build()
    data = npz_bytes(arrays)
    digest = write_with_sidecar(path, lambda f: f.write(data))
    return arrays, {"cache": str(path), "cache_sha256": digest, "cache_hit": False}


def cache_key(kind: str, source_sha256: str, options: dict[str, Any]) -> str:
    """``<kind>-<16 hex>`` from the source content and the options that change the conversion."""
    text = json.dumps({"v": CONVERT_VERSION, "source": source_sha256, **options}, sort_keys=True)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def make_split(n: int, options: SplitOptions, given: bool, where: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Positions (train, test) of a seeded split of n examples, or None when the source gives its split."""
    if given:
        if options.test_fraction is not None:
            raise BenchError(f"{where} comes with a test split: remove dataset.test_fraction (it is only for data without one)")
        return None
    fraction = options.test_fraction if options.test_fraction is not None else DEFAULT_TEST_FRACTION
    n_test = round(fraction * n)
    if not 1 <= n_test < n:
        raise BenchError(f"{where}: test_fraction {fraction} of {n} examples leaves no training or no test examples; "
                         "add examples or change dataset.test_fraction")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(options.split_seed))
    return perm[n_test:].sort().values, perm[:n_test].sort().values


def to_dataset(name: str, arrays: dict[str, np.ndarray], options: SplitOptions, where: str, meta: dict[str, Any]) -> Dataset:
    """Converted arrays -> a Dataset: ``x, y`` (a split to make) or ``train_x ... test_y`` (given), plus
    ``num_classes`` (0: no labels) and, from folders, ``classes`` (the class names)."""
    num_classes = int(arrays["num_classes"])
    if "classes" in arrays:
        meta = {**meta, "classes": [str(c) for c in arrays["classes"]]}
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items() if k not in ("num_classes", "classes")}
    split = make_split(len(tensors["x"]) if "x" in tensors else 0, options, "x" not in tensors, where)
    indices: dict[str, torch.Tensor] = {}
    if split is not None:
        train, test = split
        x, y = tensors.pop("x"), tensors.pop("y")
        tensors = {"train_x": x[train], "train_y": y[train], "test_x": x[test], "test_y": y[test]}
        indices = {"train": train, "test": test}
        meta = {**meta, "split": "made", "test_fraction": len(test) / len(x), "split_seed": options.split_seed}
    else:
        meta = {**meta, "split": "given"}
    return Dataset(name=name, kind="image", num_classes=num_classes, meta=meta, indices=indices, **tensors)


# ----------------------------------------------------------------------------- npz


def _nchw(x: np.ndarray, layout: str, where: str) -> np.ndarray:
    """uint8 images in any accepted layout -> (N, C, H, W)."""
    if x.dtype != np.uint8:
        raise BenchError(f"{where}: images must be uint8 (0..255), got {x.dtype}; convert with np.round(x * 255).astype(np.uint8)")
    if x.ndim == 3:
        return x[:, None]  # (N, H, W) -> (N, 1, H, W)
    if x.ndim != 4:
        raise BenchError(f"{where}: images must be (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {x.shape}")
    if layout == "auto":
        first, last = x.shape[1] in (1, 3), x.shape[3] in (1, 3)
        if first == last:
            raise BenchError(f"{where}: cannot tell where the channels are in shape {x.shape}; set dataset.layout: nchw or nhwc")
        layout = "nchw" if first else "nhwc"
    x = x if layout == "nchw" else x.transpose(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise BenchError(f"{where}: images must have 1 or 3 channels, got {x.shape[1]} (shape {x.shape}, layout {layout})")
    return np.ascontiguousarray(x)


def _labels(y: np.ndarray, n: int, where: str, key: str) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (n,):
        raise BenchError(f"{where}: {key} must be integer labels of shape ({n},), got {y.dtype} {y.shape}")
    if n and int(y.min()) < 0:
        raise BenchError(f"{where}: {key} holds a negative label ({int(y.min())}); labels are 0..K-1")
    if n and int(y.max()) > np.iinfo(np.int64).max:  # a uint64 label that int64 would wrap to a negative one
        raise BenchError(f"{where}: {key} holds label {int(y.max())}; labels are 0..K-1")
    return y.astype(np.int64)


def _convert_npz(raw: dict[str, np.ndarray], options: NpzOptions, where: str) -> dict[str, np.ndarray]:
    """x, y[, x_test, y_test] -> (N, C, H, W) uint8 and int64 labels, keyed as ``to_dataset`` reads them."""
    if "x" not in raw or set(raw) - {"x", "y", "x_test", "y_test"}:
        raise BenchError(f"{where}: holds arrays {sorted(raw)}; bench reads x, and optionally y, x_test, y_test")
    if "y_test" in raw and "x_test" not in raw:
        raise BenchError(f"{where}: has y_test but no x_test")
    if "x_test" in raw and ("y" in raw) != ("y_test" in raw):
        raise BenchError(f"{where}: label both splits or neither (it has {'y' if 'y' in raw else 'y_test'} only)")
    names = {"x": ("train_x", "train_y"), "x_test": ("test_x", "test_y")} if "x_test" in raw else {"x": ("x", "y")}
    out: dict[str, np.ndarray] = {}
    for xk, (xo, yo) in names.items():
        yk = "y" if xk == "x" else "y_test"
        out[xo] = _nchw(raw[xk], options.layout, f"{where}: {xk}")
        out[yo] = _labels(raw[yk], len(out[xo]), where, yk) if yk in raw else np.zeros(len(out[xo]), np.int64)
    if "x_test" in raw and out["train_x"].shape[1:] != out["test_x"].shape[1:]:
        raise BenchError(f"{where}: x images are {out['train_x'].shape[1:]} (C, H, W) but x_test images are "
                         f"{out['test_x'].shape[1:]}")
    k = _num_classes([out[yo] for _, yo in names.values()], options.num_classes, where) if "y" in raw else 0
    return {**out, "num_classes": np.array(k, np.int64)}


def _num_classes(labels: list[np.ndarray], declared: int | None, where: str) -> int:
    """Declared, or the largest label + 1; a label at or above a declared count is an error."""
    top = max(int(y.max(initial=0)) for y in labels)
    if declared is not None and top >= declared:
        raise BenchError(f"{where}: label {top} is out of range for num_classes={declared} (labels are 0..{declared - 1})")
    return declared if declared is not None else top + 1


def load_npz(options: NpzOptions, cache: Path) -> Dataset:
    """Images (and labels) from one .npz; the split given (x_test) or made with a stated seed."""
    path = Path(options.path).expanduser()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BenchError(f"dataset.path {str(path)!r}: cannot read it ({e.strerror or e})") from None
    digest = sha256_bytes(data)  # the bytes hashed are the bytes parsed
    key = cache_key("npz", digest, {"layout": options.layout, "num_classes": options.num_classes})
    arrays, meta = cached_arrays(cache, key, lambda: _convert_npz(read_npz(data, path), options, str(path)))
    meta = {"source": "npz", "path": str(path.resolve()), "source_sha256": digest, **meta}
    return to_dataset("npz", arrays, options, str(path), meta)


register_dataset("npz", load_npz, NpzOptions, "your images as arrays: an .npz of x (uint8) [, y, x_test, y_test]")


# ----------------------------------------------------------------------------- folder of images


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _image_files(folder: Path, labels: str) -> tuple[list[Path], list[int], list[str]]:
    """Image paths, their labels and the class names of one image folder (flat, or class subfolders)."""
    entries = _visible(folder)
    dirs, files = [p for p in entries if p.is_dir()], [p for p in entries if not p.is_dir()]
    if dirs and files:
        raise BenchError(f"{folder} holds both files ({files[0].name}) and subfolders ({dirs[0].name}); put images "
                         "either directly in it (no labels) or in one subfolder per class")
    if labels == "subfolders" and not dirs:
        raise BenchError(f"{folder}: labels: subfolders, but it has no class subfolders")
    if not dirs:
        return files, [0] * len(files), []
    paths, ys = [], []
    for k, d in enumerate(dirs):
        inner = _visible(d)
        if not inner:
            raise BenchError(f"{d}: empty class folder; remove it or add images")
        if any(p.is_dir() for p in inner):
            raise BenchError(f"{d}: class folders hold images, not further folders ({next(p for p in inner if p.is_dir()).name})")
        paths += inner
        ys += [k] * len(inner)
    return paths, ys, [d.name for d in dirs] if labels != "none" else []


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:  # a dangling link, a file removed meanwhile, no permission
        raise BenchError(f"{path}: cannot read it ({e.strerror or e})") from None


def _decode(path: Path, data: bytes, channels: int | None) -> np.ndarray:
    """One image file -> uint8 (C, H, W)."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise BenchError(f"{path}: not a PNG or JPEG file (bench reads {', '.join(IMAGE_SUFFIXES)}); move it out of the folder")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if channels is None and img.mode not in NATIVE_MODES:
                raise BenchError(f"{path}: image mode {img.mode} has no plain 8-bit channel count; set dataset.channels: "
                                 "3 (RGB) or 1 (grayscale) to convert every image")
            mode = {1: "L", 3: "RGB"}[channels or NATIVE_MODES[img.mode]]
            arr = np.asarray(img.convert(mode) if img.mode != mode else img, dtype=np.uint8)
    except Image.DecompressionBombError as e:  # Pillow refuses to decode it: twice its MAX_IMAGE_PIXELS
        raise BenchError(f"{path}: {str(e).rstrip('.')}; bench reads images of 28-32 px a side") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BenchError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)


def _stack(paths: list[Path], blobs: list[bytes], channels: int | None) -> np.ndarray:
    """Decoded images of one size and channel count, (N, C, H, W); the first misfit is named."""
    images = []
    for p, b in zip(paths, blobs):
        a = _decode(p, b, channels)
        if images and a.shape != images[0].shape:
            first = images[0].shape
            raise BenchError(f"{p} is {a.shape[0]}x{a.shape[1]}x{a.shape[2]} (CxHxW) but {paths[0]} is "
                             f"{first[0]}x{first[1]}x{first[2]}; images must share one size"
                             + ("" if a.shape[1:] != first[1:] else " (set dataset.channels: 1 or 3 to convert)"))
        images.append(a)
    return np.stack(images)


def _folder_layout(root: Path, labels: str) -> dict[str, tuple[list[Path], list[int], list[str]]]:
    """{"x": ...} for one image folder (split to make) or {"train": ..., "test": ...} (split given)."""
    if not root.is_dir():
        raise BenchError(f"dataset.root {str(root)!r} is not a folder")
    names = {p.name for p in _visible(root)}
    if {"train", "test"} <= names and (root / "train").is_dir() and (root / "test").is_dir():
        if names - {"train", "test"}:
            raise BenchError(f"{root} has train/ and test/ and also {sorted(names - {'train', 'test'})[0]}; keep only the two splits")
        parts = {s: _image_files(root / s, labels) for s in ("train", "test")}
    else:
        parts = {"x": _image_files(root, labels)}
    for key, (paths, _, _) in parts.items():
        if not paths:
            raise BenchError(f"{root if key == 'x' else root / key}: no images found")
    return parts


def load_folder(options: FolderOptions, cache: Path) -> Dataset:
    """Images from a folder (PNG/JPEG); labels from class subfolders or none; the split given or made."""
    root = Path(options.root).expanduser()
    parts = _folder_layout(root, options.labels)
    blobs = {k: [_read(p) for p in paths] for k, (paths, _, _) in parts.items()}
    # content key: every file's relative path and sha256, in order (renaming a class folder changes labels)
    listing = [f"{p.relative_to(root).as_posix()} {sha256_bytes(b)}" for k, (paths, _, _) in parts.items()
               for p, b in zip(paths, blobs[k])]
    digest = sha256_bytes("\n".join(listing).encode())

    def build() -> dict[str, np.ndarray]:
        classes = parts.get("train", parts.get("x"))[2]
        if "test" in parts and parts["test"][2] != classes:
            extra = sorted(set(parts["test"][2]) ^ set(classes))
            raise BenchError(f"{root}: train/ and test/ have different class folders ({', '.join(extra[:3])} in one only); "
                             "give both the same classes")
        out: dict[str, np.ndarray] = {}
        for key, (paths, ys, _) in parts.items():
            prefix = "" if key == "x" else f"{key}_"
            out[f"{prefix}x"] = _stack(paths, blobs[key], options.channels)
            out[f"{prefix}y"] = np.asarray(ys if classes else [0] * len(ys), np.int64)
        if "test" in parts and out["train_x"].shape[1:] != out["test_x"].shape[1:]:
            raise BenchError(f"{root}: train images are {out['train_x'].shape[1:]} (C, H, W), test images "
                             f"{out['test_x'].shape[1:]}; images must share one size")
        return {**out, "num_classes": np.array(len(classes), np.int64), "classes": np.array(classes, dtype=str)}

    key = cache_key("folder", digest, {"labels": options.labels, "channels": options.channels})
    arrays, meta = cached_arrays(cache, key, build)
    meta = {"source": "folder", "root": str(root.resolve()), "source_sha256": digest, "files": len(listing), **meta}
    return to_dataset("folder", arrays, options, str(root), meta)


register_dataset("folder", load_folder, FolderOptions,
                 "your images: a folder of PNG/JPEG files, labels from class subfolders or none")
