"""Corrupt and foreign files (issue 11 part 3): a truncated, bit-flipped, extended, edited or swapped
record, checkpoint, samples file, feature/reference cache or dataset file is detected (sha256 sidecar,
size, schema) and reported as a one-line BenchError naming the file, or treated as not cached and
recomputed; it is never read as valid.

Every (file, corruption) pair below is one case; the module prints the tally (with -s).
"""
from __future__ import annotations

import collections
import gzip
import io
import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from bench.config import load_suite
from bench.data import load_dataset
from bench.data.idx import write_idx
from bench.data.mnist import CACHE_NAME, load_from_wheel
from bench.errors import BenchError
from bench.io import (cached_torch_file, fetch_pinned_wheel, read_npz, sha256_bytes, sidecar, torch_save_with_sidecar,
                      write_with_sidecar)
from bench.runner import read_checkpoint, run_suite
from bench.store import RunStore, read_record
from conftest import TINY

TALLY: collections.Counter[str] = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _tally():
    yield
    if TALLY:
        print(f"\ncorrupt files: {TALLY['detected'] + TALLY['missed']} corruptions tried, {TALLY['detected']} detected "
              f"({TALLY['recompute']} of them as 'not cached: recompute'), {TALLY['missed']} missed")


# --- corruptions: bytes -> bytes ---------------------------------------------------------------


def _flip(at: float) -> Callable[[bytes], bytes]:
    def f(b: bytes) -> bytes:
        i = min(int(len(b) * at), len(b) - 1)
        return b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1:]
    return f


BYTE_CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "truncated to half": lambda b: b[: len(b) // 2],
    "truncated by one byte": lambda b: b[:-1],
    "emptied": lambda b: b"",
    "one bit flipped at 10%": _flip(0.1),
    "one bit flipped at 50%": _flip(0.5),
    "one bit flipped at 90%": _flip(0.9),
    "garbage appended": lambda b: b + b"\x00garbage",
    "replaced by text": lambda b: b"hello, world\n",
}


def _expect_detected(load: Callable[[], object], path: Path, *, none_means_recompute: bool = False) -> None:
    try:
        out = load()
    except BenchError as e:
        msg = str(e)
        assert "\n" not in msg and (str(path) in msg or path.name in msg), msg
        TALLY["detected"] += 1
        return
    if none_means_recompute and out is None:
        TALLY["detected"] += 1
        TALLY["recompute"] += 1
        return
    TALLY["missed"] += 1
    raise AssertionError(f"{path}: corruption read as valid: {out!r}"[:300])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("files")
    p = d / "tiny.yaml"
    p.write_text(TINY)
    return run_suite(load_suite(p), p, out=d / "run", quiet=True, seeds=[0])


@pytest.fixture
def copy(run, tmp_path) -> Path:
    """A fresh copy of the finished run for each case."""
    return Path(shutil.copytree(run, tmp_path / "run"))


# --- records --------------------------------------------------------------------------------------


@pytest.mark.parametrize("corruption", list(BYTE_CORRUPTIONS))
def test_record_bytes(copy, corruption):
    p = copy / "records" / "vae__seed0.json"
    p.write_bytes(BYTE_CORRUPTIONS[corruption](p.read_bytes()))
    _expect_detected(lambda: RunStore(copy).records(), p)


RECORD_EDITS = {
    "metric value edited": lambda d: d["metrics"][0].update(value=d["metrics"][0]["value"] + 1.0),
    "status edited": lambda d: d.update(status="ok" if d["status"] != "ok" else "diverged"),
    "seed edited": lambda d: d.update(seed=d["seed"] + 1),
}
SCHEMA_BREAKS = {
    "status not a status": lambda d: d.update(status="great"),
    "seed a string": lambda d: d.update(seed="0"),
    "metric value a string": lambda d: d["metrics"][0].update(value="1.5"),
    "metric value NaN": lambda d: d["metrics"][0].update(value=float("nan")),
    "metrics not a list": lambda d: d.update(metrics={"a": 1}),
    "a field missing": lambda d: d.pop("family"),
    "not an object": lambda d: d.clear(),
}


@pytest.mark.parametrize("edit", list(RECORD_EDITS) + list(SCHEMA_BREAKS))
def test_record_edited_valid_json(copy, edit):
    """An edit that keeps valid JSON fails the sidecar; a schema break fails even without a sidecar."""
    p = copy / "records" / "vae__seed0.json"
    d = json.loads(p.read_text())
    (RECORD_EDITS | SCHEMA_BREAKS)[edit](d)
    p.write_text("[]" if not d else json.dumps(d))
    _expect_detected(lambda: RunStore(copy).records(), p)
    if edit in SCHEMA_BREAKS:  # a record from before sidecars (or a sidecar deleted too): the schema still holds
        sidecar(p).unlink()
        _expect_detected(lambda: read_record(p), p)


def test_record_swapped_with_another_cells(copy):
    """A foreign record: nb's record (and its sidecar) copied over vae's."""
    for suffix in ("", ".sha256"):
        shutil.copy(copy / "records" / f"nb__seed0.json{suffix}", copy / "records" / f"vae__seed0.json{suffix}")
    _expect_detected(lambda: RunStore(copy).records(), copy / "records" / "vae__seed0.json")


def test_resume_stops_on_a_corrupt_record_before_running_anything(copy, tmp_path):
    p = copy / "records" / "nb__seed0.json"
    p.write_bytes(p.read_bytes()[:-20])
    (copy / "records" / "vae__seed0.json").unlink()
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    with pytest.raises(BenchError, match="nb__seed0.json: sha256 is"):
        run_suite(load_suite(suite), suite, out=copy, resume=True, quiet=True, seeds=[0])
    assert not (copy / "records" / "vae__seed0.json").exists()  # nothing ran


# --- checkpoints ----------------------------------------------------------------------------------


@pytest.mark.parametrize("corruption", list(BYTE_CORRUPTIONS))
def test_checkpoint_bytes(copy, corruption):
    p = copy / "checkpoints" / "vae__seed0.pt"
    p.write_bytes(BYTE_CORRUPTIONS[corruption](p.read_bytes()))
    _expect_detected(lambda: read_checkpoint(p), p)


@pytest.mark.parametrize("corruption", ["truncated to half", "truncated by one byte", "emptied", "replaced by text"])
def test_foreign_checkpoint_without_sidecar(copy, corruption):
    """A checkpoint copied without its sidecar is still refused when it does not load (a bit flip inside a
    tensor of such a file is not detectable: torch does not check the zip CRCs; bench's own have sidecars)."""
    p = copy / "checkpoints" / "vae__seed0.pt"
    sidecar(p).unlink()
    p.write_bytes(BYTE_CORRUPTIONS[corruption](p.read_bytes()))
    _expect_detected(lambda: read_checkpoint(p), p)


FOREIGN_CHECKPOINTS = {
    "a bare tensor": lambda ck: torch.zeros(3),
    "another program's state dict": lambda ck: ck["state_dict"],
    "family missing": lambda ck: {k: v for k, v in ck.items() if k != "family"},
    "spec not a dict": lambda ck: {**ck, "spec": [1, 2]},
    "state dict holds a string": lambda ck: {**ck, "state_dict": {"w": "x"}},
}


@pytest.mark.parametrize("kind", list(FOREIGN_CHECKPOINTS))
def test_foreign_checkpoint_contents(copy, kind):
    p = copy / "checkpoints" / "vae__seed0.pt"
    ck = torch.load(p, weights_only=True)
    torch_save_with_sidecar(FOREIGN_CHECKPOINTS[kind](ck), p)  # checksum fine: only the schema can tell
    _expect_detected(lambda: read_checkpoint(p), p)


def test_checkpoint_that_runs_code_is_refused(copy):
    class Evil:
        def __reduce__(self):
            return (print, ("this ran",))

    p = copy / "checkpoints" / "vae__seed0.pt"
    sidecar(p).unlink()
    torch.save({"bench_checkpoint": 1, "x": Evil()}, p)
    _expect_detected(lambda: read_checkpoint(p), p)


# --- samples ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("corruption", list(BYTE_CORRUPTIONS))
def test_samples_bytes(copy, corruption):
    p = copy / "samples" / "vae__seed0.npz"
    p.write_bytes(BYTE_CORRUPTIONS[corruption](p.read_bytes()))
    _expect_detected(lambda: read_npz(p, "samples file"), p)


@pytest.mark.parametrize("corruption", ["truncated to half", "one bit flipped at 50%", "one bit flipped at 90%"])
def test_samples_made_elsewhere_without_sidecar(tmp_path, corruption):
    """An .npz from another tool has no sidecar; zip's CRC-32 and sizes still catch these (stored, uncompressed)."""
    p = tmp_path / "s.npz"
    np.savez(p, samples=np.arange(4096, dtype=np.uint8).reshape(4, 1, 32, 32))
    p.write_bytes(BYTE_CORRUPTIONS[corruption](p.read_bytes()))
    _expect_detected(lambda: read_npz(p, "samples file"), p)


def test_pickled_samples_are_refused(tmp_path):
    p = tmp_path / "s.npy"
    np.save(p, np.array([object()], dtype=object), allow_pickle=True)
    _expect_detected(lambda: read_npz(p, "samples file"), p)


def test_report_marks_a_corrupt_samples_file_instead_of_drawing_it(copy):
    from bench.report import write_report

    p = copy / "samples" / "vae__seed0.npz"
    p.write_bytes(_flip(0.5)(p.read_bytes()))
    html = (write_report(copy)["html"]).read_text()
    assert "not drawn: " in html and "vae__seed0.npz: sha256 is" in html
    assert html.count('alt="samples of') == 1  # nb's grid only


# --- feature and reference caches (bench.io, as features.py uses them) ------------------------------


@pytest.fixture
def cache_file(tmp_path) -> Path:
    p = tmp_path / "ref-features.pt"
    torch_save_with_sidecar({"features": torch.randn(50, 8), "split": "test"}, p)
    return p


@pytest.mark.parametrize("corruption", list(BYTE_CORRUPTIONS))
def test_feature_cache_bytes(cache_file, corruption):
    cache_file.write_bytes(BYTE_CORRUPTIONS[corruption](cache_file.read_bytes()))
    _expect_detected(lambda: cached_torch_file(cache_file), cache_file)


SIDECAR_EDITS = {
    "sidecar of another file": lambda p: sidecar(p).write_text(f"{sha256_bytes(b'other')}  {p.name}\n"),
    "sidecar emptied": lambda p: sidecar(p).write_text(""),
    "sidecar garbage": lambda p: sidecar(p).write_bytes(b"\xff\xfe not a digest"),
    "sidecar deleted (interrupted write)": lambda p: sidecar(p).unlink(),
    "file deleted, sidecar left": lambda p: p.unlink(),
}


@pytest.mark.parametrize("edit", list(SIDECAR_EDITS))
def test_feature_cache_sidecar(cache_file, edit):
    """A missing sidecar or file reads as "not cached" (the caller recomputes it); a wrong one is an error."""
    SIDECAR_EDITS[edit](cache_file)
    _expect_detected(lambda: cached_torch_file(cache_file), cache_file, none_means_recompute=True)


# --- dataset files ---------------------------------------------------------------------------------


@pytest.fixture
def idx_root(tmp_path) -> Path:
    """A small MNIST-format folder (the four IDX files, the training ones gzipped)."""
    root = tmp_path / "idx"
    root.mkdir()
    g = np.random.default_rng(0)
    for split, n, gz in (("train", 20, ".gz"), ("t10k", 10, "")):
        write_idx(root / f"{split}-images-idx3-ubyte{gz}", g.integers(0, 256, (n, 28, 28)), compress=bool(gz))
        write_idx(root / f"{split}-labels-idx1-ubyte{gz}", g.integers(0, 10, n), compress=bool(gz))
    return root


def _load_idx(root: Path):
    return load_dataset("mnist", {"source": "idx", "root": str(root)})


IDX_CORRUPTIONS = {
    "images truncated": ("t10k-images-idx3-ubyte", lambda b: b[:-100]),
    "images header: wrong type byte": ("t10k-images-idx3-ubyte", lambda b: b[:2] + b"\x09" + b[3:]),
    "images header: wrong count": ("t10k-images-idx3-ubyte", lambda b: b[:4] + (11).to_bytes(4, "big") + b[8:]),
    "labels truncated to the header": ("t10k-labels-idx1-ubyte", lambda b: b[:6]),
    "label out of range": ("t10k-labels-idx1-ubyte", lambda b: b[:-1] + b"\x0c"),
    "labels of another split": ("t10k-labels-idx1-ubyte", lambda b: b[:4] + (20).to_bytes(4, "big") + b[8:] + b"\x00" * 10),
    "gzip bit flipped": ("train-images-idx3-ubyte.gz", _flip(0.5)),
    "gzip truncated": ("train-labels-idx1-ubyte.gz", lambda b: b[: len(b) // 2]),
    "images replaced by labels": ("t10k-images-idx3-ubyte", None),
}


@pytest.mark.parametrize("kind", list(IDX_CORRUPTIONS))
def test_idx_dataset_files(idx_root, kind):
    assert _load_idx(idx_root).train_x.shape == (20, 1, 28, 28)
    name, corrupt = IDX_CORRUPTIONS[kind]
    p = idx_root / name
    if corrupt is None:
        shutil.copy(idx_root / "t10k-labels-idx1-ubyte", p)
    else:
        p.write_bytes(corrupt(p.read_bytes()))
    _expect_detected(lambda: _load_idx(idx_root), p)


@pytest.mark.parametrize("corruption", list(BYTE_CORRUPTIONS))
def test_mnist_cache_file(tmp_path, corruption):
    """The converted MNIST cache (uint8 .npz with a sidecar) that every later run reads."""
    p = tmp_path / "mnist" / CACHE_NAME
    arrays = {"train_x": np.zeros((4, 1, 28, 28), np.uint8), "train_y": np.zeros(4, np.int64),
              "test_x": np.zeros((2, 1, 28, 28), np.uint8), "test_y": np.zeros(2, np.int64)}
    write_with_sidecar(p, lambda f: np.savez(f, **arrays))
    assert load_from_wheel(tmp_path)[0]["train_x"].shape == (4, 1, 28, 28)
    p.write_bytes(BYTE_CORRUPTIONS[corruption](p.read_bytes()))
    _expect_detected(lambda: load_from_wheel(tmp_path), p)


def test_pinned_wheel_that_does_not_match(tmp_path):
    wheel = tmp_path / "x-1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK\x03\x04 not the pinned wheel")
    _expect_detected(lambda: fetch_pinned_wheel("x==1.0", wheel.name, "0" * 64, tmp_path), wheel)


def test_gzip_of_idx_round_trip_is_exact(idx_root):
    """The fixture itself: what it wrote loads back byte for byte (so a detection above is the corruption's)."""
    ds = _load_idx(idx_root)
    raw = gzip.decompress((idx_root / "train-images-idx3-ubyte.gz").read_bytes())
    assert ds.train_x.numpy().tobytes() == raw[16:] and io.BytesIO(raw).read(4) == b"\x00\x00\x08\x03"
