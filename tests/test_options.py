"""EncodeOptions: every entry point's options, checked once, with one-line messages that name the option."""
from __future__ import annotations

import pytest

import odp
from odp.codec.options import QUALITY_BPP, EncodeOptions, quality_to_bpp


def test_defaults_keep_every_token_at_full_size():
    o = EncodeOptions()
    assert (o.tokens, o.bytes, o.target, o.scale, o.adaptive, o.metadata, o.device) == \
        (None, None, None, "auto", True, (), "auto")
    assert o.budget(768, 512) is None


@pytest.mark.parametrize("kw, option", [
    (dict(tokens=0), "tokens"), (dict(bytes=0), "bytes"), (dict(bpp=-1.0), "bpp"), (dict(bpp=float("nan")), "bpp"),
    (dict(quality=0), "quality"), (dict(quality=101), "quality"), (dict(psnr=0), "psnr"),
    (dict(msssim=1.5), "msssim"), (dict(scale=0), "scale"), (dict(scale=17), "scale"), (dict(scale="half"), "scale"),
    (dict(metadata=("xmp",)), "metadata"), (dict(device="tpu"), "device"), (dict(batch=0), "batch"),
])
def test_bad_values_name_their_option(kw, option):
    with pytest.raises(odp.OptionError) as e:
        EncodeOptions(**kw)
    assert e.value.option == option and "\n" not in str(e.value)


def test_one_size_goal_at_most():
    with pytest.raises(odp.OptionError, match="at most one of .*got tokens and bytes"):
        EncodeOptions(tokens=8, bytes=100)
    with pytest.raises(odp.OptionError, match="got quality and psnr"):
        EncodeOptions(quality=50, psnr=20)


def test_values_are_normalised():
    assert EncodeOptions(scale="PSNR").scale == "psnr" and EncodeOptions(scale="3").scale == 3
    assert EncodeOptions(scale="1/2").scale == 0.5 and EncodeOptions(scale=1 / 3).scale == 1 / 3
    assert EncodeOptions(metadata=("exif", "icc", "exif")).metadata == ("exif", "icc")
    assert EncodeOptions(metadata="icc").metadata == ("icc",)
    with pytest.raises(TypeError):
        EncodeOptions(tokens=True)  # a bool is not a count
    with pytest.raises(TypeError):
        EncodeOptions(tokens=2.5)


def test_budget_from_bytes_bpp_or_quality():
    assert EncodeOptions(bytes=1234).budget(768, 512) == 1234
    assert EncodeOptions(bpp=0.02).budget(768, 512) == int(0.02 * 768 * 512 / 8)
    assert EncodeOptions(quality=1).budget(1000, 1000) == int(QUALITY_BPP[0] * 1e6 / 8)
    assert quality_to_bpp(100) == pytest.approx(QUALITY_BPP[1])
    assert EncodeOptions(psnr=22).target == ("psnr", 22.0) and EncodeOptions(msssim=0.9).target == ("ms-ssim", 0.9)


def test_from_keywords_refuses_unknown_names():
    assert EncodeOptions.from_keywords({"tokens": 8}) == EncodeOptions(tokens=8)
    with pytest.raises(odp.OptionError, match="unknown option 'qualty'"):
        EncodeOptions.from_keywords({"qualty": 50})


def test_options_are_frozen():
    with pytest.raises(AttributeError):
        EncodeOptions().tokens = 3
