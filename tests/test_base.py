"""Version-4 files: a classic codec's thumbnail (the base), then the tokens of a model that refines it.

What `odp encode --bytes` / `--bpp` / `--quality` makes where a base fits the budget; cut, verified,
described and decoded like any file (docs/format.md, "Version 4")."""
from __future__ import annotations

import dataclasses
import hashlib
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import helpers
import odp
from odp.cli.main import main
from odp.codec import registry, stream, thumbnail
from odp.formats import container
from odp.formats.container import FormatError

pytestmark = pytest.mark.skipif(registry.base_model() is None, reason="no base model installed")


WIDTH, HEIGHT, BPP = 320, 240, 0.1


@pytest.fixture(scope="module")
def photo(astronaut) -> Image.Image:
    """A real 320x240 photo: 3x2 tiles of the base model at 2x."""
    return astronaut


@pytest.fixture(scope="module")
def based(photo) -> bytes:
    return odp.encode(photo, bpp=BPP, device="cpu")


def test_a_budget_makes_a_version_4_file_better_than_tokens_alone(photo, based):
    """The thumbnail and the tokens on it beat the token file of the same bytes (the first stage and
    its refinement, `--first-stage` off: what ODP made before version 4) by a clear margin."""
    c = container.read(based)
    assert based[4] == container.BASE_VERSION and c.header.base and len(c.layers) >= 1
    assert len(based) <= BPP * WIDTH * HEIGHT / 8
    tokens_only = odp.encode(photo, bytes=len(based), device="cpu", base=False)
    assert tokens_only[4] in (container.VERSION, container.STAGED_VERSION)
    ref = helpers.pixels(photo)
    assert helpers.psnr(ref, odp.decode(based)) > helpers.psnr(ref, odp.decode(tokens_only)) + 1.0


def test_every_cut_decodes_and_the_picture_improves_as_the_file_grows(photo, based):
    """From the thumbnail alone (the smallest cut) to the whole file: each whole-layer cut decodes, and
    PSNR never falls far (the tokens on a thumbnail add texture more than PSNR: docs/training.md)."""
    ref = helpers.pixels(photo)
    points = odp.cut_points(based)
    assert points[0][1] == 0.0 and points[-1][0] == len(based)
    scores = [helpers.psnr(ref, odp.decode(odp.truncate(based, bytes=n))) for n, _ in points]
    assert scores[-1] >= scores[0] - 0.05
    assert all(s >= max(scores[:i + 1]) - 0.3 for i, s in enumerate(scores))


def test_a_cut_below_the_thumbnail_is_refused_and_a_download_cut_inside_it_too(based, tmp_path):
    least = odp.cut_points(based)[0][0]
    with pytest.raises(ValueError, match=f"cannot hold this file's base thumbnail \\(that needs {least}\\)"):
        odp.truncate(based, bytes=least - 1)
    src, out = tmp_path / "a.odp", tmp_path / "b.odp"
    src.write_bytes(based)
    r = CliRunner().invoke(main, ["truncate", str(src), "-o", str(out), "--bytes", str(least - 1)])
    assert r.exit_code != 0 and "base thumbnail" in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()
    with pytest.raises(FormatError, match="cut short inside its header, which holds its base thumbnail"):
        odp.decode(based[:least // 2])
    with warnings.catch_warnings(record=True) as caught:  # the header whole, no layer: the thumbnail's picture
        warnings.simplefilter("always")
        cut = container.write(container.Container(container.read(based).header, []))
        assert odp.decode(cut).size == (WIDTH, HEIGHT)


def test_info_names_the_base_and_verify_checks_it(based, tmp_path):
    i = odp.info(based)
    assert i.version == 4 and i.base in ("avif", "webp") and i.base_shrink in (1, 2, 4, 8)
    assert (i.base_width, i.base_height) == (round(WIDTH / i.base_shrink), round(HEIGHT / i.base_shrink))
    path = tmp_path / "a.odp"
    path.write_bytes(based)
    r = CliRunner().invoke(main, ["info", "--verify", "--cuts", str(path)])
    assert r.exit_code == 0, r.output
    assert f"thumbnail {i.base_width}x{i.base_height}" in r.output and "verified" in r.output
    assert "base" in r.output.split("cuts:")[1].splitlines()[1]  # the first cut is the thumbnail alone
    assert "tokens refine it" in r.output
    (tmp_path / "alone.odp").write_bytes(container.write(container.Container(container.read(based).header, [])))
    r = CliRunner().invoke(main, ["info", str(tmp_path / "alone.odp")])  # no layer: nothing refines it
    assert r.exit_code == 0 and "no tokens, the model draws it alone" in r.output and "refine it" not in r.output
    odp.verify(based)


def _with_base(data: bytes, base: bytes) -> bytes:
    c = container.read(data)
    c.header.base = base
    return container.write(c)


def test_a_damaged_or_wrong_sized_thumbnail_is_refused_in_one_line(based, photo):
    h = container.read(based).header
    broken = _with_base(based, bytes(16) + h.base[16:])  # its codec's header gone
    for call in (odp.decode, odp.verify):
        with pytest.raises(FormatError, match="base thumbnail") as e:
            call(broken)
        assert "\n" not in str(e.value)
    other = photo.resize((photo.width // h.base_shrink + 3, photo.height // h.base_shrink))
    codec = thumbnail.PICTURE[container.BASE_CODECS[h.base_codec]]  # stored as the codec's plain file, which
    c = container.read(based)                                          # holds its own size (a frame form cannot
    c.header.base_codec = thumbnail.CODE[codec]                        # disagree: the header gives it its size)
    c.header.base = helpers.encode_bytes(other, {"avif": "AVIF", "webp": "WEBP"}[codec], quality=30)
    wrong = container.write(c)
    with pytest.raises(FormatError, match=r"base thumbnail is \d+x\d+, not the"):
        odp.decode(wrong)


def test_a_file_with_a_base_opens_in_pillow(based, photo, tmp_path):
    import odp.formats.pillow  # noqa: F401

    path = tmp_path / "a.odp"
    path.write_bytes(based)
    with Image.open(path) as im:
        assert im.size == (WIDTH, HEIGHT)
        assert np.array_equal(helpers.pixels(im), helpers.pixels(odp.decode(based)))


def _with_stored_base(based: bytes, photo: Image.Image, codec: str, stored: str) -> bytes:
    """`based` with its base replaced by a thumbnail of the photo by `codec`, in the stored form `stored`:
    the codec's plain file (what the first version-4 files held), AVIF packed, or a frame form."""
    c = container.read(based)
    small = thumbnail.shrink(helpers.pixels(photo), c.header.base_shrink)
    plain = thumbnail.encode(small, codec, 20)
    data = plain
    if stored != codec:
        got, data = thumbnail.pack(codec, plain, small.size, forms=(stored,))
        assert got == stored
    c.header.base_codec, c.header.base = thumbnail.CODE[stored], data
    return container.write(c)


@pytest.mark.parametrize("codec, forms", [("avif", ("avif", "avif-packed", "avif-frame")),
                                          ("webp", ("webp", "webp-frame"))])
def test_a_base_is_stored_in_its_smallest_form_and_every_form_decodes_alike(based, photo, codec, forms):
    """Packing drops about 250 bytes of AVIF boxes, the frame forms everything the thumbnail's size and
    length fix (35 more bytes for AVIF, 27 for WebP): each form gives back the same file, so every form
    decodes to the same picture, and old files (plain, packed) keep decoding."""
    files = {form: _with_stored_base(based, photo, codec, form) for form in forms}
    sizes = [len(container.read(files[form]).header.base) for form in forms]
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] - sizes[-1] >= (280 if codec == "avif" else 27)
    pictures = [helpers.pixels(odp.decode(data)) for data in files.values()]
    assert all(np.array_equal(pictures[0], p) for p in pictures[1:])
    assert {odp.info(data).base for data in files.values()} == {codec}
    assert hashlib.sha256(thumbnail.AVIF_BOXES).hexdigest()[:16] == "f93a60555bb17c5a"  # part of the format
    for b in (300, 1000, 3000):  # what the encoder writes: the frame forms
        h = container.read(odp.encode(photo, bytes=b, device="cpu")).header
        assert container.BASE_CODECS[h.base_codec] in ("avif-frame", "webp-frame")


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (33, 20), (100, 75), (384, 256), (768, 512)])
def test_frame_forms_rebuild_the_file_pillow_wrote(photo, size):
    """The reader rebuilds the AVIF boxes, AV1 sequence header and WebP chunk headers from the size and the
    frame's length alone: exactly the encoder's file, at every size and quality the encoder uses, with the
    search's settings and the finer ones of the chosen base."""
    small = photo.resize(size, Image.LANCZOS)
    for codec, finer in (("avif", False), ("avif", True), ("webp", False)):
        for q in (thumbnail.QUALITIES[codec].start, thumbnail.QUALITIES[codec].stop - 1):
            plain = thumbnail.encode(small, codec, q, finer)
            stored, data = thumbnail.pack(codec, plain, size)
            assert stored == codec + "-frame" and thumbnail.unpack(stored, data, size) == plain


@pytest.mark.parametrize("damage", ["cut", "garbage", "bomb"])
def test_bad_packed_avif_boxes_are_refused_in_one_line(based, photo, damage):
    """Untrusted input: boxes that do not inflate, stop short, or inflate past MAX_AVIF_BOXES."""
    c = container.read(_with_stored_base(based, photo, "avif", "avif-packed"))
    base = c.header.base
    z = __import__("zlib").compressobj(9, 8, -15, 9, 0, zdict=thumbnail.AVIF_BOXES)
    c.header.base = {"cut": base[:6], "garbage": b"\xff" * 40 + base,
                     "bomb": z.compress(bytes(thumbnail.MAX_AVIF_BOXES + 1)) + z.flush() + base}[damage]
    bad = container.write(c)
    for call in (odp.decode, odp.verify):
        with pytest.raises(FormatError, match="base thumbnail") as e:
            call(bad)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("form", ["avif-frame", "webp-frame"])
@pytest.mark.parametrize("damage", ["cut", "garbage", "tiny", "huge"])
def test_a_bad_frame_base_is_refused_in_one_line(based, photo, form, damage):
    """Untrusted input: a frame cut short, replaced by garbage, of a byte or two, or declared (by the
    header's size) too large for its codec."""
    c = container.read(_with_stored_base(based, photo, form.split("-")[0], form))
    base = c.header.base
    c.header.base = {"cut": base[:len(base) // 2], "garbage": bytes(range(256)) * 2, "tiny": base[:2],
                     "huge": base}[damage]
    if damage == "huge":  # a thumbnail as large as the image itself, the display size made too large for it
        c.header.base_shrink, c.header.display_width, c.header.display_height = 1, 17000, 9000
        c.header.width, c.header.height = 17000, 9000
        c.header.weights = c.header.caps = b""
        c.layers, c.stages = [], []
    bad = container.write(c)
    for call in (odp.decode, odp.verify):
        with pytest.raises(FormatError, match="base thumbnail|corrupt") as e:
            call(bad)
        assert "\n" not in str(e.value)
        assert damage != "huge" or "too large for" in str(e.value)


def test_a_file_of_the_earlier_base_model_decodes_with_it(photo, based):
    """A version-4 file names the weights that wrote its tokens: one written by odp-classic-x2-v1 verifies,
    cuts and decodes with v1 while new files take the newest base model (same encoder, tokens and
    context model; v2's decoder was fine-tuned for few tokens)."""
    from odp.codec.quality import psnr

    old = (helpers.DATA / "astronaut-classic-x2-v1.odp").read_bytes()
    assert odp.model_of(old).name == "odp-classic-x2-v1"
    assert odp.model_of(based).name == registry.base_model().name != "odp-classic-x2-v1"
    assert odp.info(old).entropy_model == odp.info(based).entropy_model == "ctx16d-classic-v1"
    odp.verify(old)
    ref = np.asarray(photo.convert("RGB"))
    shown = np.asarray(odp.decode(old, device="cpu").convert("RGB"))
    first_cut = np.asarray(odp.decode(odp.truncate(old, tokens=1), device="cpu").convert("RGB"))
    assert psnr(ref, shown) > psnr(ref, first_cut) > 20


def _float_low_band(d: np.ndarray) -> np.ndarray:
    """The low band by its definition (docs/format.md): the taps normalised, edges mirrored, in floating point."""
    taps = np.array(thumbnail.LOW_BAND_TAPS, np.float64) / sum(thumbnail.LOW_BAND_TAPS)
    r = len(taps) // 2
    p = np.pad(d.astype(np.float64), ((r, r), (r, r), (0, 0)), mode="symmetric")
    h, w = d.shape[:2]
    across = sum(t * p[:, k:k + w] for k, t in enumerate(taps))
    return sum(t * across[k:k + h] for k, t in enumerate(taps))


def test_the_base_low_band_is_exact_integer_arithmetic(monkeypatch):
    """Against the definition in floating point: within half a level before rounding; a picture that
    differs from its base by a constant takes the base exactly at 255/255; strips join without a seam."""
    rng = np.random.default_rng(3)
    picture = rng.integers(20, 236, (300, 70, 3), dtype=np.uint8)   # taller than a strip (256 rows)
    base = rng.integers(0, 256, picture.shape, dtype=np.uint8)
    for weight in (0, 1, 100, 255):
        want = picture + weight / 255 * _float_low_band(base.astype(np.int32) - picture)
        got = thumbnail.with_low_band(picture, base, weight)
        assert got.dtype == np.uint8 and np.abs(got - np.clip(want, 0, 255)).max() <= 0.5 + 1e-9
    assert np.array_equal(thumbnail.with_low_band(picture, picture + 9, 255), picture + 9)
    assert np.array_equal(thumbnail.with_low_band(picture, base, 0), picture)
    strips = thumbnail.with_low_band(picture, base, 200)
    monkeypatch.setattr(thumbnail, "_LOW_BAND_ROWS", 10_000)
    assert np.array_equal(thumbnail.with_low_band(picture, base, 200), strips)
    tiny = picture[:3, :2]  # smaller than the taps: mirrored again and again
    assert thumbnail.with_low_band(tiny, tiny + 5, 255).tolist() == (tiny + 5).tolist()


def test_a_file_on_a_base_takes_its_low_band_where_that_brings_the_picture_nearer(photo, based):
    """A file on a base shrunk at most twice carries the weight for its shrink; it decodes nearer the photo
    than the same tokens without it, and a cut keeps it (the header stays whole)."""
    c = container.read(based)
    assert c.header.base_low_band == thumbnail.LOW_BAND_WEIGHTS[c.header.base_shrink] > 0
    c.header = dataclasses.replace(c.header, base_low_band=0)
    without = container.write(c)
    assert len(without) == len(based) - 1
    ref = helpers.pixels(photo)
    assert helpers.psnr(ref, odp.decode(based)) > helpers.psnr(ref, odp.decode(without))
    cut = odp.truncate(based, tokens=2)
    assert container.read(cut).header.base_low_band == container.read(based).header.base_low_band
    assert odp.info(cut).base_low_band == container.read(based).header.base_low_band


def _ladder(photo: Image.Image):
    """The encoder's candidate files for `photo` (ratecontrol.ScaleLadder), as `odp.encode` builds them on a CPU."""
    from odp.codec import coding, ratecontrol
    from odp.codec.imaging import Prepared

    engine = coding.engine_for(coding.EncodeOptions(device="cpu"))
    return ratecontrol.ScaleLadder(Prepared(np.asarray(photo), b"", b""), engine, refine=True, base=True)


def test_a_token_share_too_small_for_a_layer_goes_to_the_thumbnail(adaptive_photo):
    """At 0.005 bpp of a 768x512 photo the twentieth of the budget kept for tokens cannot hold one layer (a
    token for each of 24 tiles): the file is then the thumbnail alone, chosen within the whole budget,
    not the smaller thumbnail of 19/20 of it with the rest unused."""
    n = 245
    data = odp.encode(adaptive_photo, bytes=n, device="cpu")
    c = container.read(data)
    assert c.header.version == 4 and not c.layers and len(data) <= n
    ladder = _ladder(adaptive_photo)
    share = ladder.base_within(n)  # 19/20 of what the header leaves
    whole_budget = ladder.base_within(n, share=1.0, alone=True)
    assert len(c.header.base) > len(share.data) and c.header.base == whole_budget.data
    # the file it would have been: every token on the smaller thumbnail coded, then cut (no layer fits)
    cut_file = stream.truncate(ladder.based(share).data, max_bytes=n)
    cut = container.read(cut_file)
    assert not cut.layers
    alone = [container.write(container.Container(ladder.based_header(share), [])),
             container.write(container.Container(ladder.based_header(whole_budget, alone=True), []))]
    assert container.write(container.Container(cut.header, [])) == alone[0] and data == alone[1]
    # such a file names the model trained to draw a thumbnail alone; files with tokens name the base model
    assert odp.model_of(data).name == registry.thumbnail_model(registry.base_model()).name == "odp-thumbnail-x2-v1"
    assert registry.base_model().name == "odp-classic-x2-v2" and odp.model_of(cut_file).name == "odp-classic-x2-v2"
    shown = np.asarray(odp.decode(data).convert("RGB"))
    assert shown.shape == (512, 768, 3)


def test_a_cut_of_one_layer_gives_way_to_the_thumbnail_alone(adaptive_photo):
    """At 700 bytes of a 768x512 photo the tokens' share holds one layer (a token per tile): the thumbnail
    model's picture of a thumbnail with the whole budget draws better (ratecontrol.ALONE_MAX_LAYERS), so the
    file is that thumbnail alone; at 1100 bytes the cut keeps its two layers."""
    from odp.codec import ratecontrol

    ladder = _ladder(adaptive_photo)
    for n, layers in ((700, 1), (1100, 2)):
        cut_file = stream.truncate(ladder.based(ladder.base_within(n)).data, max_bytes=n)
        assert len(container.read(cut_file).layers) == layers
        data = odp.encode(adaptive_photo, bytes=n, device="cpu")
        if layers <= ratecontrol.ALONE_MAX_LAYERS:
            assert not container.read(data).layers and odp.model_of(data).name == "odp-thumbnail-x2-v1"
            assert container.read(data).header.base == ladder.base_within(n, share=1.0, alone=True).data
        else:
            assert data == cut_file and odp.model_of(data).name == "odp-classic-x2-v2"


def test_a_budget_whose_share_holds_no_thumbnail_takes_one_alone_where_the_whole_budget_does(adaptive_photo,
                                                                                            monkeypatch):
    """Just above the smallest thumbnail's file, 19/20 of the budget holds no thumbnail but the whole budget
    does: the file is that thumbnail alone, not the tokens-only file it used to be (on this photo 13.6-13.7
    dB against 15.05). Of the usual shrinks: with the fallback (1/16) the gap is a few bytes."""
    from odp.codec import ratecontrol

    monkeypatch.setattr(thumbnail, "FALLBACK_SHRINKS", ())
    ladder = _ladder(adaptive_photo)
    files = {n: ratecontrol.within(ladder, n) for n in range(100, 200, 4)}
    sizes = [len(d) for d in files.values()]
    assert all(len(d) <= n for n, d in files.items()) and sizes == sorted(sizes)  # on this photo, never shrinking
    gained = [n for n, d in files.items() if ladder.base_within(n) is None and d[4] == container.BASE_VERSION]
    assert gained, "no budget between 100 and 200 bytes falls between the share and the whole"
    n = gained[0]
    alone = container.read(files[n])
    assert not alone.layers and odp.model_of(files[n]).name == "odp-thumbnail-x2-v1"
    tokens_only = odp.encode(adaptive_photo, bytes=n, device="cpu", base=False)
    ref = helpers.pixels(adaptive_photo)
    assert helpers.psnr(ref, odp.decode(files[n])) > helpers.psnr(ref, odp.decode(tokens_only)) + 0.5


def test_a_budget_just_under_the_lowest_qualitys_thumbnail_finds_the_smaller_one_a_few_qualities_on(adaptive_photo):
    """AVIF's qualities 0-2 make a larger file than 3-5: a budget between the two sizes still gets a
    thumbnail (the search used to stop at quality 0); one under both gets none."""
    candidates = thumbnail.Candidates(np.asarray(adaptive_photo))
    lowest, smaller = (len(candidates.file("avif", 8, q)[1]) for q in (0, 3))
    assert smaller < lowest
    found = candidates.largest_within("avif", 8, lowest - 1)
    assert found is not None and len(candidates.file("avif", 8, found)[1]) <= lowest - 1
    assert candidates.largest_within("avif", 8, smaller - 1) is None


def test_the_chosen_avif_base_is_made_again_at_the_finer_speed_and_kept_where_better(adaptive_photo):
    """The search runs at the fast settings; only its winner is made again with thumbnail.FINER, a few
    qualities either side, and kept where it fits and its picture is better (on this photo at 300 bytes, not at 600):
    within the budget, as a frame."""
    pixels = np.asarray(adaptive_photo)
    kept = []
    for budget in (300, 600):
        candidates = thumbnail.Candidates(pixels)
        base = candidates.best_within(budget)
        finer = [key for key in candidates.made if key[3]]
        assert 1 <= len(finer) <= 2 * thumbnail.FINER_REACH + 1 and {key[0] for key in finer} == {"avif"}
        assert len({key[1] for key in finer}) == 1 and base.shrink == finer[0][1]  # the winner's shrink
        assert len(base.data) <= budget and base.codec == "avif-frame"
        fast = max((key for key in candidates.made if not key[3] and key[:2] == finer[0][:2]
                    and len(candidates.made[key][1]) <= budget), key=lambda key: key[2])
        fitting = [key for key in finer if len(candidates.made[key][1]) <= budget]
        best_finer = candidates.scored(*max(fitting, key=lambda key: key[2])[:3], finer=True)[0] if fitting else 0
        p = helpers.psnr(pixels, base.picture)
        assert p == max(candidates.scored(*fast[:3])[0], best_finer)
        kept.append(base.data in [candidates.made[key][1] for key in finer])
    assert kept == [True, False]


def test_finding_a_models_role_loads_only_the_model_it_returns(monkeypatch):
    """base_model, thumbnail_model and refinement_for read the installed files' headers; only the model
    they pick is hashed and loaded (an encode used to load all eleven, about 0.2 s)."""
    loaded, entry_at = [], registry.entry_at
    monkeypatch.setattr(registry, "entry_at", lambda path: loaded.append(path.stem) or entry_at(path))
    base = registry.base_model()
    assert loaded == [base.name] == ["odp-classic-x2-v2"]
    assert registry.thumbnail_model(base).name == "odp-thumbnail-x2-v1" and loaded[1:] == ["odp-thumbnail-x2-v1"]
    default = registry.find()
    stage = registry.refinement_for(default)
    assert stage.refines == default.sha256 and loaded[2:] == [default.name, "odp-refine-x2-v4"]


def test_a_budget_too_small_for_an_eighth_size_thumbnail_takes_a_sixteenth_size_one(adaptive_photo):
    """Under the smallest 1/8-size thumbnail (about 130 bytes of a 768x512 photo) a 1/16-size one still fits
    (thumbnail.FALLBACK_SHRINKS): the file is it alone, nearer the photo than tokens alone. Where one of
    SHRINKS fits, the fallback is never taken, even where its PSNR would be higher."""
    pixels = np.asarray(adaptive_photo)
    candidates, usual = thumbnail.Candidates(pixels), thumbnail.Candidates(pixels, fallback=())
    fell_back = []
    for n in range(60, 260, 8):
        got, want = candidates.best_within(n), usual.best_within(n)
        if want is not None:
            assert got.shrink == want.shrink and got.data == want.data
        elif got is not None:
            assert got.shrink == 16 and len(got.data) <= n
            fell_back.append(n)
    assert fell_back, "no budget between 60 and 260 bytes falls under every 1/8-size thumbnail but holds a 1/16 one"
    encoding = odp.Encoding(adaptive_photo, device="cpu")
    files = {n: encoding.within(n) for n in range(80, 140, 4)}  # the file's header comes on top of the thumbnail
    sixteenth = [n for n, d in files.items() if container.read(d).header.base_shrink == 16]
    larger = [n for n, d in files.items() if container.read(d).header.base_shrink in thumbnail.SHRINKS]
    assert sixteenth and (not larger or max(sixteenth) < min(larger))  # the smallest budgets, then 1/8 and larger
    n = sixteenth[0]
    data = files[n]
    c = container.read(data)
    assert c.header.version == 4 and not c.layers and len(data) <= n
    tokens_only = odp.encode(adaptive_photo, bytes=n, device="cpu", base=False)
    ref = helpers.pixels(adaptive_photo)
    assert helpers.psnr(ref, odp.decode(data)) > helpers.psnr(ref, odp.decode(tokens_only)) + 1.5  # 14.41, 12.74 dB


def test_a_budget_past_the_whole_file_keeps_it_whole_with_no_further_stage(photo):
    """Past the base model's last token no stage at 4x follows: it decoded worse in every case measured
    (ratecontrol.based_within), so a larger budget keeps the same file rather than a worse picture."""
    data = odp.encode(photo, bpp=4.0, device="cpu")  # an AVIF base of quality 95, the highest searched
    info = odp.info(data)
    assert info.version == container.BASE_VERSION and info.stages == 1 and info.complete
    assert len(data) < 4.0 * WIDTH * HEIGHT / 8
    assert odp.encode(photo, bpp=6.0, device="cpu") == data


def test_a_large_budget_takes_an_avif_base_past_the_qualities_the_model_trained_on(photo, monkeypatch):
    """Where AVIF's quality 50 leaves bytes (here 2 bpp), a higher quality fills them, for a better picture
    than with the search capped at 50 (thumbnail.QUALITIES)."""
    data = odp.encode(photo, bpp=2.0, device="cpu")
    monkeypatch.setattr(thumbnail, "QUALITIES", {**thumbnail.QUALITIES, "avif": range(0, 51)})
    capped = odp.encode(photo, bpp=2.0, device="cpu")
    assert odp.info(data).base == "avif" and len(capped) < len(data) <= 2.0 * WIDTH * HEIGHT / 8
    ref = helpers.pixels(photo)
    assert helpers.psnr(ref, odp.decode(data)) > helpers.psnr(ref, odp.decode(capped))
