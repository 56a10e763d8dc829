"""The Pillow plugin (odp.formats.pillow): open by magic bytes, save by extension, truncated files."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest
from PIL import Image, UnidentifiedImageError

import odp
import odp.formats.pillow  # noqa: F401  (registers ODP with Pillow)
from odp.codec import coding


def test_registered_by_magic_extension_and_mime():
    assert Image.EXTENSION[".odp"] == "ODP"
    assert Image.MIME["ODP"] == "image/x-odp"
    assert "ODP" in Image.OPEN and "ODP" in Image.SAVE


def test_register_pillow_in_a_fresh_interpreter():
    code = "import odp; from PIL import Image; odp.register_pillow(); print(Image.EXTENSION['.odp'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ODP"


def test_open_reads_the_header_and_load_decodes(tmp_path, small_odp, model):
    path = tmp_path / "x.odp"  # also opened under another name: the magic bytes decide
    path.write_bytes(small_odp)
    for p in (path, io.BytesIO(small_odp)):
        with Image.open(p) as im:
            assert (im.format, im.size, im.mode) == ("ODP", (64, 48), "RGB")
            # version 2 names the model by its weights' sha256 prefix; one tile has no weights to allocate
            assert im.info["odp_model"] == model.sha256.hex()[:8] and im.info["odp_adaptive"] is False
            assert im.get_format_mimetype() == "image/x-odp"
            assert im.tobytes() == coding.decode(small_odp, device="cpu").tobytes()


def test_opens_version_1_and_adaptive_files(adaptive_odp, v1_model):
    from helpers import v1_file

    with Image.open(io.BytesIO(v1_file())) as im:
        assert (im.size, im.info["odp_model"], im.info["odp_adaptive"]) == ((320, 240), v1_model.name, False)
        im.odp_tokens = 16
        assert im.tobytes() == coding.decode(v1_file(), tokens=16, device="cpu").tobytes()
    with Image.open(io.BytesIO(adaptive_odp)) as im:
        assert im.size == (768, 512) and im.info["odp_adaptive"] is True
        im.odp_tokens = 16  # on average per tile
        assert im.tobytes() == odp.decode(odp.truncate(adaptive_odp, tokens=16), device="cpu").tobytes()


def test_save_with_tokens_and_bytes(tmp_path, small_photo, small_odp):
    small_photo.save(tmp_path / "a.odp", refine=False)
    assert (tmp_path / "a.odp").read_bytes() == small_odp
    small_photo.save(tmp_path / "staged.odp")  # the default: on into the refinement stage
    assert odp.info((tmp_path / "staged.odp").read_bytes()).stages == 2
    with Image.open(tmp_path / "staged.odp") as im:
        assert im.size == small_photo.size
        assert im.tobytes() == odp.decode((tmp_path / "staged.odp").read_bytes(), device="cpu").tobytes()
    small_photo.save(tmp_path / "b.odp", tokens=24, device="cpu")
    assert odp.info((tmp_path / "b.odp").read_bytes()).tokens == 24
    buf = io.BytesIO()
    small_photo.convert("RGBA").save(buf, format="ODP", bytes=150)
    assert len(buf.getvalue()) <= 150
    with Image.open(tmp_path / "b.odp") as im:
        assert im.tobytes() == odp.decode(small_odp, tokens=24, device="cpu").tobytes()


def test_save_with_quality_and_adaptive(tmp_path, adaptive_photo, encoded, astronaut):
    """save() takes odp.encode's quality= and adaptive= too."""
    adaptive_photo.save(tmp_path / "q.odp", quality=30, device="cpu")
    assert (tmp_path / "q.odp").read_bytes() == odp.encode(adaptive_photo, quality=30, device="cpu")
    astronaut.save(tmp_path / "u.odp", adaptive=False, refine=False)
    assert (tmp_path / "u.odp").read_bytes() == encoded["astronaut"]


def test_scaled_file_opens_at_its_display_size(tmp_path, adaptive_photo):
    adaptive_photo.save(tmp_path / "half.odp", tokens=16, adaptive=False, scale=2)
    im = Image.open(tmp_path / "half.odp")
    assert im.size == (768, 512) and im.info["odp_coded_size"] == (384, 256)
    im.load()
    assert im.size == (768, 512) and im.mode == "RGB"
    info = odp.info((tmp_path / "half.odp").read_bytes())
    assert (info.width, info.height, info.coded_width, info.coded_height) == (768, 512, 384, 256)


def test_greyscale_saves_and_opens_as_l(tmp_path, small_photo):
    path = tmp_path / "grey.odp"
    small_photo.convert("L").save(path, tokens=64)
    with Image.open(path) as im:
        assert im.mode == "L"  # from the header, before any decoding
        im.load()
        assert im.mode == "L" and im.size == small_photo.size
    assert odp.info(path.read_bytes()).gray


def test_truncated_file_decodes_what_arrived(small_odp):
    cut = small_odp[: len(small_odp) - 40]
    kept = odp.info(cut).tokens
    with Image.open(io.BytesIO(cut)) as im:
        with pytest.warns(odp.OdpWarning, match="cut short"):
            im.load()
        assert im.tobytes() == odp.decode(small_odp, tokens=kept, device="cpu").tobytes()


def test_odp_tokens_decodes_fewer(small_odp):
    with Image.open(io.BytesIO(small_odp)) as im:
        im.odp_tokens = 8
        assert im.tobytes() == odp.decode(small_odp, tokens=8, device="cpu").tobytes()


def test_thumbnail_uses_all_tokens(small_odp):
    full = odp.decode(small_odp, device="cpu")
    full.thumbnail((16, 16))
    with Image.open(io.BytesIO(small_odp)) as im:
        im.thumbnail((16, 16))
        assert im.size == (16, 12) and im.tobytes() == full.tobytes()


def test_errors_are_clear(small_odp):
    from helpers import reheader

    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(b"PK\x03\x04 an OpenDocument presentation"))
    with pytest.raises(odp.FormatError, match="checksum"):
        bad = bytearray(small_odp)
        bad[20] ^= 0xFF
        Image.open(io.BytesIO(bytes(bad)))
    with pytest.raises(odp.FormatError, match="cut short"):
        Image.open(io.BytesIO(small_odp[:20]))
    other = reheader(small_odp, model_id=bytes.fromhex("0badf00d"))
    with Image.open(io.BytesIO(other)) as im, pytest.raises(odp.ModelNotFound, match="0badf00d"):
        assert im.info["odp_model"] == "0badf00d"  # opening reads the header only: no model needed yet
        im.load()
    future = small_odp[:4] + bytes([5]) + small_odp[5:]  # a format version this reader does not know
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(future))


def test_save_refuses_an_unknown_option_before_any_work(tmp_path, small_photo, monkeypatch):
    """A misspelt keyword is refused (it used to be ignored silently), and before the network runs."""
    from odp.codec import coding as coding_module

    def never(*args, **kwargs):
        raise AssertionError("encoded despite a bad option")

    monkeypatch.setattr(coding_module, "encode", never)
    for bad in ({"qualty": 50}, {"tokens": 0}, {"quality": 150}, {"scale": "huge"}, {"tokens": 8, "bytes": 200}):
        with pytest.raises(odp.OptionError):
            small_photo.save(tmp_path / "x.odp", **bad)
        assert not (tmp_path / "x.odp").exists() or (tmp_path / "x.odp").stat().st_size == 0
