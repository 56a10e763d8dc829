"""End to end: photo -> .odp bytes -> photo, truncation, input modes, corrupt files.

Nothing here depends on how well the shipped weights are trained, except
test_quality_improves_with_tokens, which states what a trained model must do.
"""
from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, TiffImagePlugin

import helpers
from odp.codec import allocation, coding, engine, errors, imaging, options, ratecontrol, stream, weights
from odp.codec.quality import psnr
from odp.codec.errors import OdpWarning
from odp.codec.training.train import DECODER_PREFIXES
from odp.codec.errors import ModelNotFound
from odp.formats import container
from odp.formats.container import Container, FormatError


@pytest.fixture(scope="module")
def decoded(encoded):
    """decoded(name, k): the decode of a test photo at k tokens per tile, computed once."""
    cache: dict = {}

    def get(name: str, k: int | None = None) -> Image.Image:
        if (name, k) not in cache:
            cache[name, k] = coding.decode(encoded[name], tokens=k, device="cpu")
        return cache[name, k]

    return get


def decode(data: bytes, tokens: int | None = None) -> Image.Image:
    return coding.decode(data, tokens=tokens, device="cpu")


def kept(data: bytes) -> int:
    return container.read(data).kept


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_round_trip_real_photo(name, photos, encoded, decoded, model):
    im, data = photos[name], encoded[name]
    h = container.read(data).header
    assert (h.width, h.height) == im.size
    assert container.read(data).kept == model.config.tokens and h.version == container.VERSION
    out = decoded(name)
    assert out.mode == "RGB" and out.size == im.size
    assert math.isfinite(helpers.psnr(out, im))
    assert helpers.psnr(out, im) > 0


def test_decode_is_deterministic(encoded, decoded):
    again = decode(encoded["coffee"])
    assert again.tobytes() == decoded("coffee").tobytes()


def test_encode_is_deterministic(coffee, encoded, model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", OdpWarning)  # an opaque RGB photo gives no warning
        assert helpers.encode(coffee, model=model, device="cpu", adaptive=False) == encoded["coffee"]
        assert helpers.encode(coffee, model=model, device="cpu") == helpers.encode(coffee, model=model, device="cpu")


def test_encode_uses_the_default_model(small_photo, small_odp):
    assert helpers.encode(small_photo, device="cpu") == small_odp


def test_batch_size_barely_changes_the_tokens(astronaut, encoded, model):
    """Batching changes float summation order only: a latent lying within ~1e-5 of a rounding
    boundary may flip, so the tokens are the same up to a rare exception, not guaranteed equal."""
    data = helpers.encode(astronaut, model=model, device="cpu", batch=1, adaptive=False)
    a = stream.read_tokens(data)[2]
    b = stream.read_tokens(encoded["astronaut"])[2]
    assert a.shape == b.shape
    assert (a == b).mean() >= 0.98


def test_decode_batch_size_barely_changes_pixels(encoded, decoded):
    """Same tokens, other batch size: equal up to float rounding (a level here and there)."""
    out = np.asarray(coding.decode(encoded["astronaut"], device="cpu", batch=1), dtype=np.int32)
    ref = np.asarray(decoded("astronaut"), dtype=np.int32)
    diff = np.abs(out - ref)
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01


def test_encode_with_tokens_or_bytes(small_photo, small_odp, model):
    assert helpers.encode(small_photo, tokens=13, model=model, device="cpu") == stream.truncate(small_odp, tokens=13)
    budget = len(small_odp) // 3
    assert helpers.encode(small_photo, max_bytes=budget, model=model, device="cpu") == \
        stream.truncate(small_odp, max_bytes=budget)


# --------------------------------------------------------------------------- truncation


def test_truncate_without_limits_is_identity(encoded):
    for data in encoded.values():
        assert stream.truncate(data) == data
        assert stream.truncate(data, tokens=10**6) == data
        assert stream.truncate(data, max_bytes=len(data)) == data


@pytest.mark.parametrize("n", [1, 5, 8, 13, 100])
def test_truncate_equals_decoding_fewer_tokens(n, encoded, decoded):
    data = encoded["coffee"]
    cut = stream.truncate(data, tokens=n)
    assert kept(cut) == n
    assert decode(cut).tobytes() == decoded("coffee", n).tobytes()


def test_truncate_keeps_exactly_the_first_tokens(encoded, model):
    data = encoded["astronaut"]
    _, _, full, counts = stream.read_tokens(data)
    assert full.shape == (2, model.config.tokens) and list(counts) == [model.config.tokens] * 2
    layers = container.read(data).layers
    for n in sorted({1, 2, 7, 8, 9, 15, 16, 17, 63, 64, 65, 200, 255, full.shape[1]}):
        cut = stream.truncate(data, tokens=n)
        c, _, toks, counts = stream.read_tokens(cut)
        assert list(counts) == [n, n]
        np.testing.assert_array_equal(toks[:, :n], full[:, :n])
        np.testing.assert_array_equal(stream.read_tokens(data, tokens=n)[2][:, :n], full[:, :n])
        assert c.complete and c.kept == n
        # whole layers are carried over byte for byte; only a partial last layer is re-coded
        whole = [x for x in layers if x.level <= n]
        assert c.layers[:len(whole)] == whole
        assert len(cut) <= len(data)


def test_truncate_to_bytes_is_the_largest_that_fits(encoded):
    data = encoded["astronaut"]
    smallest = len(stream.truncate(data, tokens=1))
    full = kept(data)
    for frac in (0.0, 0.1, 0.33, 0.5, 0.77, 0.99):
        budget = smallest + int(frac * (len(data) - smallest))
        cut = stream.truncate(data, max_bytes=budget)
        k = kept(cut)
        assert len(cut) <= budget
        assert cut == stream.truncate(data, tokens=k)
        if k < full:
            assert len(stream.truncate(data, tokens=k + 1)) > budget


def test_truncate_decodes_only_the_layers_it_keeps(adaptive_odp):
    """Cutting to a size reads just the layers that size can hold (the context model is slow), so a
    damaged later layer does not stop it; keeping that layer does."""
    spans = helpers.layer_spans(adaptive_odp)
    bad = helpers.flip(adaptive_odp, spans[-1][0] + 1, 0x10)
    for args in ({"tokens": 8}, {"max_bytes": 400}, {"level": container.read(adaptive_odp).layers[3].level}):
        assert stream.truncate(bad, **args) == stream.truncate(adaptive_odp, **args)
    with pytest.warns(OdpWarning, match=f"layer {len(spans) - 1} of {len(spans)} is damaged"):
        assert stream.truncate(bad) == stream.truncate(adaptive_odp, level=container.read(adaptive_odp).layers[-2].level)


def test_truncate_to_too_few_bytes(encoded):
    data = encoded["coffee"]
    smallest = len(stream.truncate(data, tokens=1))
    with pytest.raises(ValueError, match="cannot hold even 1 token"):
        stream.truncate(data, max_bytes=smallest - 1)
    assert len(stream.truncate(data, max_bytes=smallest)) == smallest


@pytest.mark.parametrize("scale", ["auto", 1, 2])
def test_a_budget_below_the_smallest_file_is_refused_before_the_network_runs(scale, coffee, model, monkeypatch):
    """least_bytes bounds every file of the image from below, and the bound is tight for one tile."""
    entry = model.entry
    least = ratecontrol.least_bytes(*coffee.size, entry, ratecontrol.scales_for(*coffee.size, entry.tile)
                                    if scale == "auto" else [scale])
    monkeypatch.setattr(engine.Engine, "encode", lambda *a, **k: pytest.fail("the network ran"))
    with pytest.raises(errors.OptionError, match=f"below the smallest ODP file of a 200x150 image \\({least} bytes"):
        coding.encode(coffee, options.EncodeOptions(bytes=least - 1, scale=scale), model)
    with pytest.raises(errors.OptionError) as e:
        coding.encode(coffee, options.EncodeOptions(bpp=0.0001, scale=scale), model)
    assert e.value.option == "bpp"
    monkeypatch.undo()
    data = coding.encode(coffee, options.EncodeOptions(bytes=least, scale=scale), model)
    assert len(data) <= least  # one tile: the bound is met exactly


def test_truncate_rejects_zero_tokens(encoded):
    with pytest.raises(ValueError):
        stream.truncate(encoded["coffee"], tokens=0)


def test_sizes_grow_with_tokens(encoded):
    data = encoded["astronaut"]
    sizes = [len(stream.truncate(data, tokens=k)) for k in range(1, kept(data) + 1, 5)]
    assert sizes == sorted(sizes)


def test_truncating_a_truncated_file(encoded):
    data = encoded["astronaut"]
    once = stream.truncate(data, tokens=100)
    assert stream.truncate(once, tokens=13) == stream.truncate(data, tokens=13)
    assert stream.truncate(once, tokens=100) == once
    assert stream.truncate(once, tokens=200) == once  # cannot grow back
    budget = len(once) // 2
    by_bytes = stream.truncate(once, max_bytes=budget)
    assert by_bytes == stream.truncate(data, max_bytes=budget)
    assert stream.truncate(stream.truncate(by_bytes, tokens=3), tokens=2) == stream.truncate(data, tokens=2)


def test_truncate_keeps_metadata(small_photo, model):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    im = small_photo.copy()
    im.info["icc_profile"] = icc
    data = helpers.encode(im, model=model, device="cpu", metadata=("icc",))
    cut = stream.truncate(data, tokens=3)
    assert container.read(cut).header.icc == icc
    assert len(stream.truncate(data, max_bytes=len(cut))) <= len(cut)


# --------------------------------------------------------------------------- adaptive allocation


def test_adaptive_file_gives_tiles_tokens_by_need(adaptive_odp, model):
    c = container.read(adaptive_odp)
    h = c.header
    assert h.adaptive and len(h.weights) == h.tiles == 6 and max(h.weights) == 255 and min(h.weights) < 255
    assert c.level == h.full_level and h.counts(c.level) == h.limits
    assert all(1 <= n <= model.config.tokens for n in h.limits)
    for level in (1, 10, 100):
        counts = h.counts(level)
        assert all(1 <= n <= model.config.tokens for n in counts) and len(set(counts)) > 1 or level == 1


def test_adaptive_caps_stop_tiles_where_later_tokens_hurt(adaptive_odp, adaptive_photo, model):
    """A capped tile decodes with less error from its cap's tokens than from all K (what a cap is for)."""
    h = container.read(adaptive_odp).header
    _, _, toks, _ = stream.read_tokens(adaptive_odp)
    pixels = imaging.prepare(adaptive_photo).pixels
    capped = [t for t, n in enumerate(h.limits) if n < h.tokens]
    if not capped:
        pytest.skip("no tile of this photo is capped")
    net = engine.Engine(model.entry, "cpu", 4)  # the network the file was made with (ONNX on a CPU)
    full = np.asarray(net.encode(pixels))
    for t in capped:
        at_cap = net.tile_errors(full, pixels, np.array([t]), h.limits[t])[0]
        at_k = net.tile_errors(full, pixels, np.array([t]), h.tokens)[0]
        assert at_cap < at_k
        np.testing.assert_array_equal(toks[t, :h.limits[t]], full[t, :h.limits[t]])


def test_a_lone_tile_is_capped_too(small_photo, small_odp, model):
    """A one-tile image is capped too: its file ends at its count of least error (needing neither
    weights nor the cap field) and decodes no worse than the uniform file cut at any count the
    encoder weighs, so keeping more of it never costs quality."""
    c = container.read(small_odp)
    assert c.header.tiles == 1 and not c.header.adaptive and c.level < c.header.tokens
    uniform = helpers.encode(small_photo, model=model, device="cpu", adaptive=False)
    pixels = imaging.prepare(small_photo).pixels.astype(float)

    def error(data, **cut):
        return ((np.asarray(coding.decode(data, device="cpu", **cut), float) - pixels) ** 2).mean()

    whole = error(small_odp)
    assert all(whole <= error(uniform, tokens=k) for k in allocation.ALLOCATION_GRID)


def test_a_cut_below_every_cap_leaves_the_caps_out(adaptive_odp):
    """Caps only matter once a tile reaches its own: a smaller cut drops them (a byte per tile) and
    decodes the same tokens; the whole file keeps them."""
    h = container.read(adaptive_odp).header
    assert h.caps and h.weights and min(h.limits) > 8
    cut = stream.truncate(adaptive_odp, tokens=8)
    c = container.read(cut)
    assert not c.header.caps and c.header.weights == h.weights
    assert len(cut) == len(container.write(replace(c, header=replace(c.header, caps=h.caps)))) - h.tiles
    np.testing.assert_array_equal(stream.read_tokens(cut)[3], h.counts(c.level))
    assert coding.decode(cut, device="cpu").tobytes() == coding.decode(adaptive_odp, tokens=8, device="cpu").tobytes()
    assert container.read(stream.truncate(adaptive_odp, level=h.full_level)).header.caps == h.caps


def test_adaptive_truncation_is_a_cut_and_fits(adaptive_odp):
    data, layers = adaptive_odp, container.read(adaptive_odp).layers
    _, _, full, _ = stream.read_tokens(data)
    for budget in (200, 500, 1000, len(data) - 1):
        cut = stream.truncate(data, max_bytes=budget)
        c = container.read(cut)
        assert len(cut) <= budget
        assert c.layers[:-1] == [x for x in layers if x.level < c.level][:len(c.layers) - 1]
        _, _, toks, counts = stream.read_tokens(cut)
        for t, n in enumerate(counts):  # each tile keeps a prefix of its tokens
            np.testing.assert_array_equal(toks[t, :n], full[t, :n])
        if c.level < layers[-1].level:  # the next level would not fit
            assert len(stream.truncate(data, level=c.level + 1)) > budget
    for k in (1, 5, 40):
        assert container.read(stream.truncate(data, tokens=k)).mean_tokens <= k


def test_adaptive_raw_prefix_decodes_as_truncation(adaptive_odp):
    c = container.read(adaptive_odp)
    spans = helpers.layer_spans(adaptive_odp)
    i = len(spans) // 2
    with pytest.warns(OdpWarning, match="cut short"):
        out = decode(adaptive_odp[:spans[i][1] + 3])
    assert out.tobytes() == decode(stream.truncate(adaptive_odp, level=c.layers[i].level)).tobytes()


def test_uniform_encode_is_one_weight(adaptive_photo, model):
    data = helpers.encode(adaptive_photo.crop((0, 0, 512, 256)), model=model, device="cpu", adaptive=False)
    assert not container.read(data).header.adaptive


# --------------------------------------------------------------------------- quality


def test_quality_improves_with_tokens(photos, decoded):
    """Mean MSE over the test photos must not rise as more tokens are decoded.

    This depends on the trained weights (a barely trained placeholder may fail it).
    """
    ks = [8, 32, 128, 256]
    means = [np.mean([helpers.mse(decoded(name, k), im) for name, im in photos.items()]) for k in ks]
    assert all(a >= b for a, b in zip(means, means[1:])), dict(zip(ks, means))


# --------------------------------------------------------------------------- odd sizes


@pytest.mark.parametrize("w, h", [(1, 1), (17, 300), (3000, 5)])
def test_odd_sizes(w, h, astronaut, model):
    im = astronaut.resize((max(w, 320), max(h, 240))).crop((0, 0, w, h))
    assert im.size == (w, h)
    data = helpers.encode(im, model=model, device="cpu")
    hd = container.read(data).header
    assert (hd.width, hd.height) == (w, h)
    assert hd.tiles == -(-w // 256) * -(-h // 256)
    out = decode(stream.truncate(data, tokens=16))
    assert out.size == (w, h) and out.mode == "RGB"


# --------------------------------------------------------------------------- input modes (prepare)


def prepared(im: Image.Image, warn: bool = False) -> np.ndarray:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = imaging.prepare(im)
    odp = [w for w in caught if issubclass(w.category, OdpWarning)]
    assert bool(odp) == warn, [str(w.message) for w in odp]
    if warn:
        assert "alpha" in str(odp[0].message)
    assert p.pixels.dtype == np.uint8 and p.pixels.shape == (im.height, im.width, 3)
    assert p.pixels.flags.c_contiguous
    return p.pixels


def test_mode_rgb(small_photo):
    np.testing.assert_array_equal(prepared(small_photo), np.asarray(small_photo))


def test_mode_rgba_with_transparency_is_flattened_onto_white(small_photo):
    rgb = np.asarray(small_photo).astype(np.int32)
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:10] = 0      # fully transparent rows
    alpha[10:20] = 128  # half transparent
    im = Image.fromarray(np.dstack([rgb.astype(np.uint8), alpha]), "RGBA")
    px = prepared(im, warn=True).astype(np.int32)
    assert (px[:10] == 255).all()
    np.testing.assert_array_equal(px[20:], rgb[20:])
    blend = (rgb[10:20] * 128 + 255 * 127) / 255
    assert np.abs(px[10:20] - blend).max() <= 1


def test_mode_rgba_opaque_gives_no_warning(small_photo):
    np.testing.assert_array_equal(prepared(small_photo.convert("RGBA")), np.asarray(small_photo))


def test_mode_l(small_photo):
    g = small_photo.convert("L")
    px = prepared(g)
    for ch in range(3):
        np.testing.assert_array_equal(px[..., ch], np.asarray(g))


def test_mode_la(small_photo):
    g = small_photo.convert("L")
    a = Image.new("L", g.size, 255)
    a.paste(0, (0, 0, 5, 5))
    px = prepared(Image.merge("LA", (g, a)), warn=True)
    assert (px[:5, :5] == 255).all()
    np.testing.assert_array_equal(px[5:, :, 0], np.asarray(g)[5:])
    prepared(Image.merge("LA", (g, Image.new("L", g.size, 255))))  # opaque: no warning


def test_mode_p_without_transparency(small_photo):
    p = small_photo.convert("P", palette=Image.ADAPTIVE, colors=32)
    assert "transparency" not in p.info
    np.testing.assert_array_equal(prepared(p), np.asarray(p.convert("RGB")))


def test_mode_p_with_transparency(small_photo):
    p = small_photo.convert("P", palette=Image.ADAPTIVE, colors=32)
    idx = np.asarray(p).copy()
    idx[:3] = 32  # an unused palette entry, declared transparent
    q = Image.fromarray(idx, "P")
    q.putpalette(p.getpalette()[:96] + [1, 2, 3])
    q.info["transparency"] = 32
    # round trip through PNG so the transparency is how a decoder reports it
    q = Image.open(io.BytesIO(helpers.encode_bytes(q, "PNG", transparency=32)))
    assert q.mode == "P" and "transparency" in q.info
    px = prepared(q, warn=True)
    assert (px[:3] == 255).all()
    np.testing.assert_array_equal(px[3:], np.asarray(p.convert("RGB"))[3:])


def test_mode_p_with_unused_transparency_gives_no_warning(small_photo):
    p = small_photo.convert("P", palette=Image.ADAPTIVE, colors=32)
    q = Image.open(io.BytesIO(helpers.encode_bytes(p, "PNG", transparency=200)))
    assert "transparency" in q.info
    np.testing.assert_array_equal(prepared(q), np.asarray(p.convert("RGB")))


def test_mode_i16_png_is_scaled_not_clipped():
    a = np.linspace(0, 65535, 40 * 30).reshape(30, 40).round().astype(np.uint16)
    im = Image.open(io.BytesIO(helpers.encode_bytes(Image.fromarray(a), "PNG")))
    assert im.mode.startswith("I")  # 16-bit greyscale PNG
    px = prepared(im)
    expected = np.round(a.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(px[..., 0], expected)
    assert px.min() == 0 and px.max() == 255


def test_mode_i():
    small = np.arange(30 * 40, dtype=np.int32).reshape(30, 40) % 256
    px = prepared(Image.fromarray(small, "I"))
    np.testing.assert_array_equal(px[..., 1], small)  # 8-bit range: kept as is
    wide = np.arange(30 * 40, dtype=np.int32).reshape(30, 40) * 50
    px = prepared(Image.fromarray(wide, "I"))
    np.testing.assert_array_equal(px[..., 2], np.clip(np.round(wide * 255 / 65535), 0, 255))


def test_mode_f_and_1(small_photo):
    f = np.linspace(0, 255, 30 * 40).reshape(30, 40).astype(np.float32)
    np.testing.assert_array_equal(prepared(Image.fromarray(f, "F"))[..., 0], np.round(f))  # 0..255: as is
    np.testing.assert_array_equal(prepared(Image.fromarray(f / 255, "F"))[..., 0], np.round(f))  # 0..1: of white
    bw = small_photo.convert("1")
    assert set(np.unique(prepared(bw))) <= {0, 255}


def test_float_image_of_another_range_is_stretched_with_a_warning(small_photo):
    """A scientific float TIFF (values around -3..3) used to come out nearly black."""
    g = np.asarray(small_photo.convert("L")).astype(np.float32)
    f = (g - 128) / 40  # about -3.2..3.2
    buf = io.BytesIO()
    Image.fromarray(f, "F").save(buf, "TIFF")
    with pytest.warns(OdpWarning, match=r"floating-point values -3\.\d*\.\.3\.\d* were scaled to 0\.\.255"):
        px = imaging.prepare(Image.open(io.BytesIO(buf.getvalue()))).pixels[..., 0].astype(int)
    stretched = np.round((f - f.min()) * 255 / (f.max() - f.min()))
    assert np.abs(px - stretched).max() <= 1 and px.min() == 0 and px.max() == 255


@pytest.mark.parametrize("mode", ["1", "I;16"])
def test_colour_key_transparency_of_grey_modes_warns_and_flattens(mode, small_photo):
    """A PNG tRNS colour on a 1-bit or 16-bit grey image: the keyed pixels are transparent, as in RGBA."""
    g = np.asarray(small_photo.convert("L"))
    im = small_photo.convert("1") if mode == "1" else Image.fromarray(g.astype(np.uint16) * 257)
    key = 0 if mode == "1" else 257 * int(g[0, 0])
    png = Image.open(io.BytesIO(helpers.encode_bytes(im, "PNG", transparency=key)))
    assert png.mode == mode and png.info["transparency"] == key
    px = prepared(png, warn=True)
    keyed = (np.asarray(png.convert("L")) if mode == "1" else np.asarray(png)) == key
    assert keyed.any() and (px[keyed] == 255).all()


def test_mode_cmyk(small_photo):
    cmyk = small_photo.convert("CMYK")
    np.testing.assert_array_equal(prepared(cmyk), np.asarray(cmyk.convert("RGB")))
    jpeg = Image.open(io.BytesIO(helpers.encode_bytes(cmyk, "JPEG", quality=95)))
    assert jpeg.mode == "CMYK"
    assert helpers.psnr(prepared(jpeg), small_photo) > 25


@pytest.mark.parametrize("mode", ["L", "LA", "1", "I;16", "I", "F", "RGB"])
def test_greyscale_inputs_are_marked_grey(mode, small_photo):
    """Every greyscale mode, and RGB whose channels are equal, is marked grey; a colour photo is not."""
    g = small_photo.convert("L")
    im = {"LA": lambda: Image.merge("LA", (g, Image.new("L", g.size, 255))), "1": lambda: g.convert("1"),
          "I;16": lambda: Image.fromarray(np.asarray(g).astype(np.uint16) * 257),
          "I": lambda: g.convert("I"), "F": lambda: g.convert("F"), "RGB": lambda: g.convert("RGB")}.get(mode, lambda: g)()
    assert imaging.prepare(im).gray
    assert not imaging.prepare(small_photo).gray
    assert not imaging.prepare(Image.merge("RGB", (g, g, g.point(lambda v: min(255, v + 1))))).gray


def test_greyscale_photo_decodes_grey(photos, model):
    """A greyscale photo comes back one-channel ("L"), as faithful as its colour decode's luminance;
    without the grey flag the decoder's RGB carries a tint of several levels."""
    g = photos["astronaut"].convert("L")
    data = helpers.encode(g, model=model, device="cpu")
    assert container.read(data).header.gray
    out = coding.decode(data, device="cpu")
    assert out.mode == "L" and out.size == g.size
    rgb = coding.decode(helpers.reheader(data, gray=False), device="cpu")
    px = np.asarray(rgb).astype(int)
    assert np.abs(px[..., 0] - px[..., 1]).mean() + np.abs(px[..., 1] - px[..., 2]).mean() > 1  # the tint
    chroma = np.asarray(out.convert("RGB")).astype(int)
    assert np.abs(chroma[..., 0] - chroma[..., 1]).mean() + np.abs(chroma[..., 1] - chroma[..., 2]).mean() < 1
    assert helpers.psnr(np.asarray(out), np.asarray(g)) >= helpers.psnr(np.asarray(rgb.convert("L")), np.asarray(g))
    cut = stream.truncate(data, tokens=16)
    assert container.read(cut).header.gray and coding.decode(cut, device="cpu").mode == "L"


def test_rgba_encode_warns_and_decodes_to_rgb(small_photo, model):
    im = small_photo.convert("RGBA")
    im.putpixel((0, 0), (0, 0, 0, 0))
    with pytest.warns(OdpWarning, match="alpha"):
        data = helpers.encode(im, model=model, device="cpu")
    out = decode(stream.truncate(data, tokens=8))
    assert out.mode == "RGB" and out.size == im.size


# --------------------------------------------------------------------------- orientation, metadata, formats


def exif_with(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    ex[0x010F] = "ODP test camera"  # Make: must survive
    return ex.tobytes()


@pytest.mark.parametrize("orientation, swapped", [(1, False), (2, False), (3, False), (4, False),
                                                   (5, True), (6, True), (7, True), (8, True)])
def test_exif_orientation_is_applied(orientation, swapped, small_photo):
    jpeg = Image.open(io.BytesIO(helpers.encode_bytes(small_photo, "JPEG", quality=95, exif=exif_with(orientation))))
    p = imaging.prepare(jpeg, keep=("exif",))
    w, h = small_photo.size
    assert p.pixels.shape[:2] == ((w, h) if swapped else (h, w))
    ex = Image.Exif()
    ex.load(p.exif)
    assert 0x0112 not in ex
    assert ex[0x010F] == "ODP test camera"


def test_exif_orientation_6_end_to_end(small_photo, model):
    jpeg = Image.open(io.BytesIO(helpers.encode_bytes(small_photo, "JPEG", quality=95, exif=exif_with(6))))
    data = helpers.encode(jpeg, tokens=8, model=model, device="cpu", metadata=("exif",))
    out = decode(data)
    assert out.size == (small_photo.height, small_photo.width)
    ex = Image.Exif()
    ex.load(out.info["exif"])
    assert 0x0112 not in ex and ex[0x010F] == "ODP test camera"


def test_metadata_is_dropped_by_default_and_colours_go_to_srgb(small_photo, model):
    """Small files first (as cwebp): no ICC/EXIF unless asked; a dropped profile is applied to the pixels."""
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    jpeg = Image.open(io.BytesIO(helpers.encode_bytes(small_photo, "JPEG", quality=95, exif=exif_with(6),
                                                      icc_profile=srgb.tobytes())))
    data = helpers.encode(jpeg, tokens=8, model=model, device="cpu")
    h = container.read(data).header
    assert h.icc == b"" and h.exif == b""
    assert decode(data).size == (small_photo.height, small_photo.width)  # orientation still applied
    p_keep = imaging.prepare(jpeg, keep=("icc",))
    p_drop = imaging.prepare(jpeg)
    assert p_keep.icc and not p_drop.icc
    assert np.abs(p_keep.pixels.astype(int) - p_drop.pixels.astype(int)).max() <= 2  # sRGB -> sRGB: as good as same
    with pytest.raises(ValueError, match="unknown metadata"):
        imaging.prepare(jpeg, keep=("xmp",))


def test_broken_icc_profile_is_ignored_with_a_warning(small_photo):
    im = small_photo.copy()
    im.info["icc_profile"] = b"\0" * 16 + b"RGB " + b"junk" * 10
    with pytest.warns(errors.OdpWarning, match="ICC profile ignored"):
        p = imaging.prepare(im)
    np.testing.assert_array_equal(p.pixels, np.asarray(small_photo))


def test_tiff_orientation(small_photo):
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    ifd[0x0112] = 6
    tif = Image.open(io.BytesIO(helpers.encode_bytes(small_photo, "TIFF", tiffinfo=ifd)))
    p = imaging.prepare(tif)
    np.testing.assert_array_equal(p.pixels, np.asarray(small_photo.transpose(Image.ROTATE_270)))


def test_icc_profile_is_carried_through(small_photo, model):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    png = Image.open(io.BytesIO(helpers.encode_bytes(small_photo, "PNG", icc_profile=icc)))
    assert png.info["icc_profile"] == icc
    data = helpers.encode(png, tokens=8, model=model, device="cpu", metadata=("icc", "exif"))
    assert container.read(data).header.icc == icc
    out = decode(data)
    assert out.info["icc_profile"] == icc
    saved = Image.open(io.BytesIO(helpers.encode_bytes(out, "PNG", icc_profile=out.info["icc_profile"])))
    assert saved.info["icc_profile"] == icc


def test_gif_first_frame(small_photo):
    red = Image.new("RGB", small_photo.size, (255, 0, 0))
    blue = Image.new("RGB", small_photo.size, (0, 0, 255))
    gif = Image.open(io.BytesIO(helpers.encode_bytes(red, "GIF", save_all=True, append_images=[blue])))
    assert gif.n_frames == 2
    gif.seek(1)
    px = imaging.prepare(gif).pixels
    assert (px == [255, 0, 0]).all()


@pytest.mark.parametrize("fmt, lossless, kw", [
    ("PNG", True, {}), ("JPEG", False, {"quality": 95}), ("WEBP", True, {"lossless": True}),
    ("WEBP", False, {"quality": 90}), ("TIFF", True, {}), ("BMP", True, {}), ("GIF", False, {}),
])
def test_input_formats(fmt, lossless, kw, small_photo, model):
    im = Image.open(io.BytesIO(helpers.encode_bytes(small_photo, fmt, **kw)))
    assert im.format == fmt
    px = imaging.prepare(im).pixels
    if lossless:
        np.testing.assert_array_equal(px, np.asarray(small_photo))
    else:
        assert helpers.psnr(px, small_photo) > 20
    im = Image.open(io.BytesIO(helpers.encode_bytes(small_photo, fmt, **kw)))
    data = helpers.encode(im, tokens=4, model=model, device="cpu")
    h = container.read(data).header
    assert (h.width, h.height, container.read(data).kept) == (*small_photo.size, 4)


# --------------------------------------------------------------------------- corrupt input


def test_wrong_magic(small_photo):
    for data in (helpers.encode_bytes(small_photo, "PNG"), b"", b"hello", b"\x89ODP"):
        with pytest.raises(FormatError, match="not an ODP file"):
            coding.decode(data)


def test_every_short_prefix_of_the_header_region(small_odp):
    end = helpers.layer_spans(small_odp)[0][0]
    first_layer_end = helpers.layer_spans(small_odp)[0][1]
    for n in range(first_layer_end):
        with pytest.raises(FormatError):
            stream.read_tokens(small_odp[:n])
    with pytest.raises(FormatError, match="before its first complete layer"):
        coding.decode(small_odp[:end])


def test_flipped_byte_in_header(small_odp):
    for pos in range(len(container.MAGIC) + 1, helpers.layer_spans(small_odp)[0][0]):
        with pytest.raises(FormatError, match="checksum"):
            coding.decode(helpers.flip(small_odp, pos))


def test_flipped_byte_in_a_layer(encoded):
    """Damaged payload bytes are caught by the range decoder or by the layer's token check; a flip in
    a stream's last bits may decode to the same tokens, which is then harmless."""
    data = encoded["astronaut"]
    spans = helpers.layer_spans(data)
    tokens = stream.read_tokens(data)[2]
    caught = 0
    for i in (0, len(spans) // 2, len(spans) - 1):
        s, e = spans[i]
        for pos in range(s, e):
            bad = helpers.flip(data, pos, 0x04)
            try:
                same = np.array_equal(stream.read_tokens(bad, intact=True)[2], tokens)
            except FormatError as err:
                assert f"layer {i} does not decode" in str(err)
                caught += 1
                continue
            assert same, f"flip at {pos} changed the tokens unnoticed"
    assert caught > 0


def test_a_damaged_layer_decodes_as_the_cut_before_it(adaptive_odp):
    """A layer whose tokens fail their check ends the file there, as a cut would; strict refuses it."""
    spans = helpers.layer_spans(adaptive_odp)
    layers = container.read(adaptive_odp).layers
    i = len(spans) // 2
    bad = helpers.flip(adaptive_odp, spans[i][0] + 3)
    with pytest.warns(OdpWarning, match=f"payload layer {i} of {len(spans)} is damaged: decoding the {i} layers"):
        out = coding.decode(bad, device="cpu")
    assert out.tobytes() == coding.decode(stream.truncate(adaptive_odp, level=layers[i - 1].level), device="cpu").tobytes()
    with pytest.raises(FormatError, match=f"payload layer {i} does not decode"):
        coding.decode(bad, device="cpu", strict=True)
    with pytest.raises(FormatError, match="cut short"):
        coding.decode(adaptive_odp[:-4], device="cpu", strict=True)


def test_foreign_model_id(small_odp):
    data = helpers.reheader(small_odp, model_id=b"\x42" * 4)
    with pytest.raises(ModelNotFound, match="42424242") as e:
        coding.decode(data)
    assert "not installed" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ModelNotFound, match="42424242"):
        stream.truncate(data, tokens=1)


def test_model_found_by_its_hash_prefix(small_odp, model):
    assert container.read(small_odp).header.model_id == model.sha256[:container.MODEL_ID_BYTES]


def test_entropy_model_the_model_lacks(small_odp, model):
    other = "pos-freq-v1" if model.best_entropy.id != "pos-freq-v1" else "ctx16-v1"
    if other == "ctx16-v1" and model.context is not None:
        pytest.skip("both entropy models are installed")
    data = helpers.reheader(small_odp, entropy_model=other)
    if other == "pos-freq-v1":  # the tables are always there: the tokens decode wrong and fail their check
        with pytest.raises(FormatError, match="does not decode"):
            coding.decode(data)
    else:
        with pytest.raises(FormatError, match="needs entropy model"):
            coding.decode(data)


@pytest.mark.parametrize("changes", [{"tile": 128}, {"tokens": 512}])
def test_header_that_does_not_match_the_model(changes, small_odp):
    with pytest.raises(FormatError, match="does not match"):
        coding.decode(helpers.reheader(small_odp, **changes))


@pytest.mark.parametrize("w, h", [(65535, 65535), (16385, 16384)])
def test_huge_declared_size(w, h, small_odp):
    data = helpers.reheader(small_odp, width=w, height=h)
    with pytest.raises(FormatError, match="exceeds the limit"):
        coding.decode(data)
    with pytest.raises(FormatError, match="exceeds the limit"):
        stream.truncate(data, tokens=1)


def test_huge_length_fields(small_odp):
    c = container.read(small_odp)
    forged = container.MAGIC + bytes([container.VERSION]) + b"\xff\xff\xff\xff\x0f"
    with pytest.raises(FormatError, match="header length"):
        coding.decode(forged + small_odp[len(forged):])
    big = [container.Layer(c.layers[0].level, b"\0" * (container.MAX_LAYER + 4), 0)]
    with pytest.raises(FormatError, match="layer 0 declares"):
        container.pack_header(c.header, big)


def test_layer_that_does_not_decode(small_odp):
    """A forged layer of ragged length or junk is a FormatError, not a crash."""
    c = container.read(small_odp)
    ragged = [replace(c.layers[0], data=c.layers[0].data + b"\x00")] + c.layers[1:]
    with pytest.raises(FormatError, match="whole number of 32-bit words"):
        container.write(Container(c.header, ragged))  # the writer refuses it
    junk = [replace(x, data=b"\xff" * len(x.data)) for x in c.layers]
    with pytest.raises(FormatError, match="does not decode"):
        coding.decode(container.write(Container(c.header, junk)))


def test_errors_are_value_errors_with_one_line_messages(small_odp):
    bad = [b"junk", small_odp[:20], helpers.flip(small_odp, 9), helpers.flip(small_odp, helpers.layer_spans(small_odp)[0][0] + 3),
           small_odp[:5] + b"\xff\xff\xff\xff\xff" + small_odp[10:]]
    for data in bad:
        with pytest.raises(FormatError) as e:
            coding.decode(data)
        assert isinstance(e.value, ValueError)
        assert str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- files cut short


def test_file_cut_in_the_payload(encoded, decoded):
    data = encoded["coffee"]
    spans, levels = helpers.layer_spans(data), [x.level for x in container.read(data).layers]
    i = 5
    s, e = spans[i]
    cut = data[: (s + e) // 2]  # in the middle of layer 5: layers 0..4 are whole
    with pytest.warns(OdpWarning, match="cut short"):
        c, _, toks, counts = stream.read_tokens(cut)
    assert not c.complete and c.kept == levels[i - 1] and c.declared_level == levels[-1]
    np.testing.assert_array_equal(toks, stream.read_tokens(data, tokens=levels[i - 1])[2])
    with pytest.warns(OdpWarning, match="cut short"):
        out = decode(cut)
    assert out.tobytes() == decoded("coffee", levels[i - 1]).tobytes()


@pytest.mark.parametrize("where", ["layer bytes", "last byte", "boundary"])
def test_cut_anywhere_in_a_layer_keeps_the_whole_layers_before(where, encoded):
    data = encoded["astronaut"]
    spans, levels = helpers.layer_spans(data), [x.level for x in container.read(data).layers]
    i = 7
    s, e = spans[i]
    at = {"layer bytes": s + 5, "last byte": e - 1, "boundary": s}[where]
    with pytest.warns(OdpWarning, match="cut short"):
        _, _, toks, _ = stream.read_tokens(data[:at])
    np.testing.assert_array_equal(toks, stream.read_tokens(data, tokens=levels[i - 1])[2])
    with pytest.warns(OdpWarning):
        repaired = stream.truncate(data[:at])
    assert repaired == stream.truncate(data, tokens=levels[i - 1])


def test_raw_prefix_of_a_file_is_a_smaller_file(encoded):
    """A byte prefix ending on a layer boundary holds the same tokens as truncate() to that level."""
    data = encoded["astronaut"]
    layers = container.read(data).layers
    for i, (_, e) in enumerate(helpers.layer_spans(data)[:-1]):
        with pytest.warns(OdpWarning):
            _, _, _, counts = stream.read_tokens(data[:e])
        assert list(counts) == [layers[i].level] * 2


# --------------------------------------------------------------------------- models and devices


def test_load_unknown_model():
    with pytest.raises(ModelNotFound, match="odp-small-v1"):  # lists what is installed
        weights.load("no-such-model")


def test_files_of_the_previous_model_decode_with_it(model, v1_model):
    """A file written with odp-small-v1 names its weights by hash: it decodes with v1 (kept
    installed) after the default moved on, not with the default's decoder."""
    data = (helpers.DATA / "astronaut-odp-small-v1.odp").read_bytes()
    assert model is not v1_model  # the default is a newer model
    c, used, toks, counts = stream.read_tokens(data)
    assert used is v1_model.entry
    h = c.header
    expected = engine.Engine(v1_model.entry, "cpu", 8).decode(toks, h.width, h.height, np.array(counts))
    out = np.asarray(coding.decode(data, device="cpu"))
    assert (out == expected).all()
    assert (out != engine.Engine(model.entry, "cpu", 8).decode(toks, h.width, h.height, np.array(counts))).any()


def test_shipped_default_is_a_decoder_fine_tune_of_v1(model, v1_model):
    """odp-small-v2 keeps v1's encoder and tables (same tokens, same bytes), so v1's context model
    codes its files too; only the decoder differs."""
    assert model.context.id == v1_model.context.id and (model.tables.freqs == v1_model.tables.freqs).all()
    old, new = v1_model.tokenizer.state_dict(), model.tokenizer.state_dict()
    differs = {k for k in old if not torch.equal(old[k], new[k])}
    assert differs and all(k.startswith(DECODER_PREFIXES) for k in differs)


def test_load_by_hash(model):
    assert weights.load_by_hash(model.sha256) is model
    assert weights.load_by_hash(model.sha256, "other-name") is model
    assert weights.file_sha256(weights.WEIGHTS_DIR / f"{model.name}.safetensors") == model.sha256


def test_model_shapes(model):
    cfg = model.config
    assert cfg.tile % cfg.patch == 0
    assert model.tables.alphabet == cfg.codebook_size


def test_pick_device():
    assert engine.pick_device("cpu") == "cpu"
    assert engine.pick_device("auto") in ("cpu", "cuda")
    with pytest.raises(ValueError):
        engine.pick_device("tpu")
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            engine.pick_device("cuda")


# --------------------------------------------------------------------------- a large photo


@pytest.mark.slow
def test_4000x3000_photo(big_photo, model):
    data = helpers.encode(big_photo, model=model, device="cpu", batch=8)
    h = container.read(data).header
    assert (h.width, h.height, h.tiles) == (4000, 3000, 192)
    budget = len(data) // 4
    small = stream.truncate(data, max_bytes=budget)
    assert len(small) <= budget
    out = decode(small)
    assert out.size == (4000, 3000)
    assert math.isfinite(helpers.psnr(out, big_photo))


# --------------------------------------------------------------------------- rate control


def test_quality_maps_monotonically_to_a_budget():
    bpps = [options.quality_to_bpp(q) for q in range(1, 101)]
    assert bpps == sorted(bpps) and len(set(bpps)) == 100
    assert bpps[0] == pytest.approx(options.QUALITY_BPP[0]) and bpps[-1] == pytest.approx(options.QUALITY_BPP[1])
    for bad in (0, 100.5, float("nan")):
        with pytest.raises(ValueError):
            options.quality_to_bpp(bad)


def test_quality_is_a_budget(astronaut, model, encoded):
    w, h = astronaut.size
    sizes = []
    for q in (20, 40, 60):  # budgets within the first stage (the refinement stage's qualities: test_refined)
        data = helpers.encode(astronaut, model=model, device="cpu", quality=q, adaptive=False)
        budget = int(options.quality_to_bpp(q) * w * h / 8)
        smallest = len(stream.truncate(encoded["astronaut"], tokens=1))
        assert data == stream.truncate(encoded["astronaut"], max_bytes=max(budget, smallest))
        sizes.append(len(data))
    assert sizes == sorted(sizes)


@pytest.mark.parametrize("metric", ["psnr", "ms-ssim"])
def test_target_gives_a_small_file_reaching_it(astronaut, model, encoded, metric):
    from odp.codec.quality import ms_ssim, psnr

    score = {"psnr": psnr, "ms-ssim": ms_ssim}[metric]
    original = np.asarray(astronaut.convert("RGB"))
    goal = score(original, np.asarray(coding.decode(encoded["astronaut"], tokens=24, device="cpu")))
    data = helpers.encode(astronaut, model=model, device="cpu", target=(metric, goal))
    assert score(original, np.asarray(coding.decode(data, device="cpu"))) >= goal
    below = stream.truncate(data, level=container.read(data).level - 1)  # its lowest level that reaches it
    assert score(original, np.asarray(coding.decode(below, device="cpu"))) < goal
    # adaptive levels are not uniform token counts: near the uniform 24-token file, well under 32
    assert len(data) < len(stream.truncate(encoded["astronaut"], tokens=32))


def test_target_out_of_reach_keeps_everything_and_warns(small_photo, model, small_odp):
    with pytest.warns(errors.OdpWarning, match="out of reach"):
        data = helpers.encode(small_photo, model=model, device="cpu", target=("psnr", 99.0))
    assert data == small_odp
    with pytest.raises(ValueError, match="at least"):
        helpers.encode(small_photo, model=model, device="cpu", target=("ms-ssim", 0.5))


# --------------------------------------------------------------------------- coding scale


@pytest.fixture(scope="session")
def half_scale_odp(adaptive_photo, model) -> bytes:
    return helpers.encode(adaptive_photo, scale=2, model=model, device="cpu", adaptive=False)


def test_scales_tried_each_save_tiles():
    assert ratecontrol.scales_for(768, 512, 256) == [1, 2, 3]  # 6, 2, 1 tiles; at 1/4 still 1
    assert ratecontrol.scales_for(200, 150, 256) == [1]
    assert imaging.scaled_size(768, 512, 3) == (256, 171) and imaging.scaled_size(5, 2, 4) == (1, 1)
    assert imaging.scaled_size(23, 40, 16) == (2, 3)  # round(23 / 16) = 1 would need a 23x enlargement


def test_largest_scale_on_a_small_odd_image(model, small_photo):
    im = small_photo.crop((0, 0, 23, 40))
    data = helpers.encode(im, scale=16, tokens=4, model=model, device="cpu", adaptive=False)
    assert container.read(data).header.width == 2 and coding.decode(data, device="cpu").size == (23, 40)


def test_half_scale_file_codes_fewer_tiles_and_decodes_at_full_size(half_scale_odp, adaptive_photo):
    h = container.read(half_scale_odp).header
    assert (h.width, h.height, h.tiles) == (384, 256, 2) and h.display_size == (768, 512) and h.scaled
    out = coding.decode(half_scale_odp, device="cpu")
    assert out.size == adaptive_photo.size
    assert psnr(np.asarray(adaptive_photo), np.asarray(out)) > 15  # the photo, enlarged back (full size: 16.4)
    cut = stream.truncate(half_scale_odp, tokens=8)  # truncation keeps the display size
    assert container.read(cut).header.display_size == (768, 512) and coding.decode(cut, device="cpu").size == (768, 512)


def test_a_byte_budget_picks_the_coding_scale_of_highest_psnr(adaptive_photo, adaptive_odp, model):
    """At 300 bytes (0.006 bpp) a full-size cut keeps ~30 tokens in each of 6 tiles; --scale psnr also
    tries 2 tiles at 1/2 and 1 tile at 1/3 and keeps the best (measured: 1/3, 14.9 dB against 14.5).
    The default keeps the full size whenever it fits."""
    ref = np.asarray(adaptive_photo)
    assert helpers.encode(adaptive_photo, max_bytes=300, model=model, device="cpu") == \
        stream.truncate(adaptive_odp, max_bytes=300)
    data = helpers.encode(adaptive_photo, max_bytes=300, model=model, device="cpu", scale="psnr")
    full_cut = stream.truncate(adaptive_odp, max_bytes=300)
    assert len(data) <= 300 and container.read(data).header.scaled
    chosen = psnr(ref, np.asarray(coding.decode(data, device="cpu")))
    assert chosen > psnr(ref, np.asarray(coding.decode(full_cut, device="cpu"))) + 0.1
    # below what 1 token in each full-size tile needs, a smaller scale still makes a file
    least = len(stream.truncate(adaptive_odp, level=1))
    with pytest.raises(ValueError, match="cannot hold even 1 token per tile"):
        stream.truncate(adaptive_odp, max_bytes=least - 1)
    tiny = helpers.encode(adaptive_photo, max_bytes=least - 1, model=model, device="cpu")  # "auto"
    assert len(tiny) < least and coding.decode(tiny, device="cpu").size == (768, 512)
    assert container.read(tiny).header.width == 384  # the largest coding size that fits: 1/2
    # when no scale fits, the error (before any work) names what the smallest scale would need
    with pytest.raises(errors.OptionError, match=r"below the smallest ODP file of a 768x512 image \((\d+) bytes\)") as err:
        helpers.encode(adaptive_photo, max_bytes=5, model=model, device="cpu")
    assert 5 < int(err.value.args[0].split("(")[1].split(" ")[0]) <= len(tiny) < least
    # an explicit scale is kept; --tokens and --psnr stay at full size unless a scale is given
    assert container.read(helpers.encode(adaptive_photo, max_bytes=300, scale=1, model=model,
                                          device="cpu", adaptive=False)).header.scaled is False


def test_target_is_measured_at_the_display_size(adaptive_photo, half_scale_odp, model):
    data = helpers.encode(adaptive_photo, scale=2, target=("psnr", 15.0), model=model, device="cpu", adaptive=False)
    out = np.asarray(coding.decode(data, device="cpu"))
    assert psnr(np.asarray(adaptive_photo), out) >= 15.0 and len(data) < len(half_scale_odp)  # whole: 15.44 dB


def test_a_target_keeps_the_smallest_file_of_any_scale_that_reaches_it(adaptive_photo, model):
    ref = np.asarray(adaptive_photo)
    auto = helpers.encode(adaptive_photo, target=("psnr", 14.0), scale="psnr", model=model, device="cpu",
                           adaptive=False)
    full = helpers.encode(adaptive_photo, target=("psnr", 14.0), scale=1, model=model, device="cpu", adaptive=False)
    assert psnr(ref, np.asarray(coding.decode(auto, device="cpu"))) >= 14.0
    assert len(auto) <= len(full) and not container.read(full).header.scaled
    with pytest.warns(OdpWarning, match="psnr 40.0 is out of reach"):  # no scale reaches it: the whole file
        whole = helpers.encode(adaptive_photo, target=("psnr", 40.0), scale=1, model=model, device="cpu",
                               adaptive=False)
    assert whole == helpers.encode(adaptive_photo, model=model, device="cpu", adaptive=False)


@pytest.fixture(scope="session")
def coffee_whole(coffee, model) -> tuple[bytes, float]:
    """coffee's whole full-size file (1 tile) and its PSNR."""
    data = helpers.encode(coffee, model=model, device="cpu")
    return data, psnr(np.asarray(coffee), np.asarray(coding.decode(data, device="cpu")))


def test_a_budget_past_the_whole_file_codes_the_image_larger(coffee, coffee_whole, model):
    """Where the whole full-size file leaves bytes, the encoder codes the image at 2x (then 3x, 4x) each
    side and keeps the cut within the budget that decodes best: more tiles for the same pixels, and a
    higher PSNR than the whole full-size file. Cuts of it stay valid and decode at the image's size."""
    whole, whole_psnr = coffee_whole
    data = helpers.encode(coffee, max_bytes=4 * len(whole), model=model, device="cpu")
    h = container.read(data).header
    assert len(whole) < len(data) <= 4 * len(whole)
    assert h.display_size == coffee.size and h.width > coffee.width and h.scaled
    ref = np.asarray(coffee)
    assert psnr(ref, np.asarray(coding.decode(data, device="cpu"))) > whole_psnr + 0.5
    cut = stream.truncate(data, tokens=8)
    assert coding.decode(cut, device="cpu").size == coffee.size
    assert helpers.encode(coffee, max_bytes=len(whole), model=model, device="cpu") == whole  # no bytes to spare
    explicit = helpers.encode(coffee, scale="1/2", model=model, device="cpu")
    assert container.read(explicit).header.width == 2 * coffee.width


def test_a_target_out_of_reach_at_full_size_is_met_coding_larger(coffee, coffee_whole, model):
    whole, whole_psnr = coffee_whole
    data = helpers.encode(coffee, target=("psnr", whole_psnr + 0.5), model=model, device="cpu")
    assert container.read(data).header.width > coffee.width
    assert psnr(np.asarray(coffee), np.asarray(coding.decode(data, device="cpu"))) >= whole_psnr + 0.5


@pytest.mark.parametrize("scale, message", [(0, "scale 0 is not one of auto, psnr, a whole number 1..16, 1/2"),
                                            (17, "scale 17 is not one"), (0.3, "scale 0.3 is not one"),
                                            ("1/5", "scale '1/5' is not one"), ("best", "scale 'best' is not one")])
def test_scale_out_of_range(adaptive_photo, scale, message):
    with pytest.raises(ValueError, match=message):
        helpers.encode(adaptive_photo, scale=scale, device="cpu")


def test_a_weights_file_with_an_impossible_out_shrink_is_refused(tmp_path):
    """A model's config comes from its weights file: an `out_shrink` that no tile size divides into whole
    output tiles (0, 3), one that leaves output patches under 4 pixels (8), or one on a network that does not
    see the picture so far is refused in one line when the file is read, never a ZeroDivisionError later."""
    import json

    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    from odp.codec import registry

    src = weights.WEIGHTS_DIR / "odp-refine-x2-v4.safetensors"
    with safe_open(str(src), framework="np") as f:
        meta = dict(f.metadata())
    tensors = {"entropy.freqs": load_file(str(src))["entropy.freqs"]}
    for i, bad in enumerate([{"out_shrink": 0}, {"out_shrink": 3}, {"out_shrink": 8},
                             {"out_shrink": 2, "conditioned": False}]):
        config = json.loads(meta["config"]) | bad
        path = tmp_path / f"odd-{i}.safetensors"
        save_file(tensors, str(path), metadata=meta | {"config": json.dumps(config)})
        with pytest.raises(ModelNotFound, match="does not fit this version"):
            registry.entry_at(path)
