"""Failure injection and limits: bombs, Ctrl-C, a full disk, concurrent writers, integrity, determinism.

Each test here pins down a property from docs/security.md; the ones marked "regression" fix a finding.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import helpers
from odp.codec import coding, errors, imaging, registry, stream, weights
from odp.codec.errors import ModelNotFound
from odp.entropy import coder
from odp.formats import container, files
from odp.formats.container import FormatError
from test_cli import assert_clean_error, assert_ok, odp, parts

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- pixel limit (decompression bombs)


def test_decode_max_pixels_option_env_and_library(tmp_path, small_odp, small_photo, monkeypatch):
    n = small_photo.width * small_photo.height
    (tmp_path / "a.odp").write_bytes(small_odp)
    assert_clean_error(odp("decode", tmp_path / "a.odp", "--max-pixels", n - 1), contains=f"limit of {n - 1} pixels")
    assert_ok(odp("decode", tmp_path / "a.odp", "--max-pixels", n))
    with pytest.raises(FormatError, match="exceeds the limit"):
        coding.decode(small_odp, device="cpu", max_pixels=n - 1)
    monkeypatch.setenv("ODP_MAX_PIXELS", str(n - 1))
    assert_clean_error(odp("decode", tmp_path / "a.odp", "-o", tmp_path / "b.png"), contains="exceeds the limit")
    with pytest.raises(FormatError, match="exceeds the limit"):
        container.read(small_odp)
    assert container.read(small_odp, max_pixels=None).header.width == small_photo.width  # explicit beats env
    assert_ok(odp("decode", tmp_path / "a.odp", "-o", tmp_path / "b.png", "--max-pixels", n))
    monkeypatch.setenv("ODP_MAX_PIXELS", "lots")
    assert_clean_error(odp("decode", tmp_path / "a.odp", "-o", tmp_path / "c.png"), contains="ODP_MAX_PIXELS")
    assert parts(tmp_path) == []


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height over a 1x1 image's data: a bomb in 70 bytes."""
    data = bytearray(helpers.encode_bytes(Image.new("RGB", (1, 1)), "PNG"))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(data[12:29]))
    return bytes(data)


def test_encode_refuses_huge_inputs_before_decoding_them(tmp_path, small_photo):
    old = Image.MAX_IMAGE_PIXELS
    (tmp_path / "bomb.png").write_bytes(png_header_only(30000, 30000))  # 900 MP, over the default limit
    assert_clean_error(odp("encode", tmp_path / "bomb.png"),
                       contains="bomb.png: image of 30000x30000 pixels exceeds the limit of 268435456 pixels")
    small_photo.save(tmp_path / "s.png")
    n = small_photo.width * small_photo.height
    assert_clean_error(odp("encode", tmp_path / "s.png", "--max-pixels", n - 1), contains=f"limit of {n - 1}")
    assert_clean_error(odp("encode", tmp_path / "s.png", "--max-pixels", n // 3),  # where Pillow's guard would speak
                       contains=f"exceeds the limit of {n // 3} pixels")
    assert_ok(odp("encode", tmp_path / "s.png", "--max-pixels", n, "-t", "2"))
    assert Image.MAX_IMAGE_PIXELS == old  # Pillow's global is put back
    with pytest.raises(ValueError, match="exceeds the limit"):
        helpers.encode(small_photo, device="cpu", max_pixels=n - 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.png", "s.odp", "s.png"]


def test_tiny_file_cannot_declare_thousands_of_tiles(small_odp, monkeypatch):
    """Regression: an 800-byte file could declare 16384x16384 (4096 tiles) and make the decoder run the
    network on all of them (minutes of CPU, an 800 MB canvas). Chunks now must be long enough for the
    tiles they claim: no token is likelier than its table's largest entry. The file is refused before
    the network is built or any tile decoded."""
    from odp.codec import engine

    def never(*args, **kwargs):
        raise AssertionError("the network ran on a file that should have been refused")

    monkeypatch.setattr(engine.Engine, "__init__", never)
    c = container.read(small_odp)
    bomb = container.write(container.Container(replace(c.header, width=16384, height=16384), c.layers[:1]))
    with pytest.raises(FormatError, match="too short for 4096 tiles"):
        coding.decode(bomb, device="cpu")


def test_first_layer_bound_holds_for_real_and_worst_case_files(model, encoded, adaptive_odp):
    """The bound must never refuse a real file, even one whose every tile starts with the likeliest token."""
    entropy = model.best_entropy
    every = np.arange(entropy.alphabet)[:, None]  # each token as a tile's first: its code length
    first = stream.token_bits(every, entropy)[:, 0].argmin()
    likeliest = np.full((50, model.config.tokens), first, np.int32)  # 50 tiles, the cheapest first layer
    data, _ = coder.encode_layer(likeliest, np.zeros(50, np.int64), np.ones(50, np.int64), entropy)
    least = stream.min_first_layer_bytes(50, entropy)
    assert least <= len(data) <= least + 24  # tight, not vacuous
    for d in [*encoded.values(), adaptive_odp]:
        c = container.read(d)
        assert len(c.layers[0].data) >= stream.min_first_layer_bytes(c.header.tiles, entropy)
    stream.verify(stream.pack(likeliest, 256 * 10, 256 * 5, model))


def test_sixteen_bit_scaling_without_a_float_copy(tmp_path):
    """Regression (memory): 16-bit greyscale went through a float64 copy (8 bytes a pixel); the integer
    path must round exactly as the float one did."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 65536, (37, 53)).astype(np.uint16)
    a[0, :6] = [0, 128, 129, 257, 65534, 65535]
    wide = rng.integers(-1000, 100000, (37, 53)).astype(np.int32)  # mode I: out-of-range values clip
    for im, top in ((Image.fromarray(a), 65535), (Image.fromarray(wide, "I"), 65535),
                    (Image.fromarray(a.astype(np.int32) % 256, "I"), 255)):
        ref = np.asarray(im).astype(np.float64)
        want = np.clip(np.round(ref * 255 / top), 0, 255).astype(np.uint8)
        got = imaging.prepare(im).pixels
        assert np.array_equal(got[..., 0], want) and np.array_equal(got[..., 2], want)


def test_rgb_array_equals_numpy_view():
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, (517, 300, 3), dtype=np.uint8))
    assert np.array_equal(imaging.rgb_array(im, rows=64), np.asarray(im))


# --------------------------------------------------------------------------- data safety


def test_interrupt_while_writing_leaves_nothing(tmp_path, small_odp, monkeypatch):
    """Ctrl-C after half the bytes are written: neither the target nor a temp file remains."""
    def half_then_interrupt(f):
        f.write(small_odp[:100])
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.write_atomic(tmp_path / "x.odp", half_then_interrupt)
    assert list(tmp_path.iterdir()) == []

    src = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (9, 99, 199)).save(src)
    monkeypatch.setattr(files.os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
    r = odp("encode", src, "-t", "2")
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_sigint_to_a_real_encode_leaves_a_whole_file_or_none(tmp_path, photos):
    """SIGINT at several moments of a real `odp encode`: the output is either the whole file or absent."""
    photos["astronaut"].resize((1024, 768)).save(tmp_path / "in.png")
    for delay in (1.0, 4.0):
        p = subprocess.Popen([sys.executable, "-m", "odp.cli.main", "encode", "in.png", "-o", "out.odp",
                              "--device", "cpu", "--force"], cwd=tmp_path, stderr=subprocess.PIPE)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        p.wait(timeout=120)
        names = sorted(x.name for x in tmp_path.iterdir())
        assert names in (["in.png"], ["in.png", "out.odp"]), names
        if "out.odp" in names:
            container.read((tmp_path / "out.odp").read_bytes())  # whole and valid
            (tmp_path / "out.odp").unlink()


class FullDisk(io.FileIO):
    """A file on a disk that fills up after `room` bytes."""
    room = 64

    def write(self, b) -> int:
        if self.tell() + len(b) > self.room:
            super().write(bytes(b)[: max(0, self.room - self.tell())])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(b)


def test_full_disk_simulated(tmp_path, small_odp, monkeypatch):
    (tmp_path / "a.odp").write_bytes(small_odp)
    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: FullDisk(fd, "wb"))
    for args in (["truncate", tmp_path / "a.odp", "-o", tmp_path / "t.odp", "-t", "100"],
                 ["decode", tmp_path / "a.odp", "-o", tmp_path / "d.png", "-t", "4"]):
        assert_clean_error(odp(*args), contains="No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.odp"]


def test_full_disk_on_a_small_tmpfs(tmp_path, small_odp):
    """A real full disk, where this process may mount a 64 KiB tmpfs (root in a container); else skipped."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (tmp_path / "a.odp").write_bytes(small_odp)
        with pytest.raises(OSError, match="No space"), open(mnt / "filler", "wb") as f:
            f.write(b"\0" * (128 << 10))  # fill the disk
        r = odp("truncate", tmp_path / "a.odp", "-o", mnt / "t.odp", "-t", "200")
        assert_clean_error(r, contains="No space left")
        assert sorted(p.name for p in mnt.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_writer_that_loses_the_race_does_not_clobber(tmp_path):
    """Another process creates the target while we write: our bytes must not replace its file."""
    target = tmp_path / "x.odp"

    def write_while_other_wins(f):
        f.write(b"ours")
        target.write_bytes(b"theirs")

    with pytest.raises(FileExistsError):
        files.write_atomic(target, write_while_other_wins)
    assert target.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.odp"]


def run_cli(*args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "odp.cli.main", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_concurrent_encodes_into_one_folder(tmp_path, photos, small_photo):
    """Two `odp encode` processes aiming at one name: one wins whole, the other says so; distinct
    names both land. Nothing is clobbered and no temp file is left."""
    photos["coffee"].save(tmp_path / "a.png")
    small_photo.save(tmp_path / "b.png")
    (tmp_path / "out").mkdir()
    procs = [run_cli("encode", n, "-o", "out/same.odp", "-t", "8", "--device", "cpu", cwd=tmp_path)
             for n in ("a.png", "b.png")]
    procs += [run_cli("encode", "a.png", "b.png", "-o", "out", "-t", "8", "--device", "cpu", cwd=tmp_path)]
    results = [(p.wait(timeout=300), p.stderr.read().decode()) for p in procs]
    codes = sorted(rc for rc, _ in results[:2])
    assert codes == [0, 1], results
    loser = next(err for rc, err in results[:2] if rc == 1)
    assert "already exists" in loser and len(loser.strip().splitlines()) == 1
    same = (tmp_path / "out" / "same.odp").read_bytes()
    expect = {helpers.encode(im, tokens=8, device="cpu") for im in (photos["coffee"], small_photo)}
    assert same in expect
    assert results[2][0] == 0, results[2]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.odp", "b.odp", "same.odp"]


def test_batch_into_a_folder_reports_the_bad_one(tmp_path, small_photo):
    small_photo.save(tmp_path / "a.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    small_photo.rotate(90, expand=True).save(tmp_path / "c.png")
    (tmp_path / "outdir").mkdir()
    r = odp("encode", tmp_path / "a.png", tmp_path / "bad.png", tmp_path / "c.png", "-o", tmp_path / "outdir",
            "-t", "4", "--quiet")
    assert r.exit_code == 1 and "Traceback" not in r.output
    errors = r.stderr.strip().splitlines()
    assert len(errors) == 2 and "bad.png" in errors[0] and errors[1] == "odp: error: 1 of 3 inputs failed"
    assert sorted(p.name for p in (tmp_path / "outdir").iterdir()) == ["a.odp", "c.odp"]


# --------------------------------------------------------------------------- integrity


def test_info_verify(tmp_path, small_odp):
    good = tmp_path / "good.odp"
    good.write_bytes(small_odp)
    r = odp("info", good, "--verify")
    assert_ok(r)
    assert "verified" in r.stdout
    bad = {
        "cut.odp": (small_odp[:-3], "cut short"),
        "header.odp": (helpers.flip(small_odp, 8), "checksum"),
        "payload.odp": (helpers.flip(small_odp, len(small_odp) - 2, 0x01), "layer"),
        "extra.odp": (appended_word(small_odp), "not the exact coding"),
    }
    for name, (data, why) in bad.items():
        (tmp_path / name).write_bytes(data)
        assert_clean_error(odp("info", tmp_path / name, "--verify"), contains=why)
    assert_ok(odp("info", tmp_path / "extra.odp"))  # without --verify it still shows what decodes
    for k in (1, 7, 8, 9, 200):  # truncate's re-coded last layer is exact too
        stream.verify(stream.truncate(small_odp, tokens=k))


def appended_word(data: bytes) -> bytes:
    """The file with one more 32-bit word at the end of its first layer (which still decodes the same)."""
    c = container.read(data)
    layers = [replace(c.layers[0], data=c.layers[0].data + b"\0\0\0\1")] + c.layers[1:]
    return container.write(container.Container(c.header, layers))


def test_entropy_decoder_errors_are_its_own(model):
    """Regression: constriction raises AssertionError on some junk streams; the coder must say EntropyError."""
    toks = np.zeros((2, model.config.tokens), np.int32)
    for entropy in {model.tables, model.best_entropy}:
        with pytest.raises(coder.EntropyError):
            coder.decode_layer(b"\xff" * 8, toks, np.zeros(2, np.int64), np.full(2, 8), entropy, check=0)
    with pytest.raises(coder.EntropyError, match="beyond the model"):  # was an IndexError (found by test_fuzz)
        coder.decode_layer(b"", toks[:1], np.array([249]), np.array([257]), model.tables)


def test_tampered_weights_are_refused(tmp_path, monkeypatch, model):
    shipped = weights.WEIGHTS_DIR / f"{model.name}.safetensors"
    raw = bytearray(shipped.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of one tensor: still a valid safetensors file
    (tmp_path / shipped.name).write_bytes(bytes(raw))
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ModelNotFound, match="pinned sha256"):
        weights.load(model.name)
    assert registry.SHIPPED_SHA256[model.name] == model.sha256.hex()


PACKAGE = ["__init__.py", "codec", "entropy", "formats", "cli", "tui"]
UNPICKLING = re.compile(r"pickle\.(load|loads|Unpickler)|torch\.load|allow_pickle|\bimport (dill|joblib|marshal|shelve)"
                        r"|numpy\.load|np\.load|\.ckpt\b|\.pth?\b")


def test_nothing_unpickles_outside_the_metric_converter():
    """Weights are safetensors; only codec/evaluation/perceptual.py reads pickles, once, when converting downloaded
    metric weights, through restricted unpicklers (torch.load with weights_only=True)."""
    found = []
    for part in PACKAGE:
        for path in sorted((ROOT / part).rglob("*.py")) if (ROOT / part).is_dir() else [ROOT / part]:
            rel = path.relative_to(ROOT).as_posix()
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if UNPICKLING.search(line.split("#")[0]) and rel != "codec/evaluation/perceptual.py":
                    found.append(f"{rel}:{n}: {line.strip()}")
    assert found == []
    perceptual = (ROOT / "codec" / "evaluation" / "perceptual.py").read_text()
    assert all("weights_only=True" in ln for ln in perceptual.splitlines() if "torch.load(" in ln)
    # beside the safetensors weights only ONNX graphs (protobuf, never pickle), which hold no weights (test_network)
    assert [p.name for p in weights.WEIGHTS_DIR.iterdir() if p.suffix not in (".safetensors", ".onnx")] == []
    assert all(p.stat().st_size < 300_000 for p in weights.WEIGHTS_DIR.glob("*.onnx"))


# --------------------------------------------------------------------------- determinism

ENCODE = """
import hashlib, sys, torch
torch.set_num_threads(int(sys.argv[1]))
import numpy as np
from PIL import Image
import odp
from odp.codec import coding, stream
data = odp.encode(Image.open(sys.argv[2]).convert("RGB"), device="cpu", adaptive=False)
tokens = b"".join(s.tokens.tobytes() for s in stream.read_stages(data))
print(hashlib.sha256(data).hexdigest(), hashlib.sha256(tokens).hexdigest(),
      hashlib.sha256(odp.truncate(data, tokens=256)).hexdigest())
np.save(sys.argv[3], np.asarray(coding.decode(data, device="cpu")))
"""


def test_same_bytes_across_runs_and_thread_counts(tmp_path, photos, encoded):
    """On the CPU, one input gives one .odp file (both stages; its first stage is the file the library
    makes without the refinement stage), whatever torch's and the BLAS's thread counts (the
    context model's integer inference runs in numpy's BLAS), and a file gives one list of tokens. Decoded pixels are float network output rounded to 8 bits: a value that lands on
    .5 can round either way under another summation order, so they may differ by 1 in rare values
    (measured: 1 of 230400 values between 1 and 2 threads on this photo; docs/security.md)."""
    photos["astronaut"].save(tmp_path / "a.png")
    assert helpers.encode(photos["astronaut"], device="cpu", adaptive=False) == encoded["astronaut"]
    threads = {n: dict(os.environ, OMP_NUM_THREADS=str(n), OPENBLAS_NUM_THREADS=str(n), MKL_NUM_THREADS=str(n))
               for n in (1, 2)}
    outs = [subprocess.run([sys.executable, "-c", ENCODE, str(n), str(tmp_path / "a.png"), str(tmp_path / f"{n}.npy")],
                           capture_output=True, text=True, timeout=300, env=threads[n]) for n in (1, 2)]
    assert all(o.returncode == 0 for o in outs), [o.stderr for o in outs]
    (file1, tokens1, first1), (file2, tokens2, first2) = (o.stdout.split() for o in outs)
    assert file1 == file2 and first1 == first2 == hashlib.sha256(encoded["astronaut"]).hexdigest()
    assert tokens1 == tokens2
    a, b = (np.load(tmp_path / f"{n}.npy").astype(np.int16) for n in (1, 2))
    assert np.abs(a - b).max() <= 1 and (a != b).mean() < 1e-3
