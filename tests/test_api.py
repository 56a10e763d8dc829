"""The public API in odp/__init__.py (docs/api.md's examples run in tests/test_docs.py)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import helpers
import odp
from odp.codec import coding, stream
from odp.formats import container



def test_import_is_cheap():
    code = "import sys, odp; print(sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_encode_matches_pipeline_and_decodes(small_photo, small_odp):
    data = odp.encode(small_photo, device="cpu", refine=False)
    assert data == small_odp
    staged = odp.encode(small_photo, device="cpu")  # the default goes on into the refinement stage
    assert staged == helpers.encode(small_photo, device="cpu", refine=True) and odp.info(staged).stages == 2
    assert odp.decode(data, device="cpu").tobytes() == coding.decode(small_odp, device="cpu").tobytes()


def test_array_and_tensor_inputs_give_the_same_file(small_photo, small_odp):
    a = np.asarray(small_photo)
    t = torch.from_numpy(a.copy()).permute(2, 0, 1)
    assert odp.encode(a, device="cpu", refine=False) == small_odp
    assert odp.encode(t, device="cpu", refine=False) == small_odp
    assert odp.encode(t.float() / 255, device="cpu", refine=False) == small_odp
    grey = np.asarray(small_photo.convert("L"))
    assert odp.encode(grey, device="cpu") == odp.encode(small_photo.convert("L"), device="cpu")
    assert odp.encode(torch.from_numpy(grey.copy()), device="cpu") == odp.encode(grey, device="cpu")


@pytest.mark.parametrize("bad, error, words", [
    (np.zeros((8, 8, 3), np.float32), TypeError, "uint8"),
    (np.zeros((8, 8, 2), np.uint8), ValueError, "HxWx3"),
    (np.zeros((0, 8, 3), np.uint8), ValueError, "empty"),
    (torch.zeros(1, 3, 8, 8), ValueError, "encode_batch"),
    (torch.full((3, 8, 8), 2.0), ValueError, "[0, 1]"),
    (torch.full((3, 8, 8), float("nan")), ValueError, "[0, 1]"),
    (torch.zeros(3, 8, 8, dtype=torch.int64), TypeError, "uint8"),
    ("photo.png", TypeError, "encode_file"),
    (42, TypeError, "PIL image"),
])
def test_bad_images_are_clear_errors(bad, error, words):
    with pytest.raises(error, match=re.escape(words)):
        odp.encode(bad, device="cpu")


def test_bad_arguments_are_clear_errors(small_photo, small_odp):
    with pytest.raises(ValueError, match="at most one"):
        odp.encode(small_photo, tokens=8, bytes=300)
    with pytest.raises(ValueError, match="at least 1"):
        odp.encode(small_photo, tokens=0)
    with pytest.raises(TypeError, match="int"):
        odp.decode(small_odp, tokens=2.5)
    with pytest.raises(ValueError, match="exactly one"):
        odp.truncate(small_odp)
    with pytest.raises(TypeError, match="decode_file"):
        odp.decode("photo.odp")
    with pytest.raises(odp.FormatError, match="magic"):
        odp.info(b"GIF89a" + bytes(40))
    with pytest.raises(ValueError, match="device"):
        odp.encode(small_photo, device="tpu")


def test_truncate_and_info(small_odp, model):
    cut = odp.truncate(small_odp, tokens=20)
    i = odp.info(cut)
    assert (i.width, i.height, i.tiles, i.tokens, i.stored_tokens, i.complete) == (64, 48, 1, 20, 20, True)
    assert (i.mean_tokens, i.adaptive, i.version, i.model_tokens) == (20, False, 2, 256)
    # the whole layers below 20 tokens are kept as they were, and one layer is coded up to 20
    assert i.layers == len([lv for lv in stream.LEVELS if lv < 20]) + 1
    # version 2 names the model by the first 4 bytes of its weights' sha256 alone
    assert i.model == "" and i.weights_sha256 == model.sha256.hex()[:8]
    assert i.file_bytes == len(cut) and i.payload_bytes == container.read(cut).payload_bytes
    assert i.bits_per_token == pytest.approx(i.payload_bytes * 8 / 20)
    assert i.bpp == pytest.approx(len(cut) * 8 / (64 * 48))
    assert len(odp.truncate(small_odp, bytes=200)) <= 200
    with pytest.raises(AttributeError):
        i.tokens = 3  # frozen


def test_cut_points_are_the_sizes_truncate_keeps_whole(adaptive_odp):
    """Each cut point is the file truncate makes there, byte count and tokens alike, found from the
    container alone; a version-1 file's are those of its version-2 conversion."""
    v1 = (Path(__file__).parent / "data" / "astronaut-odp-small-v1.odp").read_bytes()
    for data in (adaptive_odp, v1):
        points = odp.cut_points(data)
        assert len(points) == odp.info(data).layers and points == sorted(points)
        for n, tokens in points:
            cut = odp.truncate(data, bytes=n)
            assert len(cut) == n and odp.info(cut).mean_tokens == pytest.approx(tokens)
    assert points[-1][0] <= len(v1) + 2 * len(points)  # v1 chunks gain a 2-byte token check each


def test_info_and_decode_of_a_file_cut_short(small_odp):
    cut = small_odp[: len(small_odp) - 30]
    i = odp.info(cut)
    whole = odp.info(small_odp).tokens
    assert not i.complete and i.stored_tokens == whole and 0 < i.tokens < whole
    with pytest.warns(odp.OdpWarning, match="cut short"):
        im = odp.decode(cut, device="cpu")
    assert im.tobytes() == odp.decode(small_odp, tokens=i.tokens, device="cpu").tobytes()


def test_missing_model_is_named(small_odp):
    from helpers import reheader

    other = reheader(small_odp, model_id=bytes.fromhex("0badf00d"))  # a valid header naming another model
    assert odp.info(other).weights_sha256 == "0badf00d"
    with pytest.raises(odp.ModelNotFound, match="0badf00d.*not installed"):
        odp.decode(other)


def test_version_1_file(v1_model):
    from helpers import v1_file

    i = odp.info(v1_file())
    assert (i.version, i.width, i.height, i.tiles, i.tokens, i.mean_tokens, i.layers) == (1, 320, 240, 2, 64, 64, 8)
    assert i.model == v1_model.name and i.weights_sha256 == v1_model.sha256.hex() and not i.adaptive
    new = odp.truncate(v1_file(), tokens=64)  # written as version 2, the same tokens
    assert odp.info(new).version == 2 and odp.info(new).tokens == 64
    assert odp.decode(new, device="cpu").tobytes() == odp.decode(v1_file(), device="cpu").tobytes()


def test_adaptive_files_count_tokens_on_average(adaptive_odp):
    """Tiles of one file keep different numbers of tokens: `tokens=` is then a mean per tile."""
    i = odp.info(adaptive_odp)
    limits = container.read(adaptive_odp).header.limits  # all tokens up to each tile's cap
    assert i.adaptive and i.tiles == 6 and i.tokens == i.stored_tokens == max(limits) <= i.model_tokens == 256
    assert i.mean_tokens == sum(limits) / 6
    cut = odp.truncate(adaptive_odp, tokens=16)
    j = odp.info(cut)
    c = container.read(cut)
    assert j.adaptive and j.mean_tokens <= 16 < sum(c.header.counts(c.level + 1)) / 6  # the most within 16
    assert j.tokens == max(c.header.counts(c.level)) > 16  # the fullest tile keeps more than the mean
    assert j.bits_per_token == pytest.approx(j.payload_bytes * 8 / sum(c.header.counts(c.level)))
    assert odp.decode(adaptive_odp, tokens=16, device="cpu").tobytes() == odp.decode(cut, device="cpu").tobytes()


def test_encode_adaptive_switch(astronaut, encoded):
    assert odp.encode(astronaut, adaptive=False, device="cpu", refine=False) == encoded["astronaut"]
    a = odp.encode(astronaut, tokens=20, device="cpu")  # by need: the two tiles get different counts
    c = container.read(a)
    assert c.header.adaptive and len(set(c.header.counts(c.level))) == 2 and c.mean_tokens <= 20
    assert odp.info(odp.encode(astronaut, tokens=20, adaptive=False, device="cpu")).tokens == 20


def test_encode_batch_equals_one_by_one(astronaut, coffee, small_photo, encoded):
    files = odp.encode_batch([astronaut, coffee, np.asarray(small_photo)], device="cpu", batch=4, adaptive=False,
                             refine=False)
    assert files[0] == encoded["astronaut"] and files[1] == encoded["coffee"]
    by_need = odp.encode_batch([coffee, astronaut], device="cpu", batch=3)  # encode()'s default: adaptive
    assert by_need == [odp.encode(coffee, device="cpu"), odp.encode(astronaut, device="cpu")]
    assert odp.decode(files[2], device="cpu").size == small_photo.size
    assert odp.encode_batch([], device="cpu") == []
    cut = odp.encode_batch([coffee, astronaut], tokens=16, device="cpu", batch=3, adaptive=False)
    assert cut == [odp.truncate(encoded["coffee"], tokens=16), odp.truncate(encoded["astronaut"], tokens=16)]


def test_encode_groups_batches_a_stream_and_leaves_a_failing_group_to_each_alone(astronaut, coffee, encoded,
                                                                                    monkeypatch):
    from odp.codec import coding

    opts = odp.EncodeOptions(device="cpu", adaptive=False, refine=False)
    groups = list(odp.encode_groups(iter([("a", astronaut), ("c", coffee)]), opts))
    assert [[(k, f) for k, _, f in g] for g in groups] == [[("a", encoded["astronaut"]), ("c", encoded["coffee"])]]
    monkeypatch.setattr(coding, "GROUP_PIXELS", 1)  # every image fills a group alone: nothing batched
    alone = list(odp.encode_groups([("a", astronaut), ("c", coffee)], opts))
    assert [[k for k, _, f in g if f is None] for g in alone] == [["a"], ["c"]]
    monkeypatch.setattr(coding, "GROUP_PIXELS", 10**9)
    wide = np.zeros((16, 8000, 3), np.uint8)  # 32 tiles: 60 bytes cannot hold 1 token each at full size
    opts = odp.EncodeOptions(device="cpu", bytes=60, scale=1)
    failed = list(odp.encode_groups([("a", astronaut), ("wide", wide)], opts))
    assert [(k, f) for k, _, f in failed[0]] == [("a", None), ("wide", None)]  # the batch failed: each alone
    assert len(odp.encode(astronaut, options=opts)) <= 60


def test_file_helpers_write_atomically(tmp_path, small_photo):
    src = tmp_path / "in.png"
    small_photo.save(src)
    out = odp.encode_file(src, tokens=32, device="cpu")
    assert out == tmp_path / "in.odp" and odp.info(out.read_bytes()).tokens == 32
    with pytest.raises(FileExistsError):
        odp.encode_file(src, device="cpu")
    with pytest.raises(FileExistsError):
        odp.decode_file(out, device="cpu")  # the default output, in.png, exists
    assert Image.open(src).tobytes() == small_photo.tobytes()
    png = odp.decode_file(out, tmp_path / "back.png", device="cpu")
    assert Image.open(png).size == small_photo.size
    assert odp.decode_file(out, png, tokens=8, device="cpu", overwrite=True) == png


def test_decoded_pngs_trade_a_little_size_for_speed(tmp_path, small_odp):
    """decode_file (and `odp decode`) write what save_decoded writes: the decoded pixels exactly, as a fast
    PNG (zlib level 1) a little larger than Pillow's default (14% for this small, smooth picture; 5% for the
    768x512 test photo's default file)."""
    import io

    src = tmp_path / "a.odp"
    src.write_bytes(small_odp)
    png = odp.decode_file(src, tmp_path / "a.png", device="cpu")
    im = odp.decode(small_odp, device="cpu")
    buf, default = io.BytesIO(), io.BytesIO()
    odp.save_decoded(im, buf)
    im.save(default, "PNG")
    assert png.read_bytes() == buf.getvalue() != default.getvalue()
    assert Image.open(png).tobytes() == im.tobytes()
    assert len(default.getvalue()) < len(buf.getvalue()) < 1.25 * len(default.getvalue())


def test_decode_file_writes_by_extension(tmp_path, small_odp):
    src = tmp_path / "a.odp"
    src.write_bytes(small_odp)
    out = odp.decode_file(src, tmp_path / "a.webp", tokens=8, device="cpu")
    assert Image.open(out).format == "WEBP"
    with pytest.raises(ValueError, match="cannot write"):
        odp.decode_file(src, tmp_path / "a.xyz")
    small = odp.truncate_file(src, tmp_path / "b.odp", tokens=8)
    assert odp.info(small.read_bytes()).tokens == 8
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_rate_control_options_match_the_pipeline(astronaut):

    assert odp.encode(astronaut, quality=70, device="cpu") == helpers.encode(astronaut, quality=70, device="cpu",
                                                                             refine=True)
    assert odp.encode(astronaut, psnr=15.0, device="cpu") == helpers.encode(astronaut, target=("psnr", 15.0),
                                                                               device="cpu")
    with pytest.raises(ValueError, match="at most one"):
        odp.encode(astronaut, tokens=8, quality=50)


def test_options_object_gives_the_same_file(small_photo, small_odp):
    assert odp.encode(small_photo, options=odp.EncodeOptions(refine=False)) == small_odp
    assert odp.encode(small_photo, tokens=8) == odp.encode(small_photo, options=odp.EncodeOptions(tokens=8))


def test_more_tokens_than_the_model_makes_warns_once(small_photo, small_odp, model):
    with pytest.warns(odp.OdpWarning, match=f"the model makes {model.config.tokens} tokens per tile"):
        assert odp.encode(small_photo, tokens=model.config.tokens + 44) == small_odp


def test_encoding_once_cuts_like_encode(astronaut, adaptive_photo):
    enc = odp.Encoding(astronaut, device="cpu")
    assert enc.size == (320, 240) and enc.model_tokens == 256 and enc.pixels.shape == (240, 320, 3)
    assert enc.whole == odp.encode(astronaut, device="cpu")
    assert enc.with_tokens(12) == odp.encode(astronaut, tokens=12, device="cpu")
    assert enc.within(400) == odp.encode(astronaut, bytes=400, device="cpu")
    assert enc.scales_encoded == [1]  # the budgets fit at full size: nothing smaller was encoded
    enc = odp.Encoding(adaptive_photo, adaptive=False, device="cpu")
    least = len(odp.truncate(enc.whole, layers=1))
    small = enc.within(least - 1)  # below one token per full-size tile: a smaller coding scale
    assert len(small) < least and enc.scales_encoded == [1, 2] and odp.info(small).coded_width == 384


def test_verify_model_of_and_model_info(small_odp, model):
    odp.verify(small_odp)
    cut = small_odp[:len(small_odp) - 3]
    with pytest.raises(odp.FormatError, match="cut short"):
        odp.verify(cut)
    with pytest.warns(odp.OdpWarning, match="cut short"):
        odp.verify(cut, whole=False)  # the layers that arrived decode
    m = odp.model_of(small_odp)
    assert (m.name, m.weights_sha256, m.tokens, m.codebook_size) == \
        (model.name, model.sha256.hex(), model.config.tokens, model.config.codebook_size)
    assert odp.model_info() == m and odp.model_info("odp-small-v1").name == "odp-small-v1"
    with pytest.raises(odp.ModelNotFound, match="not installed"):
        odp.model_info("odp-huge-v9")


def test_truncate_to_the_files_own_layers(adaptive_odp):
    i = odp.info(adaptive_odp)
    assert list(i.truncation_points) == sorted(i.truncation_points) and i.tokens_min <= i.tokens_max
    for n in (1, 3, i.layers):
        cut = odp.truncate(adaptive_odp, layers=n)
        assert odp.info(cut).truncation_points == i.truncation_points[:n]
        assert adaptive_odp.startswith(cut[-20:]) or cut == adaptive_odp or len(cut) < len(adaptive_odp)
    assert odp.truncate(adaptive_odp, layers=i.layers + 5) == odp.truncate(adaptive_odp, layers=i.layers)
    with pytest.raises(odp.OptionError, match="exactly one"):
        odp.truncate(adaptive_odp, tokens=4, layers=2)


def test_pixel_limit_and_is_odp(small_odp, monkeypatch):
    monkeypatch.delenv("ODP_MAX_PIXELS", raising=False)
    assert odp.pixel_limit() == 1 << 28 and odp.pixel_limit(1000) == 1000
    monkeypatch.setenv("ODP_MAX_PIXELS", "5000")
    assert odp.pixel_limit() == 5000
    assert odp.is_odp(small_odp[:16]) and not odp.is_odp(b"GIF89a" + bytes(10))
