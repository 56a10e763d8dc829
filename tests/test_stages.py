"""Refinement stages in the stream layer (codec/stream.py, format version 3): appending a stage to a
whole file, decoding every stage's tokens, verifying, and cutting anywhere without the network.

The stage's tokens here are real: the shipped model's tokens of the photo enlarged 2x (the tokens a
refinement model makes differ, the stream layer does not look at them)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from odp.codec import stream
from odp.codec.errors import OdpWarning
from odp.formats import container
from odp.formats.container import FormatError


STAGE_LEVEL = 96  # tokens per tile the stage keeps (fewer than all: the context model is slow)


@pytest.fixture(scope="module")
def staged(adaptive_odp, adaptive_photo, model):
    """(whole first-stage file, staged file, the stage's tokens)."""
    from odp.codec.engine import Engine

    big = np.asarray(adaptive_photo.resize((adaptive_photo.width * 2, adaptive_photo.height * 2)))
    toks = Engine(model.entry, "cpu").encode(big)
    data = stream.add_stage(adaptive_odp, toks, big.shape[1], big.shape[0], model.entry, level=STAGE_LEVEL)
    return adaptive_odp, data, toks


def test_add_stage_round_trip(staged, model):
    first, data, toks = staged
    assert data[4] == container.STAGED_VERSION and data.startswith(container.MAGIC)
    stages = stream.read_stages(data)
    assert len(stages) == 2
    base = stream.read_tokens(first)
    assert np.array_equal(stages[0].tokens, base[2]) and np.array_equal(stages[0].counts, base[3])
    s = stages[1]
    assert s.container.header.kind == 1 and s.container.header.display_size == (768, 512)
    assert (s.container.header.width, s.container.header.height) == (1536, 1024)
    assert (s.counts == STAGE_LEVEL).all() and np.array_equal(s.tokens[:, :STAGE_LEVEL], toks[:, :STAGE_LEVEL])
    stream.verify(data)


def test_every_cut_point_is_a_valid_smaller_file(staged):
    first, data, toks = staged
    cuts = stream.cut_points(data)
    sizes = [n for n, _ in cuts]
    assert sizes == sorted(sizes) and sizes[-1] == len(data)
    assert sizes[:len(stream.cut_points(first))] == [n for n, _ in stream.cut_points(first)]
    for n, _ in cuts[::3] + cuts[-1:]:
        cut = stream.truncate(data, max_bytes=n)
        assert len(cut) == n
        stream.verify(cut)


def test_truncate_fits_any_budget_and_keeps_the_first_stage_whole(staged):
    first, data, toks = staged
    last = 0
    for budget in (len(first) // 3, len(first) - 1, len(first), len(first) + 60, (len(first) + len(data)) // 2,
                   len(data) - 5, len(data)):
        cut = stream.truncate(data, max_bytes=budget)
        assert len(cut) <= budget and len(cut) >= last
        last = len(cut)
        stream.verify(cut)
        stages = stream.read_stages(cut)
        if budget < len(first):  # within the first stage: a plain version-2 file, as if the stage were not there
            assert cut == stream.truncate(first, max_bytes=budget) and cut[4] == container.VERSION
        else:
            assert np.array_equal(stages[0].tokens, stream.read_tokens(first)[2])
        if len(stages) == 2:  # the stage's tokens are a prefix of each tile's sequence
            s = stages[1]
            for t in range(len(toks)):
                assert np.array_equal(s.tokens[t, :s.counts[t]], toks[t, :s.counts[t]])
    assert stream.truncate(data, max_bytes=len(data)) == data
    # tokens per tile cut the first stage, the stages after it are dropped
    assert stream.truncate(data, tokens=16) == stream.truncate(first, tokens=16)


def test_a_file_cut_short_inside_the_stage_decodes_its_whole_layers(staged):
    first, data, toks = staged
    for n in (len(first) + 3, len(first) + 40, (len(first) + len(data)) // 2, len(data) - 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OdpWarning)
            stages = stream.read_stages(data[:n])
        assert np.array_equal(stages[0].tokens, stream.read_tokens(first)[2])
        if len(stages) == 2:
            s = stages[1]
            assert s.counts.max() < STAGE_LEVEL and all(
                np.array_equal(s.tokens[t, :s.counts[t]], toks[t, :s.counts[t]]) for t in range(len(toks)))
        with pytest.raises(FormatError, match="cut short"):
            stream.verify(data[:n])


def test_add_stage_refuses_a_cut_file(staged, model):
    first, data, toks = staged
    with pytest.raises(ValueError, match="whole file"):
        stream.add_stage(first[:-3], toks, 1536, 1024, model.entry)
    many = data
    for _ in range(container.MAX_STAGES - 2):
        many = stream.add_stage(many, toks, 1536, 1024, model.entry, level=8)
    assert len(stream.read_stages(many)) == container.MAX_STAGES
    with pytest.raises(ValueError, match="at most"):
        stream.add_stage(many, toks, 1536, 1024, model.entry)


def test_a_refinement_stage_improves_the_picture_at_every_cut(refine_model, adaptive_photo, model):
    """The whole path of a refinement stage on a real photo (its model: the shipped one): the first
    stage's picture enlarged, the image coded 2x with it, the stage appended, then decoded from the file
    at its cuts: the picture gets better than the first stage's as the stage's layers arrive, and never
    worse from one cut to the next by more than noise."""
    from PIL import Image

    from odp.codec import refinement
    from odp.codec.coding import encode
    from odp.codec.engine import Engine
    from odp.codec.options import EncodeOptions
    from odp.codec.quality import psnr

    pixels = np.asarray(adaptive_photo)[128:384, 256:640]  # 384 x 256: 6 tiles of the stage at 2x
    first = encode(Image.fromarray(pixels), EncodeOptions(device="cpu", scale=1, refine=False),
                   engine=Engine(model.entry, "cpu"))
    engines = {}
    data = refinement.refine(first, pixels, Engine(refine_model.entry, "cpu"), level=128, adaptive=False)[0]
    assert len(stream.read_stages(data)) == 2
    q0, last, qs = psnr(refinement.shown(first, engines=engines), pixels), 0.0, []
    for n, _ in stream.cut_points(data)[len(stream.cut_points(first)):]:
        q = psnr(refinement.shown(stream.truncate(data, max_bytes=n), engines=engines), pixels)
        # its first tokens add little (a perceptual decoder's first tokens draw texture, which can cost a
        # few hundredths of a dB: -0.053 on this crop with odp-refine-x2-v3), none takes much away
        assert q > q0 - 0.1 and q > last - 0.1
        last = q
        qs.append(q)
    assert last > q0 + 0.5, (q0, qs)
    # tokens by need: the stage's header carries its tiles' weights, and the file is as valid
    adaptive = refinement.refine(first, pixels, Engine(refine_model.entry, "cpu"), adaptive=True)[0]
    stage = stream.read_stages(adaptive)[1].container.header
    assert stage.adaptive and len(stage.weights or stage.caps) == 6
    stream.verify(adaptive)
    assert psnr(refinement.shown(adaptive, engines=engines), pixels) > q0 + 0.5
    # a stage naming a model that is no refinement model is refused in one line
    plain = stream.add_stage(first, stream.read_stages(data)[1].tokens, 768, 512, model.entry, level=4)
    with pytest.raises(FormatError, match="no refinement model"):
        refinement.shown(plain)


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_files_refined_by_an_earlier_refinement_model_decode_with_it(refine_model, version):
    """A file whose stage odp-refine-x2-v1 (-v2, -v3) made names those weights and their context model: it
    verifies, cuts and decodes with them whatever the default is now, and its stage improves on its
    first stage as when it was written."""
    from PIL import Image

    from odp.codec import refinement
    from odp.codec.quality import psnr

    import helpers

    data = (helpers.DATA / f"astronaut-refine-x2-{version}.odp").read_bytes()
    photo = np.asarray(Image.open(helpers.DATA / "astronaut-320x240.png").convert("RGB"))
    stage = stream.read_stages(data)[1]
    assert stage.model.name == f"odp-refine-x2-{version}"
    assert refine_model.entry.name != stage.model.name  # an older stage than the one new files get
    # v3 shares v2's tokens, and its files were coded with v2's digit context model
    assert stage.container.header.entropy_model == {"v3": "ctx16d-refine-v2"}.get(version, f"ctx16-refine-{version}")
    stream.verify(data)
    first = stream.truncate(data, level=10**6)  # the first stage alone, whole
    assert not container.read(first).stages
    whole, alone = psnr(refinement.shown(data), photo), psnr(refinement.shown(first), photo)
    assert whole > alone + 0.5, (whole, alone)


def test_new_files_code_with_the_digit_context_models_and_old_files_keep_theirs(refine_model, model):
    """Each tokenizer keeps every context model it ever shipped with: new files name the newest (the digit
    models: a token as four base-8 digits), a file names the one it was coded with and decodes with it."""
    from PIL import Image

    import odp
    from odp.codec import registry
    from odp.entropy.context import ContextModel, DigitContextModel

    import helpers

    first, stage = model.entry, refine_model.entry
    assert [i for i, _ in first.contexts] == ["ctx16-v1", "ctx16d-v1"]
    assert [i for i, _ in stage.contexts] == ["ctx16-refine-v2", "ctx16d-refine-v2"]
    assert isinstance(first.entropy("ctx16-v1"), ContextModel)
    assert isinstance(first.entropy("ctx16d-v1"), DigitContextModel) and first.best_entropy.id == "ctx16d-v1"
    assert stage.best_entropy.id == "ctx16d-refine-v2" and registry.refinement_for(first) is stage
    photo = Image.open(helpers.DATA / "astronaut-320x240.png")
    new = odp.encode(photo)
    headers = [s.container.header.entropy_model for s in stream.read_stages(new)]
    assert headers == ["ctx16d-v1", "ctx16d-refine-v2"]
    stream.verify(new)
    old = (helpers.DATA / "astronaut-refine-x2-v2.odp").read_bytes()  # written with ctx16-v1 and ctx16-refine-v2
    assert [s.container.header.entropy_model for s in stream.read_stages(old)] == ["ctx16-v1", "ctx16-refine-v2"]
    # the same tokens cost fewer bits under the digit models (docs/model.md gives the figures)
    for s in stream.read_stages(old):
        entry = s.model
        toks = s.tokens[:, :int(np.min(s.counts))]
        flat, digits = (stream.token_bits(toks, entry.entropy(i)).sum() for i, _ in entry.contexts)
        assert digits < flat


def test_a_default_file_cut_before_its_refinement_stage_decodes_its_first_stage(small_staged, small_photo):
    """A raw cut (a download broken off) that ends inside the first stage still announces its refinement
    stage in the header: it decodes the first stage's whole layers with a warning, as any cut does."""
    import odp
    from odp.codec.quality import psnr

    n = len(small_staged)
    while container.read(small_staged[:n]).stages:
        n -= 1
    cut = small_staged[:n - 1]  # inside the first stage's last layer
    assert container.read(cut).header.stages_after == 1 and not container.read(cut).stages
    with pytest.warns(OdpWarning, match="cut short"):
        shown = np.asarray(odp.decode(cut, device="cpu"))
    src = np.asarray(small_photo)
    assert shown.shape == src.shape
    smaller = odp.truncate(small_staged, bytes=n // 2)
    assert psnr(shown, src) > psnr(np.asarray(odp.decode(smaller, device="cpu")), src)
