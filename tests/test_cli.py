"""The `odp` command line: click's CliRunner in process, and a few real subprocesses."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageCms

import helpers
import odp as odp_api
from odp import __version__
from odp.cli.main import main
from odp.codec import coding, stream
from odp.formats import container


def odp(*args: str, input: bytes | None = None):
    """Run the CLI in process. encode/decode run on the CPU (unless a test names a device), so that
    their output can be compared bit for bit with the CPU-made fixtures on machines with a GPU too."""
    args = [str(a) for a in args]
    if args and args[0] in ("encode", "decode") and "--device" not in args and "--help" not in args:
        args[1:1] = ["--device", "cpu"]
    return CliRunner().invoke(main, args, input=input)


def assert_ok(r) -> None:
    assert r.exit_code == 0, (r.exit_code, r.stderr, r.exception)


def assert_clean_error(r, code: int = 1, contains: str = "") -> str:
    """Exit `code`, one line on stderr starting with 'odp: error:', no traceback."""
    assert r.exit_code == code, (r.exit_code, r.stderr, r.exception)
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("odp: error:"), lines[0]
    assert "Traceback" not in r.output
    assert contains in lines[0]
    return lines[0]


def parts(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.part")) + sorted(folder.glob(".*.part"))


@pytest.fixture
def png(tmp_path, small_photo) -> Path:
    p = tmp_path / "a.png"
    small_photo.save(p)
    return p


@pytest.fixture
def odp_file(tmp_path, small_odp) -> Path:
    p = tmp_path / "a.odp"
    p.write_bytes(small_odp)
    return p


# --------------------------------------------------------------------------- basics


def test_version_and_help():
    r = odp("--version")
    assert_ok(r)
    assert __version__ in r.output and "odp" in r.output
    for args in (["--help"], ["-h"], ["encode", "--help"], ["decode", "-h"], ["truncate", "--help"], ["info", "-h"]):
        assert_ok(odp(*args))


def test_encode_decode(png, tmp_path, small_staged, small_photo):
    r = odp("encode", png)
    assert_ok(r)
    out = tmp_path / "a.odp"
    assert out.read_bytes() == small_staged  # the CLI and the library make the same file
    assert r.stderr == ""
    r = odp("decode", out, "-o", tmp_path / "back.png")
    assert_ok(r)
    im = Image.open(tmp_path / "back.png")
    assert im.format == "PNG" and im.size == small_photo.size and im.mode == "RGB"
    assert im.tobytes() == coding.decode(small_staged, device="cpu").tobytes()


def test_device_auto(png, tmp_path, small_photo):
    assert_ok(odp("encode", png, "--device", "auto", "-o", tmp_path / "x.odp", "-t", "4"))
    assert_ok(odp("decode", tmp_path / "x.odp", "--device", "auto", "-o", tmp_path / "x.png"))
    assert Image.open(tmp_path / "x.png").size == small_photo.size


def test_encode_options(png, tmp_path, small_odp):
    assert_ok(odp("encode", png, "-o", tmp_path / "t.odp", "--tokens", "13"))  # one tile: exactly 13
    c = container.read((tmp_path / "t.odp").read_bytes())
    assert c.kept == 13 and c.mean_tokens == 13 and not c.header.adaptive
    budget = len(small_odp) // 2
    assert_ok(odp("encode", png, "-o", tmp_path / "b.odp", "--bytes", budget, "--no-base"))  # tokens only
    assert (tmp_path / "b.odp").read_bytes() == stream.truncate(small_odp, max_bytes=budget)
    assert_ok(odp("encode", png, "-o", tmp_path / "v4.odp", "--bytes", budget))  # a thumbnail, then tokens
    based = (tmp_path / "v4.odp").read_bytes()
    assert len(based) <= budget and container.read(based).header.base
    w, h = Image.open(png).size
    bpp = 8 * budget / (w * h)
    r = odp("encode", png, "-o", tmp_path / "p.odp", "--bpp", bpp, "-v")
    assert_ok(r)
    assert len((tmp_path / "p.odp").read_bytes()) <= budget
    assert "bpp" in r.stderr and "p.odp" in r.stderr
    assert_ok(odp("encode", png, "-o", tmp_path / "q.odp", "--quality", "1"))  # below 1 token: 1 token
    assert len((tmp_path / "q.odp").read_bytes()) == len(stream.truncate(small_odp, tokens=1))
    assert_ok(odp("encode", png, "-o", tmp_path / "q1.odp", "-q", "1"))  # -q is the quality, as in cwebp
    assert (tmp_path / "q1.odp").read_bytes() == (tmp_path / "q.odp").read_bytes()
    assert_ok(odp("encode", png, "-o", tmp_path / "p.odp", "--psnr", "12", "--force"))
    assert container.read((tmp_path / "p.odp").read_bytes()).kept < 256


def test_encode_scale(tmp_path, adaptive_photo):
    """--scale N codes the photo at 1/N; info and decode show the full size; auto picks with a budget."""
    src = tmp_path / "photo.png"
    adaptive_photo.save(src)
    r = odp("encode", src, "-o", tmp_path / "half.odp", "--scale", "2", "--uniform", "--tokens", "40", "-v")
    assert_ok(r)
    assert "(coded at 1/2: 384x256)" in r.stderr
    info = odp("info", tmp_path / "half.odp")
    assert_ok(info)
    assert "ODP image 768x512 (coded at 384x256), 2x1 tiles" in info.output
    as_json = json.loads(odp("info", tmp_path / "half.odp", "--json").output)
    assert (as_json["width"], as_json["coded_width"]) == (768, 384)
    assert_ok(odp("decode", tmp_path / "half.odp", "-o", tmp_path / "half.png"))
    assert Image.open(tmp_path / "half.png").size == (768, 512)
    assert_ok(odp("truncate", tmp_path / "half.odp", "-o", tmp_path / "cut.odp", "--tokens", "8"))
    assert container.read((tmp_path / "cut.odp").read_bytes()).header.display_size == (768, 512)
    assert_ok(odp("encode", src, "-o", tmp_path / "small.odp", "--bytes", "300", "--uniform", "--scale", "psnr"))
    assert container.read((tmp_path / "small.odp").read_bytes()).header.scaled
    assert_ok(odp("encode", src, "-o", tmp_path / "full.odp", "--bytes", "300", "--uniform", "--no-base"))  # auto: fits
    assert not container.read((tmp_path / "full.odp").read_bytes()).header.scaled
    for bad in ("0", "17", "half", "1.5"):
        r = odp("encode", src, "-o", tmp_path / "x.odp", "--scale", bad)
        assert r.exit_code == 2 and "--scale: scale" in r.stderr and "1..16" in r.stderr
    assert not (tmp_path / "x.odp").exists()


def test_unreachable_target_warns(png, tmp_path):
    r = odp("encode", png, "-o", tmp_path / "p.odp", "--psnr", "90")
    assert_ok(r)
    assert "out of reach" in r.stderr


def test_decode_options(odp_file, tmp_path, small_odp, small_photo):
    assert_ok(odp("decode", odp_file, "-o", tmp_path / "x.jpg", "--tokens", "8"))
    jpg = Image.open(tmp_path / "x.jpg")
    assert jpg.format == "JPEG" and jpg.size == small_photo.size
    assert_ok(odp("decode", odp_file, "-o", tmp_path / "x.bmp", "-t", "5"))
    bmp = Image.open(tmp_path / "x.bmp")
    assert bmp.tobytes() == coding.decode(small_odp, tokens=5, device="cpu").tobytes()
    r = odp("decode", odp_file, "-o", tmp_path / "x.nope")
    assert_clean_error(r, contains="cannot write")
    assert not (tmp_path / "x.nope").exists()


def test_truncate(odp_file, tmp_path, small_odp):
    assert_ok(odp("truncate", odp_file, "-o", tmp_path / "t.odp", "--tokens", "21"))
    assert (tmp_path / "t.odp").read_bytes() == stream.truncate(small_odp, tokens=21)
    budget = len(small_odp) // 3
    assert_ok(odp("truncate", odp_file, "-o", tmp_path / "b.odp", "-b", budget))
    assert (tmp_path / "b.odp").read_bytes() == stream.truncate(small_odp, max_bytes=budget)
    assert_clean_error(odp("truncate", odp_file, "-o", tmp_path / "c.odp", "-b", "10"), contains="cannot hold")
    assert not (tmp_path / "c.odp").exists()


def test_info(odp_file, small_odp, small_photo, model):
    r = odp("info", odp_file)
    assert_ok(r)
    assert f"{small_photo.width}x{small_photo.height}" in r.stdout and "(format v2)" in r.stdout
    assert model.name in r.stdout and model.sha256.hex()[:16] in r.stdout
    assert "allocated by need" not in r.stdout  # one tile: no weights, and the file ends at its cap
    r = odp("info", odp_file, "--json")
    assert_ok(r)
    d = json.loads(r.stdout)
    assert d["version"] == 2
    assert d["width"] == small_photo.width and d["height"] == small_photo.height
    assert d["file_bytes"] == len(small_odp)
    K, cap = model.config.tokens, container.read(small_odp).kept  # a lone tile's file ends at its cap
    assert d["tokens_per_tile"] == d["tokens_min"] == d["tokens_max"] == cap < d["model_tokens_per_tile"] == K
    assert d["adaptive"] is False and d["complete"] is True
    assert d["model"] == model.name and d["weights_sha256"] == model.sha256.hex()
    # a new file ends a layer at every allocation level below its cap, then at it: each a cut needing no re-coding
    assert d["tiles"] == "1x1" and d["truncation_points"] == [lv for lv in stream.LEVELS if lv < cap] + [cap]
    assert d["layers"] == len(d["truncation_points"]) == len(container.read(small_odp).layers)
    assert f"layers:   {d['layers']} " in odp("info", odp_file).stdout
    assert d["payload_bytes"] == container.read(small_odp).payload_bytes < d["file_bytes"]
    assert d["bpp"] > 0 and d["bits_per_token"] == round(d["payload_bytes"] * 8 / cap, 3)


def test_info_on_an_adaptive_file(tmp_path, adaptive_odp):
    """Tiles keep different token counts: info gives the mean, the spread, and the file's own cut points."""
    full = tmp_path / "full.odp"
    full.write_bytes(adaptive_odp)
    assert_ok(odp("truncate", full, "-o", tmp_path / "t.odp", "-t", "16"))
    cut = (tmp_path / "t.odp").read_bytes()
    c = container.read(cut)
    counts = c.header.counts(c.level)
    r = odp("info", tmp_path / "t.odp", "--json")
    assert_ok(r)
    d = json.loads(r.stdout)
    assert d["adaptive"] is True and d["tiles"] == "3x2"
    assert d["tokens_per_tile"] == round(sum(counts) / 6, 2) <= 16  # at most 16 per tile on average
    assert (d["tokens_min"], d["tokens_max"]) == (min(counts), max(counts)) and d["tokens_min"] < d["tokens_max"]
    assert d["truncation_points"] == [x.level for x in c.layers] and d["truncation_points"][-1] == c.level
    assert d["bits_per_token"] == round(c.payload_bytes * 8 / sum(counts), 3)
    r = odp("info", tmp_path / "t.odp")
    assert_ok(r)
    assert f"tiles {min(counts)}..{max(counts)}, allocated by need" in r.stdout
    d = json.loads(odp("info", full, "--json").stdout)  # all tokens: every tile up to its cap
    limits = container.read(adaptive_odp).header.limits
    assert d["adaptive"] is True and (d["tokens_min"], d["tokens_max"]) == (min(limits), max(limits))
    assert d["tokens_per_tile"] == round(sum(limits) / 6, 2)


def test_encode_allocates_by_need_unless_uniform(tmp_path, astronaut, encoded):
    """Two tiles of different need: by default the tokens go where they matter, --uniform gives each the same."""
    astronaut.save(tmp_path / "a.png")
    assert_ok(odp("encode", tmp_path / "a.png", "-o", tmp_path / "u.odp", "--uniform", "-t", "20"))
    assert (tmp_path / "u.odp").read_bytes() == stream.truncate(encoded["astronaut"], tokens=20)
    u = container.read((tmp_path / "u.odp").read_bytes())
    assert not u.header.adaptive and u.header.counts(u.level) == [20, 20]
    assert_ok(odp("encode", tmp_path / "a.png", "-o", tmp_path / "a.odp", "-t", "20"))
    a = container.read((tmp_path / "a.odp").read_bytes())
    counts = a.header.counts(a.level)
    assert a.header.adaptive and counts[0] != counts[1]
    assert a.mean_tokens <= 20 < sum(a.header.counts(a.level + 1)) / 2  # the most that average 20
    d = json.loads(odp("info", tmp_path / "a.odp", "--json").stdout)
    assert d["adaptive"] is True and (d["tokens_min"], d["tokens_max"]) == (min(counts), max(counts))


def test_info_on_a_cut_file(tmp_path, small_odp):
    spans = helpers.layer_spans(small_odp)
    levels = [x.level for x in container.read(small_odp).layers]
    cut = tmp_path / "cut.odp"
    cut.write_bytes(small_odp[: spans[8][0] + 6])  # 8 whole layers, then part of the ninth
    r = odp("info", cut, "--json")
    assert_ok(r)
    d = json.loads(r.stdout)
    assert d["complete"] is False and d["layers"] == 8 and d["truncation_points"] == levels[:8]
    assert d["tokens_per_tile"] == d["tokens_max"] == levels[7]  # one tile: its tokens are the level
    r = odp("info", cut)
    assert_ok(r)
    assert "cut short" in r.stdout and "odp: warning:" in r.stderr


def test_version_1_files_are_read_and_truncate_to_version_2(tmp_path, v1_model):
    """A file the previous release wrote (320x240, 64 of 256 tokens per tile in chunks of 8)."""
    v1 = tmp_path / "old.odp"
    v1.write_bytes(helpers.v1_file())
    r = odp("info", v1, "--json")
    assert_ok(r)
    d = json.loads(r.stdout)
    assert (d["version"], d["width"], d["height"], d["tiles"], d["adaptive"]) == (1, 320, 240, "2x1", False)
    assert d["tokens_per_tile"] == d["tokens_min"] == d["tokens_max"] == 64 and d["complete"] is True
    assert d["truncation_points"] == list(range(8, 65, 8)) and d["layers"] == 8
    assert d["model"] == v1_model.name and d["weights_sha256"] == v1_model.sha256.hex()
    assert "(format v1)" in odp("info", v1).stdout
    assert_ok(odp("info", v1, "--verify"))
    assert_ok(odp("decode", v1, "-o", tmp_path / "old.png"))
    expected = coding.decode(helpers.v1_file(), device="cpu").tobytes()
    assert Image.open(tmp_path / "old.png").tobytes() == expected
    assert_ok(odp("truncate", v1, "-o", tmp_path / "new.odp", "-t", "64"))  # all it holds, rewritten
    new = (tmp_path / "new.odp").read_bytes()
    d = json.loads(odp("info", tmp_path / "new.odp", "--json").stdout)
    assert d["version"] == 2 and d["tokens_per_tile"] == 64 and d["truncation_points"] == list(range(8, 65, 8))
    assert_ok(odp("info", tmp_path / "new.odp", "--verify"))
    assert coding.decode(new, device="cpu").tobytes() == expected  # the same tokens, now with token checks
    assert_ok(odp("truncate", v1, "-o", tmp_path / "20.odp", "-t", "20"))
    assert container.read((tmp_path / "20.odp").read_bytes()).header.counts(20) == [20, 20]
    assert [x.level for x in container.read((tmp_path / "20.odp").read_bytes()).layers] == [8, 16, 20]


def test_a_version_1_files_model_name_reaches_the_error_line_without_its_escapes(tmp_path):
    """A version-1 header names its model; a file naming one not installed gets that name quoted in the
    error line, with its control characters (a terminal escape, a bell) replaced."""
    data = helpers.v1_file()
    head = helpers.v1_head(data)
    fixed = list(container._V1_FIXED.unpack_from(head))
    fixed[-1] = bytes(32)  # weights no installed model has
    at = container._V1_FIXED.size
    name = "odp-small\x1b[2J\x07".encode()
    head = container._V1_FIXED.pack(*fixed) + bytes([len(name)]) + name + head[at + 1 + head[at]:]
    hostile = tmp_path / "hostile.odp"
    hostile.write_bytes(helpers.assemble_v1(head, [x.data for x in container.read(data).layers]))
    for args in (("decode", hostile, "-o", tmp_path / "out.png"), ("info", hostile, "--verify")):
        r = odp(*args)
        line = assert_clean_error(r, contains="odp-small?[2J?")
        assert "\x1b" not in r.stderr and "\x07" not in r.stderr, line
    assert not (tmp_path / "out.png").exists()


def test_decode_cut_file_warns(tmp_path, small_odp):
    spans = helpers.layer_spans(small_odp)
    whole = container.read(small_odp).layers[9].level  # tokens per tile in the first 10 layers
    cut = tmp_path / "cut.odp"
    cut.write_bytes(small_odp[: spans[9][1] + 3])
    r = odp("decode", cut)
    assert_ok(r)
    assert r.stderr.startswith("odp: warning:") and "cut short" in r.stderr
    expected = coding.decode(small_odp, tokens=whole, device="cpu")
    assert Image.open(tmp_path / "cut.png").tobytes() == expected.tobytes()
    r = odp("truncate", cut, "-o", tmp_path / "fixed.odp", "-t", "256", "--quiet")
    assert_ok(r)
    assert r.stderr == ""
    assert (tmp_path / "fixed.odp").read_bytes() == stream.truncate(small_odp, tokens=whole)
    kept = [x.data for x in container.read((tmp_path / "fixed.odp").read_bytes()).layers]
    assert kept == [x.data for x in container.read(small_odp).layers[:10]]  # the whole layers, byte for byte


def test_transparent_input_warns(tmp_path, small_photo):
    im = small_photo.convert("RGBA")
    im.putpixel((0, 0), (0, 0, 0, 0))
    im.save(tmp_path / "t.png")
    r = odp("encode", tmp_path / "t.png", "-t", "4")
    assert_ok(r)
    assert r.stderr.startswith("odp: warning:") and "alpha" in r.stderr
    r = odp("encode", tmp_path / "t.png", "-t", "4", "-o", tmp_path / "q.odp", "--quiet")
    assert_ok(r)
    assert r.stderr == ""


def test_metadata_reaches_the_decoded_png(tmp_path, small_photo):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    ex = Image.Exif()
    ex[0x010F] = "ODP test camera"
    small_photo.save(tmp_path / "m.jpg", quality=95, icc_profile=icc, exif=ex.tobytes())
    assert_ok(odp("encode", tmp_path / "m.jpg", "-t", "8", "--metadata", "all"))
    assert_ok(odp("decode", tmp_path / "m.odp"))
    out = Image.open(tmp_path / "m.png")
    assert out.info["icc_profile"] == icc
    assert out.getexif()[0x010F] == "ODP test camera"
    assert_ok(odp("encode", tmp_path / "m.jpg", "-t", "8", "-o", tmp_path / "bare.odp"))  # default: none
    assert_ok(odp("decode", tmp_path / "bare.odp"))
    bare = Image.open(tmp_path / "bare.png")
    assert "icc_profile" not in bare.info and 0x010F not in bare.getexif()
    assert (tmp_path / "bare.odp").stat().st_size < (tmp_path / "m.odp").stat().st_size
    r = odp("encode", tmp_path / "m.jpg", "--metadata", "xmp", "-o", tmp_path / "x.odp")
    assert r.exit_code == 2 and "--metadata" in r.stderr


# --------------------------------------------------------------------------- overwriting


def test_no_overwrite_without_force(png, odp_file, tmp_path):
    before = odp_file.read_bytes()
    odp_file.write_bytes(b"precious")
    assert_clean_error(odp("encode", png), contains="already exists")
    assert odp_file.read_bytes() == b"precious"
    assert_ok(odp("encode", png, "--force", "--first-stage"))
    assert odp_file.read_bytes() == before

    target = tmp_path / "a.png"  # decode a.odp -> a.png, which is the input photo
    photo = target.read_bytes()
    assert_clean_error(odp("decode", odp_file), contains="already exists")
    assert target.read_bytes() == photo
    assert_ok(odp("decode", odp_file, "-f"))
    assert Image.open(target).size == Image.open(io.BytesIO(photo)).size

    other = tmp_path / "o.odp"
    other.write_bytes(b"keep me")
    assert_clean_error(odp("truncate", odp_file, "-o", other, "-t", "3"), contains="already exists")
    assert other.read_bytes() == b"keep me"
    assert_ok(odp("truncate", odp_file, "-o", other, "-t", "3", "--force"))
    assert container.read(other.read_bytes()).kept == 3
    assert parts(tmp_path) == []


def test_output_is_a_folder(png, odp_file, tmp_path):
    (tmp_path / "d").mkdir()
    for args in (["encode", png, "-o", tmp_path / "d", "--force", "-t", "2"],
                 ["truncate", odp_file, "-o", tmp_path / "d", "--force", "-t", "2"],
                 ["decode", odp_file, "-o", tmp_path / "d.png", "-t", "2"]):
        if args[0] == "decode":
            (tmp_path / "d.png").mkdir()
            args.append("--force")
        assert_clean_error(odp(*args))
    assert parts(tmp_path) == []
    assert list((tmp_path / "d").iterdir()) == []


def test_output_folder_missing(png, tmp_path):
    assert_clean_error(odp("encode", png, "-o", tmp_path / "nowhere" / "a.odp"), contains="does not exist")


def test_quiet_is_long_only_and_a_number_after_it_is_explained(png, tmp_path):
    (tmp_path / "out").mkdir()
    r = odp("encode", png, "--quiet", "50", "-t", "4", "-o", tmp_path / "out")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[0] == ("odp: error: 50: no such file (a number: --quiet takes no value; "
                                        "for a quality use -q 50)")
    assert (tmp_path / "out" / "a.odp").is_file()  # the real input is still encoded
    assert "-q, --quality" in odp("encode", "--help").output
    assert_clean_error(odp("encode", png, "--quiet", "50", "-o", tmp_path / "x.odp"),  # -o a file: still the hint
                       contains="must be an existing folder (a number: --quiet takes no value; for a quality use -q 50)")


def test_unwritable_output_folder_is_checked_before_the_work(png, tmp_path, monkeypatch):
    """As root, permissions do not stop a write: os.access is what check_output asks, so ask it here."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real(p, mode))
    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(coding, "encode", lambda *a, **k: pytest.fail("encoded"))
    assert_clean_error(odp("encode", png, "-o", tmp_path / "ro" / "a.odp"),
                       contains=f"folder {tmp_path / 'ro'} is not writable")
    assert_clean_error(odp("decode", png, "-o", tmp_path / "ro" / "a.png"), contains="is not writable")


def test_tile_progress_on_a_terminal_only(monkeypatch):
    """A bar per pass over the tiles on a TTY, named after the file; nothing on a pipe or with --quiet."""
    from odp.cli.main import TileBar

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for stream_, quiet, shown in ((Tty(), False, True), (Tty(), True, False), (io.StringIO(), False, False)):
        monkeypatch.setattr(sys, "stderr", stream_)
        bar = TileBar("photo.jpg", quiet)
        for what in ("encoding", "scoring"):
            for done in (4, 8, 12):
                bar(what, done, 12)
        bar.close()
        out = stream_.getvalue()
        assert ("photo.jpg: encoding" in out and "photo.jpg: scoring" in out and "12/12" in out) == shown
        assert bool(out) == shown


# --------------------------------------------------------------------------- several inputs


def test_several_inputs_into_a_folder(tmp_path, small_photo):
    names = ["p1", "p2", "p3"]
    for i, n in enumerate(names):
        small_photo.rotate(90 * i, expand=True).save(tmp_path / f"{n}.png")
    (tmp_path / "out").mkdir()
    r = odp("encode", *[tmp_path / f"{n}.png" for n in names], "-o", tmp_path / "out", "-t", "8", "--quiet")
    assert_ok(r)
    for i, n in enumerate(names):
        h = container.read((tmp_path / "out" / f"{n}.odp").read_bytes()).header
        assert (h.width, h.height) == small_photo.rotate(90 * i, expand=True).size
    assert_clean_error(odp("encode", tmp_path / "p1.png", tmp_path / "p2.png", "-o", tmp_path / "p1.png"),
                       contains="must be an existing folder")


def test_several_files_decode_into_a_folder_and_a_bad_one_is_told(tmp_path, small_photo):
    for n in ("a", "b"):
        small_photo.save(tmp_path / f"{n}.png")
        assert_ok(odp("encode", tmp_path / f"{n}.png", "-o", tmp_path / f"{n}.odp", "-t", "4", "--quiet"))
    (tmp_path / "c.odp").write_bytes(b"not an odp file")
    (tmp_path / "out").mkdir()
    r = odp("decode", tmp_path / "a.odp", tmp_path / "c.odp", tmp_path / "b.odp", "-o", tmp_path / "out", "--quiet")
    assert r.exit_code == 1 and "Traceback" not in r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("odp: error:")]
    assert len(errors) == 2 and "c.odp" in errors[0] and "1 of 3 inputs failed" in errors[1]
    for n in ("a", "b"):
        assert Image.open(tmp_path / "out" / f"{n}.png").size == small_photo.size
    assert not (tmp_path / "out" / "c.png").exists()
    assert_clean_error(odp("decode", tmp_path / "a.odp", tmp_path / "b.odp", "-o", tmp_path / "x.png"),
                       contains="must be an existing folder")
    r = odp("decode", tmp_path / "a.odp", "--cluster", "local")  # a usage error: exit 2, before Ray starts
    assert r.exit_code == 2 and "--cluster needs -o FOLDER" in r.stderr


def test_info_lists_the_cut_points(tmp_path, adaptive_odp):
    import odp as api  # `odp` here is the command

    (tmp_path / "a.odp").write_bytes(adaptive_odp)
    d = json.loads(odp("info", tmp_path / "a.odp", "--json", "--cuts").stdout)
    assert [(c["bytes"], c["tokens_per_tile"]) for c in d["cuts"]] == [(n, round(t, 2)) for n, t in api.cut_points(adaptive_odp)]
    assert d["cuts"][-1]["bytes"] == len(adaptive_odp) and len(d["cuts"]) == d["layers"]
    text = odp("info", tmp_path / "a.odp", "--cuts").stdout
    assert f"{len(adaptive_odp):7d}" in text and "cuts:" in text


def test_batch_with_a_bad_input_continues(tmp_path, small_photo):
    small_photo.save(tmp_path / "good1.png")
    (tmp_path / "bad.png").write_bytes(b"this is not a picture")
    small_photo.save(tmp_path / "good2.jpg")
    r = odp("encode", tmp_path / "good1.png", tmp_path / "bad.png", tmp_path / "missing.png",
            tmp_path / "good2.jpg", "-t", "4", "--quiet")
    assert r.exit_code == 1
    assert r.exception is None or isinstance(r.exception, SystemExit)
    assert "Traceback" not in r.output
    assert (tmp_path / "good1.odp").is_file() and (tmp_path / "good2.odp").is_file()
    assert not (tmp_path / "bad.odp").exists() and not (tmp_path / "missing.odp").exists()
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("odp: error:")]
    assert "missing.png" in errors[0] and "no such file" in errors[0]  # said before any work
    assert any("bad.png" in e and "not an image" in e for e in errors)
    assert errors[-1] == "odp: error: 2 of 4 inputs failed"
    assert parts(tmp_path) == []


def test_several_inputs_are_encoded_together_as_each_alone(tmp_path, small_photo, adaptive_photo):
    """Inputs go through odp.encode_batch in groups (their tiles batched through the network): the
    same files as one `odp encode` each, default settings (adaptive allocation, full size)."""
    small_photo.save(tmp_path / "a.png")
    adaptive_photo.save(tmp_path / "b.png")
    (tmp_path / "out").mkdir()
    assert_ok(odp("encode", tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "out", "--quiet"))
    for n in ("a", "b"):
        assert_ok(odp("encode", tmp_path / f"{n}.png", "-o", tmp_path / f"{n}.odp", "--quiet"))
        assert (tmp_path / "out" / f"{n}.odp").read_bytes() == (tmp_path / f"{n}.odp").read_bytes()


def test_a_group_error_or_warning_names_its_input(tmp_path, small_photo):
    """One input of a group that cannot meet the budget fails alone, and the others are written."""
    small_photo.save(tmp_path / "small.png")
    small_photo.resize((small_photo.width * 40, small_photo.height * 40)).save(tmp_path / "big.png")  # 80 tiles
    r = odp("encode", tmp_path / "small.png", tmp_path / "big.png", "--bytes", "60", "--scale", "1")
    assert r.exit_code == 1 and "Traceback" not in r.output
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("odp: error:")]
    assert len(errors) == 2 and "big.png" in errors[0] and "60 bytes" in errors[0]
    assert (tmp_path / "small.odp").is_file() and not (tmp_path / "big.odp").exists()
    small_photo.rotate(180).save(tmp_path / "turned.png")
    r = odp("encode", tmp_path / "small.png", tmp_path / "turned.png", "-t", "300", "--force")
    assert_ok(r)
    said = [ln for ln in r.stderr.splitlines() if "keeping all of them" in ln]
    assert len(said) == 2 and "small.png" in said[0] and "turned.png" in said[1]


# --------------------------------------------------------------------------- stdin / stdout


def test_stdin_and_stdout(png, small_odp, small_photo):
    r = odp("encode", "-", "--first-stage", input=png.read_bytes())
    assert_ok(r)
    assert r.stdout_bytes == small_odp
    r = odp("encode", png, "-o", "-", "-t", "8")
    assert_ok(r)
    assert r.stdout_bytes == stream.truncate(small_odp, tokens=8)
    r = odp("decode", "-", "-t", "8", input=small_odp)
    assert_ok(r)
    im = Image.open(io.BytesIO(r.stdout_bytes))
    assert im.format == "PNG" and im.size == small_photo.size
    r = odp("truncate", "-", "-o", "-", "-t", "9", input=small_odp)
    assert_ok(r)
    assert r.stdout_bytes == stream.truncate(small_odp, tokens=9)
    r = odp("info", "-", "--json", input=small_odp)
    assert_ok(r)
    assert json.loads(r.stdout)["file_bytes"] == len(small_odp)


def test_stdin_errors(small_odp):
    assert_clean_error(odp("decode", "-", input=b"garbage"), contains="not an ODP file")
    assert_clean_error(odp("encode", "-", input=b"garbage"), contains="not an image")
    assert_clean_error(odp("info", "-", input=small_odp[:30]))


# --------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize("args", [
    ["encode", "a.png", "--tokens", "8", "--bytes", "1000"],
    ["encode", "a.png", "--tokens", "8", "--bpp", "0.5"],
    ["encode", "a.png", "b.png", "-o", "-"],
    ["encode", "a.png", "--tokens", "0"],
    ["encode", "a.png", "--bpp", "0"],
    ["encode", "a.png", "--quality", "0"],
    ["encode", "a.png", "--quality", "101"],
    ["encode", "a.png", "--msssim", "1.5"],
    ["encode", "a.png", "--psnr", "30", "--quality", "50"],
    ["encode"],
    ["truncate", "a.odp", "-o", "b.odp"],
    ["truncate", "a.odp", "-o", "b.odp", "-t", "3", "-b", "100"],
    ["truncate", "a.odp", "-t", "3"],
    ["decode", "a.odp", "--device", "tpu"],
    ["info"],
    ["frobnicate"],
])
def test_usage_errors_exit_2(args, png, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = odp(*args)
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert "Traceback" not in r.output
    assert not (tmp_path / "b.odp").exists() and not (tmp_path / "a.odp").exists()


# --------------------------------------------------------------------------- corrupt files


def high_byte(span: tuple[int, int]) -> int:
    """Offset of the most significant byte of a layer's first 32-bit word. A range-coder stream is
    little-endian words read from the top: flipping this byte moves where the first symbols decode,
    while a flip in the low bits of a word (even the layer's very first byte) may decode the same tokens."""
    return span[0] + 3


def corruptions(data: bytes) -> dict[str, bytes]:
    magic = len(container.MAGIC)
    first_layer = helpers.header_end(data)
    spans = helpers.layer_spans(data)
    c = container.read(data)
    length_end = magic + 1  # the header length is a varint after the version byte
    while data[length_end] & 0x80:
        length_end += 1
    length_end += 1
    table = helpers.table_of(c)
    return {
        "wrong magic": b"\x89PNG\r\n\x1a\n" + data[8:],
        "empty": b"",
        "short magic": data[:5],
        "short header": data[: magic + 10],
        "header only": data[:first_layer],
        "header crc": helpers.flip(data, magic + 3),
        "future version": data[:magic] + bytes([container.BASE_VERSION + 1]) + data[magic + 1:],
        "first layer": helpers.flip(data, high_byte(spans[0])),
        "middle layer": helpers.flip(data, high_byte(spans[len(spans) // 2])),
        "foreign model": helpers.reheader(data, model_id=b"\x42" * container.MODEL_ID_BYTES),
        "huge size": helpers.reheader(data, width=65535, height=65535),
        "huge header length": data[:magic + 1] + helpers.varint(container.MAX_HEADER + 1) + data[length_end:],
        "huge layer length": helpers.assemble(
            helpers.header_fields(c.header, [(table[0][0], container.MAX_LAYER + 4, table[0][2])] + table[1:]),
            [x.data for x in c.layers]),
        "trailing bytes": data + b"\x00\x00",
    }


CORRUPTIONS = ["wrong magic", "empty", "short magic", "short header", "header only", "header crc", "future version",
               "first layer", "middle layer", "foreign model", "huge size", "huge header length", "huge layer length",
               "trailing bytes"]
EXPECTED = {"header only": "cut short", "header crc": "checksum", "future version": "version 5 is not supported",
            "first layer": "payload layer 0 does not decode", "middle layer": "does not decode",
            "foreign model": "42424242",
            "huge size": "exceeds the limit", "huge header length": "over the limit",
            "huge layer length": "over the limit",
            "trailing bytes": "unexpected bytes"}


def test_corruptions_are_what_they_say(small_odp):
    """The forged files differ from the good one only where intended (else the test below proves little)."""
    bad = corruptions(small_odp)
    assert container.read(bad["foreign model"]).header.model_id == b"\x42" * 4
    assert container.read(bad["foreign model"]).layers == container.read(small_odp).layers
    assert container.read(bad["huge size"], max_pixels=None).header.width == 65535
    assert bad["huge header length"][:5] == small_odp[:5] and bad["huge header length"].endswith(small_odp[6:])
    c = container.read(small_odp)  # the forger, given the real table, writes what the real writer wrote
    forged = helpers.assemble(helpers.header_fields(c.header, helpers.table_of(c)), [x.data for x in c.layers])
    assert forged == small_odp


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corrupt_file_gives_one_clean_line(kind, tmp_path, small_odp):
    bad = tmp_path / "bad.odp"
    bad.write_bytes(corruptions(small_odp)[kind])
    msgs = [assert_clean_error(odp("decode", bad, "--strict")),
            assert_clean_error(odp("info", bad, "--verify")),
            assert_clean_error(odp("info", bad, "--json", "--verify"))]
    if kind != "middle layer":  # a damaged later layer costs only itself and those after: see below
        msgs += [assert_clean_error(odp("decode", bad)),
                 assert_clean_error(odp("truncate", bad, "-o", tmp_path / "t.odp", "--bytes", "1000000"))]
    assert all(str(bad) in m for m in msgs)
    assert all(EXPECTED.get(kind, "") in m for m in msgs), msgs
    if kind == "foreign model":
        assert all("not installed" in m for m in msgs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.odp"]  # no output, no .part


def test_a_damaged_layer_costs_only_itself_and_those_after(tmp_path, small_odp):
    """No byte CRC in version 2: a flipped byte shows as the layer's tokens failing their check. Like a
    download cut short, the layers before it decode (one warning naming the loss, exit 0); --strict and
    info --verify refuse the file, naming the layer; the first layer damaged leaves nothing to show."""
    spans = helpers.layer_spans(small_odp)
    levels = [x.level for x in container.read(small_odp).layers]
    for i in (0, 1, len(spans) // 2, len(spans) - 1):
        bad = tmp_path / "bad.odp"
        bad.write_bytes(helpers.flip(small_odp, high_byte(spans[i])))
        for cmd in (["decode", bad, "--strict", "-o", tmp_path / "s.png"], ["info", bad, "--verify"]):
            assert_clean_error(odp(*cmd), contains=f"payload layer {i} does not decode")
        assert not (tmp_path / "s.png").exists()
        if i == 0:
            assert_clean_error(odp("decode", bad, "-o", tmp_path / "d.png"), contains="payload layer 0 does not decode")
            continue
        r = odp("decode", bad, "-o", tmp_path / "d.png", "-f")
        assert_ok(r)
        assert r.stderr.strip().splitlines() == [
            f"odp: warning: {bad}: payload layer {i} of {len(spans)} is damaged: decoding the {i} layers "
            f"before it ({r.stderr.split('(')[1].split(' tokens')[0]} tokens per tile on average)"]
        expected = coding.decode(stream.truncate(small_odp, level=levels[i - 1]), device="cpu")
        assert Image.open(tmp_path / "d.png").tobytes() == expected.tobytes()
        r = odp("truncate", bad, "-o", tmp_path / "t.odp", "--bytes", "1000000", "-f")
        assert_ok(r)
        assert "is damaged" in r.stderr
        assert (tmp_path / "t.odp").read_bytes() == stream.truncate(small_odp, level=levels[i - 1])
        assert_ok(odp("decode", bad, "-o", tmp_path / "d.png", "-f", "--quiet"))


def test_a_damaged_tiff_is_one_line_in_libtiffs_words(tmp_path, small_photo, capfd):
    """libtiff prints to file descriptor 2 and Pillow then says only 'decoder error -2'."""
    buf = io.BytesIO()
    small_photo.save(buf, "TIFF", compression="tiff_deflate")
    bad = bytearray(buf.getvalue())
    for i in range(16, len(bad) // 2):  # the deflate stream follows the 8-byte header
        bad[i] ^= 0x5A
    (tmp_path / "bad.tif").write_bytes(bytes(bad))
    small_photo.save(tmp_path / "whole.tif")
    (tmp_path / "cut.tif").write_bytes((tmp_path / "whole.tif").read_bytes()[:5000])
    line = assert_clean_error(odp("encode", tmp_path / "bad.tif"), contains="damaged TIFF file: ")
    assert "Error" not in line.split("damaged TIFF file: ")[0] and "decoder error" not in line
    assert capfd.readouterr().err == ""  # nothing from libtiff reached the terminal
    assert_clean_error(odp("encode", tmp_path / "cut.tif"), contains="damaged TIFF file: image file is truncated")


def test_the_pixel_limit_has_one_wording(tmp_path, small_photo, small_odp):
    """Ours, from every entry point, even past twice the limit where Pillow's own guard would speak."""
    small_photo.save(tmp_path / "a.png")  # 64x48 = 3072 pixels
    for limit in (3071, 1000):  # over the limit, and over twice it
        assert_clean_error(odp("encode", tmp_path / "a.png", "--max-pixels", limit),
                           contains=f"image of 64x48 pixels exceeds the limit of {limit} pixels")
    (tmp_path / "a.odp").write_bytes(small_odp)
    assert_clean_error(odp("decode", tmp_path / "a.odp", "-o", tmp_path / "d.png", "--max-pixels", 1000),
                       contains="image of 64x48 pixels exceeds the limit of 1000 pixels")
    with pytest.raises(ValueError, match="image of 64x48 pixels exceeds the limit of 1000 pixels"):
        import odp as api
        api.encode(small_photo, options=api.EncodeOptions(max_pixels=1000))


def test_an_opendocument_presentation_is_named_by_every_command(tmp_path):
    deck = tmp_path / "slides.odp"
    deck.write_bytes(b"PK\x03\x04" + bytes(60))
    for cmd in (["decode", deck], ["info", deck], ["info", deck, "--verify"], ["truncate", deck, "-o", tmp_path / "t.odp", "-t", "4"]):
        assert_clean_error(odp(*cmd), contains="OpenDocument presentation")


def test_every_short_prefix_gives_one_clean_line(tmp_path, small_odp):
    first_chunk_end = helpers.layer_spans(small_odp)[0][1]
    bad = tmp_path / "short.odp"
    for n in range(first_chunk_end):
        bad.write_bytes(small_odp[:n])
        assert_clean_error(odp("info", bad))
    assert_clean_error(odp("decode", bad), contains="cut short")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.odp"]


def test_missing_and_unreadable_inputs(tmp_path):
    assert_clean_error(odp("decode", tmp_path / "nope.odp"), contains="no such file")
    assert_clean_error(odp("info", tmp_path), contains="is a directory")
    assert_clean_error(odp("encode", tmp_path / "nope.png"), contains="no such file")
    (tmp_path / "cut.png").write_bytes(helpers.encode_bytes(Image.new("RGB", (300, 300), (1, 2, 3)), "PNG")[:60])
    assert_clean_error(odp("encode", tmp_path / "cut.png"))
    assert parts(tmp_path) == []


# --------------------------------------------------------------------------- real subprocesses


def run_odp(*args: str, cwd: Path, script: bool = False) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "odp"
    cmd = [str(exe)] if script else [sys.executable, "-m", "odp.cli.main"]
    env = dict(os.environ, PYTHONWARNINGS="default")
    return subprocess.run(cmd + [str(a) for a in args], cwd=cwd, capture_output=True, timeout=300, env=env)


def test_subprocess_corrupt_file(tmp_path, small_odp):
    (tmp_path / "bad.odp").write_bytes(helpers.flip(small_odp, 20))
    p = run_odp("decode", "bad.odp", "-o", "out.png", cwd=tmp_path)
    assert p.returncode == 1
    err = p.stderr.decode()
    assert "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and err.startswith("odp: error: bad.odp:")
    assert "checksum" in err
    assert p.stdout == b""
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bad.odp"]


def test_subprocess_failed_write_leaves_no_part_file(tmp_path, small_odp):
    (tmp_path / "a.odp").write_bytes(small_odp)
    (tmp_path / "taken").mkdir()
    p = run_odp("truncate", "a.odp", "-o", "taken", "-t", "5", "--force", cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    err = p.stderr.decode()
    assert "Traceback" not in err and err.startswith("odp: error: taken:")
    assert len(err.strip().splitlines()) == 1
    assert parts(tmp_path) == [] and list((tmp_path / "taken").iterdir()) == []
    # and the same command to a file works, leaving exactly that file
    p = run_odp("truncate", "a.odp", "-o", "b.odp", "-t", "5", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "b.odp").read_bytes() == stream.truncate(small_odp, tokens=5)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.odp", "b.odp", "taken"]


@pytest.mark.skipif(not (Path(sys.executable).parent / "odp").exists(), reason="no odp console script beside python")
def test_console_script_exit_codes(tmp_path):
    p = run_odp("--version", cwd=tmp_path, script=True)
    assert p.returncode == 0 and __version__ in p.stdout.decode()
    p = run_odp("truncate", "x.odp", "-o", "y.odp", cwd=tmp_path, script=True)  # neither --tokens nor --bytes
    assert p.returncode == 2 and b"Traceback" not in p.stderr
    p = run_odp("info", "missing.odp", cwd=tmp_path, script=True)
    assert p.returncode == 1
    assert p.stderr.decode().strip() == "odp: error: missing.odp: no such file"


# --------------------------------------------------------------------------- odd arguments (from review)


def test_bpp_must_be_finite(png, tmp_path):
    for value in ("inf", "nan", "-1"):
        r = odp("encode", png, "-o", tmp_path / "x.odp", "--bpp", value)
        assert r.exit_code == 2, (value, r.output)
    assert not (tmp_path / "x.odp").exists()


def test_decode_to_a_format_pillow_only_reads(odp_file, tmp_path):
    assert_clean_error(odp("decode", odp_file, "-o", tmp_path / "x.psd"), contains="cannot write")


def test_input_that_is_not_a_file_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_clean_error(odp("encode", "."))
    assert_clean_error(odp("decode", "."))


def test_batch_inputs_that_would_share_an_output(tmp_path, small_photo):
    small_photo.save(tmp_path / "a.png")
    small_photo.save(tmp_path / "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    r = odp("encode", tmp_path / "a.png", tmp_path / "a.jpg", "-o", out, "--force", "--tokens", "8")
    assert r.exit_code == 1
    assert "already the output of" in r.stderr
    assert [p.name for p in out.iterdir()] == ["a.odp"]


def test_junk_layers_with_a_valid_header_are_one_line(tmp_path, small_odp):
    """Layer bytes replaced by junk of the same lengths: the header still checks out, the token checks do not."""
    c = container.read(small_odp)
    junk = [bytes([0xFF]) * len(x.data) for x in c.layers]
    bad = tmp_path / "junk.odp"
    bad.write_bytes(helpers.with_layers(small_odp, junk))
    for cmd in (["decode", bad, "-o", tmp_path / "j.png"], ["info", bad, "--verify"],
                ["truncate", bad, "-o", tmp_path / "t.odp", "--tokens", "4"]):
        assert_clean_error(odp(*cmd), contains="does not decode")
    assert_ok(odp("info", bad))  # plain info reads the header alone: what the file says it holds
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.odp"]


def test_a_stage_naming_no_refinement_model_is_refused_in_one_line_where_pixels_are_wanted(tmp_path, small_odp):
    """A version-3 stage whose header names the first stage's own model (no refinement model): decoding
    refuses it plainly; truncating and listing its cuts need no network and work."""
    from dataclasses import replace as with_fields

    import helpers
    from odp.formats.container import Container

    c = container.read(small_odp)
    w, h = c.header.display_size
    stage = with_fields(c.header, width=2 * w, height=2 * h, display_width=w, display_height=h, kind=1,
                        weights=b"", caps=b"", version=container.STAGED_VERSION)
    c.stages.append(Container(stage, helpers.layers_for([1, 2])))
    staged = tmp_path / "staged.odp"
    staged.write_bytes(container.write(c))
    assert_clean_error(odp("decode", staged, "-o", tmp_path / "out.png"), contains="no refinement model")
    assert not (tmp_path / "out.png").exists()
    assert_ok(odp("truncate", staged, "-o", tmp_path / "t.odp", "--tokens", "4"))
    assert container.read((tmp_path / "t.odp").read_bytes()).header.version == container.VERSION
    r = odp("info", "--cuts", staged)
    assert_ok(r)
    assert "(format v3, first of 2 stages)" in r.output and "stage 2:" in r.output
    d = json.loads(odp("info", "--json", "--cuts", staged).output)
    assert d["stages"] == 2 and [x["stage"] for x in d["cuts"]][-1] == 2


def test_the_default_file_runs_from_thumbnail_to_photo_and_every_command_reads_it(tmp_path, photos):
    """`odp encode` makes one file through the first stage into the refinement stage (format version
    3): decode, truncate and info --cuts work on it, a cut inside the stage decodes to a picture
    between the first stage's and the whole file's, and --first-stage makes the first stage alone."""
    from odp.codec.quality import psnr

    src = tmp_path / "src.png"
    photos["astronaut"].save(src)
    assert_ok(odp("encode", src, "-o", tmp_path / "a.odp"))
    assert_ok(odp("encode", src, "-o", tmp_path / "first.odp", "--first-stage"))
    whole, first = (tmp_path / "a.odp").read_bytes(), (tmp_path / "first.odp").read_bytes()
    assert whole[4] == container.STAGED_VERSION and first[4] == container.VERSION and len(whole) > 2 * len(first)
    assert odp_api.truncate(whole, tokens=256) == first
    d = json.loads(odp("info", "--json", "--cuts", tmp_path / "a.odp").output)
    assert d["stages"] == 2 and d["refinements"][0]["coded_width"] == 2 * d["width"]
    stage_cuts = [c["bytes"] for c in d["cuts"] if c["stage"] == 2]
    middle = stage_cuts[len(stage_cuts) // 2]
    assert_ok(odp("truncate", tmp_path / "a.odp", "-o", tmp_path / "cut.odp", "--bytes", str(middle)))
    assert len((tmp_path / "cut.odp").read_bytes()) == middle
    ref = np.asarray(photos["astronaut"])
    scores = []
    for name in ("first", "cut", "a"):
        assert_ok(odp("decode", tmp_path / f"{name}.odp", "-o", tmp_path / f"{name}.png"))
        scores.append(psnr(ref, np.asarray(Image.open(tmp_path / f"{name}.png").convert("RGB"))))
    assert scores[0] < scores[1] < scores[2]
