"""`odp tui`: Pilot tests that press the keys and read the widgets, an SVG snapshot, and broken files.

Small and fast: the 320×240 test photo (two tiles; MS-SSIM needs 161 px), few tokens, the
classic codecs at their fast settings, half-block drawing (what a plain terminal gets; the zoom
test draws with every renderer textual-image has). The tests that need no fresh encode share one
opened photo (`opened`).
The snapshot shows real decoded pixels, so new weights or codec libraries change it:
look at the new screen, then accept it with `pytest tests/test_tui.py --snapshot-update`.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("textual")
pytest.importorskip("textual_image")

import odp as odp_api  # noqa: E402
from odp.codec import coding, stream  # noqa: E402
from odp.codec.evaluation import perceptual  # noqa: E402
from odp.formats import container  # noqa: E402
from odp.tui.app import OdpTui  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Image.Image.getdata:DeprecationWarning")  # textual-image 0.12
DATA = Path(__file__).parent / "data"
PHOTO = "astronaut-320x240.png"
SIZE = (120, 36)


@pytest.fixture
def photo_dir(tmp_path) -> Path:
    """A folder with one real photo (a fixed name: the snapshot shows the folder's listing)."""
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(DATA / PHOTO, d / PHOTO)
    return d


def make_app(folder: Path, **kw) -> OdpTui:
    kw = {"tokens": 16, "fast": True, "graphics": "halfcell", "device": "cpu", "lpips": False, **kw}
    return OdpTui(folder, **kw)


@pytest.fixture(scope="module")
def opened(tmp_path_factory):
    """The photo opened once for the tests below: their apps share its one encode and its classic files."""
    from odp.tui.compare import Photo

    d = tmp_path_factory.mktemp("shared") / "photos"
    d.mkdir()
    shutil.copy(DATA / PHOTO, d / PHOTO)
    return Photo(d / PHOTO, ("psnr", "ms-ssim"), fast=True, device="cpu")


def app_for(photo, **kw) -> OdpTui:
    app = make_app(photo.path.parent, **kw)
    app.items[photo.path] = photo
    return app


def status(app: OdpTui) -> str:
    return app.query_one("#status").render().plain


async def settle(pilot) -> None:
    """Let key handlers and debounce timers start their work, then wait for all of it to be drawn."""
    await pilot.pause(0.3)
    await pilot.app.idle()
    await pilot.pause()


def check_panes(app: OdpTui) -> None:
    """Every file shown fits the budget, and every picture has its figures."""
    assert app.error is None
    assert app.budget is not None
    for key in ("odp", "jpeg", "webp", "avif", "hull"):
        s = app.panes[key].shown
        assert s is not None, key
        if s.pixels is not None:
            assert s.nbytes <= app.budget, (key, s.nbytes, app.budget)
            assert {"psnr", "ms-ssim"} <= set(s.scores), key
            assert "PSNR" in str(app.panes[key].query_one(".caption").render())
        else:
            assert "fits" in s.note or "not available" in s.note
    assert app.query_one("#step").render().plain == "ready"


def test_keys_move_the_budget(photo_dir):
    async def run():
        app = make_app(photo_dir, lpips=None)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            check_panes(app)
            odp = app.panes["odp"].shown
            assert odp.tokens == 16 and app.budget == odp.nbytes
            assert odp.pixels.shape == (240, 320, 3)
            if perceptual.available():
                assert "lpips-alex" in odp.scores
            small, full = app.budget, app.items[app.current].full

            await pilot.press("plus")  # eight tokens per tile up: 24 (on average: its two tiles differ)
            await settle(pilot)
            assert app.tokens == 24 and app.panes["odp"].shown.tokens == 24
            assert app.budget > small
            assert app.items[app.current].full is full  # a new budget truncates the one encode
            check_panes(app)

            await pilot.press("left_square_bracket", "minus")  # halve: 12, then the multiple of 8 below: 8
            await settle(pilot)  # the work for 12 was cancelled or dropped: only 8 is shown
            assert app.tokens == 8 and app.panes["odp"].shown.tokens == 8
            check_panes(app)

            await pilot.press("b")  # an exact budget, typed
            await pilot.press(*"1500", "enter")
            await settle(pilot)
            assert app.max_bytes == 1500 and app.budget == 1500
            check_panes(app)
            shown = app.panes["odp"].shown  # what `odp encode --bytes 1500` makes: a thumbnail, then tokens
            assert shown.data == app.items[app.current].encoding.within(1500) and shown.nbytes <= 1500
            assert container.read(shown.data).header.base and " on a" in shown.label
            assert any(app.panes[k].shown.pixels is not None for k in ("webp", "avif", "hull"))
            assert "1,500 B" in app.query_one("#status").render().plain
    asyncio.run(run())


CELL = (8, 16)  # a terminal's cell in pixels, as one with graphics reports it (tests run without a terminal)


@pytest.mark.parametrize("graphics, picks", [
    ("halfcell", None), ("sixel", None), ("tgp", None),
    ("auto", "halfcell"),  # what auto gets in tmux and in terminals without graphics
    ("auto", "tgp"),       # Kitty
    ("auto", "sixel"),
])
def test_zoom_is_1_to_1_with_every_renderer(opened, monkeypatch, graphics, picks):
    """`z` shows the same crop in every pane, one image pixel per pixel the renderer draws: it once did
    nothing in auto mode, where the widget's class name does not say what it draws with."""
    from textual_image import renderable
    from textual_image import widget as ti
    from textual_image._terminal import CellSize, get_cell_size

    monkeypatch.setattr(get_cell_size, "_result", CellSize(*CELL))
    monkeypatch.setattr(renderable.tgp, "_send_tgp_message", lambda **kw: None)  # no terminal to send images to
    if picks == "sixel":  # what textual-image's import picks when the terminal answers for Sixel
        monkeypatch.setattr(ti, "Image", ti.SixelImage)
    elif picks:
        monkeypatch.setattr(ti.AutoImage, "_Renderable", {"halfcell": renderable.HalfcellImage,
                                                          "tgp": renderable.TGPImage}[picks])
        monkeypatch.setattr(ti, "Image", ti.AutoImage)
    pw, ph = (1, 2) if "halfcell" in (graphics, picks) else CELL

    async def run():
        app = app_for(opened, graphics=graphics)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert app.pixels_per_cell() == (pw, ph)
            await pilot.press("z")
            await pilot.pause()
            crops = {k: p.crop for k, p in app.panes.items() if p.shown is not None and p.shown.pixels is not None}
            assert len(crops) >= 2 and len(set(crops.values())) == 1  # the same region in every pane
            left, top, w, h = next(iter(crops.values()))
            boxes = [app.panes[k].query_one(".box").content_size for k in crops]
            assert (w, h) == (min(320, pw * min(b.width for b in boxes)), min(240, ph * min(b.height for b in boxes)))
            assert w < 320 and h < 240  # a crop, drawn larger than the whole picture was
            img = app.query_one("#img-odp")
            assert (img.styles.width.value, img.styles.height.value) == (round(w / pw), round(h / ph))  # 1:1
            assert "zoom 1:1" in status(app)

            await pilot.click("#img-original", offset=(0, 0))  # the crop's top-left cell becomes the centre
            await pilot.pause()
            assert abs(app.centre[0] * 320 - left) <= pw and abs(app.centre[1] * 240 - top) <= ph
            new = app.panes["odp"].crop
            assert new == app.panes["original"].crop and new[2:] == (w, h)
            assert abs(new[0] - max(0, left - w // 2)) <= pw and abs(new[1] - max(0, top - h // 2)) <= ph
            await pilot.press("z")
            await pilot.pause()
            assert app.panes["odp"].crop is None
    asyncio.run(run())


def test_classic_panes_show_downscaled_files_at_odps_sizes(opened):
    """At ODP's whole file (668 B) no full-size JPEG, WebP or AVIF fits: each pane shows its best downscale,
    named; at a budget nothing fits, each pane says so."""
    from odp.codec.evaluation.settings import SCALES

    async def run():
        app = app_for(opened, tokens=256)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            check_panes(app)
            budget = app.budget
            best = {}
            for key, name in (("jpeg", "JPEG"), ("webp", "WebP"), ("avif", "AVIF")):
                assert opened.at_scale(key, 1, budget) is None  # no full-size file fits
                s, pane = app.panes[key].shown, app.panes[key]
                fits = [f for scale in SCALES if (f := opened.at_scale(key, scale, budget)) is not None]
                assert s.pixels is not None and s in fits and s.rank == max(f.rank for f in fits)  # MS-SSIM
                assert s.label.startswith(f"{name} q") and " at 1/" in s.label and pane.border_title == s.label
                assert f"{name} {s.nbytes:,} B" in status(app)
                best[key] = s
            hull = app.panes["hull"]
            assert hull.shown is max(best.values(), key=lambda s: s.rank)
            assert hull.border_title == f"hull: {hull.shown.label}"

            await pilot.press("b", *"90", "enter")  # less than any classic file at any scale
            await settle(pilot)
            check_panes(app)
            for key, name in (("jpeg", "JPEG"), ("webp", "WebP"), ("avif", "AVIF"), ("hull", "hull")):
                s = app.panes[key].shown
                assert s.pixels is None and "fits 90 B, even downscaled to 1/8" in s.note, (key, s.note)
                assert s.note in str(app.panes[key].query_one(".caption").render())
                assert f"{name} none fits" in status(app)
    asyncio.run(run())


def test_budget_is_every_panes_and_the_header_shows_real_bytes(opened):
    """Tokens count the first stage, whose whole file keeps fewer than 256 per tile: `-` at 256 steps down
    from what it keeps (a new picture); `]` at the top goes on by bytes into the refinement stage; a
    typed budget past the whole file shows that file, said so in the header."""
    async def run():
        app = app_for(opened, tokens=256)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            whole, odp = opened.full, app.panes["odp"].shown
            kept = opened.max_tokens
            first = odp.data
            assert kept < 256 and odp.tokens == kept and not odp.whole
            assert first == odp_api.truncate(whole, tokens=256) and len(first) < len(whole)
            assert f"ODP {kept} tokens" in status(app) and f"ODP {len(first):,} B" in status(app)

            await pilot.press("minus")
            await settle(pilot)
            smaller = app.panes["odp"].shown
            assert smaller.tokens == app.tokens == (kept - 1) // 8 * 8 and not smaller.whole
            assert len(smaller.data) < len(first) and (smaller.pixels != odp.pixels).any()  # a new picture
            assert f"ODP {smaller.tokens} tokens" in status(app) and "whole file" not in status(app)
            assert app.budget == smaller.nbytes
            check_panes(app)

            await pilot.press("right_square_bracket")  # twice the tokens: back to the first stage's top
            await settle(pilot)
            assert app.panes["odp"].shown.data == first
            await pilot.press("right_square_bracket")  # at the top: twice the bytes, a file for that budget
            await settle(pilot)
            check_panes(app)
            refined = app.panes["odp"].shown  # a thumbnail and tokens refining it (format version 4)
            assert app.budget == 2 * len(first) and len(first) < refined.nbytes <= 2 * len(first)
            assert odp_api.info(refined.data).version == 4 and " on a" in refined.label
            assert (refined.pixels != odp.pixels).any()

            await pilot.press("b", *str(len(whole) + 100), "enter")
            await settle(pilot)
            check_panes(app)
            assert app.budget == len(whole) + 100 and f"budget {len(whole) + 100:,} B" in status(app)
            shown = app.panes["odp"].shown
            assert shown.data == opened.encoding.within(len(whole) + 100)  # what `odp encode --bytes` makes
            assert len(shown.data) <= len(whole) + 100
            if odp_api.info(shown.data).base:  # a thumbnail, then tokens (version 4): a file for this budget
                assert f"ODP {len(shown.data):,} B" in status(app) and " on a" in shown.label
            elif shown.data == whole:  # the further stage's first layer does not fit, or costs more than it adds
                assert f"ODP {len(whole):,} B (whole file)" in status(app)
            else:  # its first layer fits and adds: the whole default file, then the third stage's start
                assert odp_api.info(shown.data).stages == 3
                assert f"ODP {len(shown.data):,} B" in status(app)
    asyncio.run(run())


def test_hull_and_save(photo_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()

    async def run():
        app = make_app(photo_dir, out=out)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("h")  # hull off: its pane goes
            await settle(pilot)
            assert not app.panes["hull"].display
            await pilot.press("h")
            await settle(pilot)
            assert app.panes["hull"].display and app.panes["hull"].shown is not None

            await pilot.press("s", "s")
            await pilot.pause(0.2)
            await app.workers.wait_for_complete()
            names = sorted(p.name for p in out.iterdir())
            stem = PHOTO.removesuffix(".png") + ".16t"
            assert names == sorted([f"{stem}.odp", f"{stem}-2.odp", f"{stem}.compare.png", f"{stem}.compare-2.png"])
            data = (out / f"{stem}.odp").read_bytes()
            assert data == app.panes["odp"].shown.data == stream.truncate(app.items[app.current].full, tokens=16)
            assert round(container.read(data).mean_tokens) == 16  # 16 per tile on average
    asyncio.run(run())


def test_odp_file_shows_header_and_truncation_slider(tmp_path, small_odp):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "small.odp").write_bytes(small_odp)

    async def run():
        app = make_app(folder)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert app.query_one("#single").display and not app.query_one("#grid").display
            info = app.query_one("#info").render().plain
            assert "ODP image 64×48" in info and "(format v2)" in info
            layers = container.read(small_odp).layers
            assert f"layers:  {len(layers)} " in info
            slider = app.query_one("#slider")  # the file's own cut points: one per layer, with the cut's size
            assert slider.points == [(x.level, len(stream.truncate(small_odp, tokens=x.level))) for x in layers]
            whole = container.read(small_odp).kept  # a lone tile's cap
            assert slider.points[-1] == (whole, len(small_odp))
            assert slider.tokens == whole
            await pilot.press("minus")
            await settle(pilot)
            await pilot.press("left_square_bracket")
            await settle(pilot)
            shown = app.query_one("#pane-file").shown
            half = (whole - 1) // 8 * 8 // 2  # eight tokens fewer (to a multiple of 8), then half
            assert shown.tokens == half and shown.nbytes == len(stream.truncate(small_odp, tokens=half))
            await pilot.click("#slider", offset=(0, 0))  # the first truncation point
            await settle(pilot)
            assert app.query_one("#pane-file").shown.tokens == slider.points[0][0] == 1
    asyncio.run(run())


def test_version_1_file_shows_its_chunks_as_truncation_points(tmp_path):
    from helpers import v1_file

    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "old.odp").write_bytes(v1_file())

    async def run():
        app = make_app(folder)
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert app.error is None
            info = app.query_one("#info").render().plain
            assert "ODP image 320×240" in info and "(format v1)" in info and "64.0 of 256" in info
            slider = app.query_one("#slider")
            assert [k for k, _ in slider.points] == list(range(8, 65, 8)) and slider.tokens == 64
            shown = app.query_one("#pane-file").shown
            assert shown.tokens == 64 and shown.data == v1_file()  # all of it: the file itself
            assert shown.pixels.tobytes() == coding.decode(v1_file(), device="cpu").tobytes()
    asyncio.run(run())


def test_broken_files_show_an_error_not_a_crash(tmp_path, small_odp):
    folder = tmp_path / "broken"
    folder.mkdir()
    bad = bytearray(small_odp)
    start = len(small_odp) - container.read(small_odp).payload_bytes
    bad[start + 3] ^= 0xFF  # the first layer's first word: its tokens no longer decode
    (folder / "a-corrupt.odp").write_bytes(bytes(bad))
    (folder / "b-garbage.png").write_bytes(b"this is not a PNG file at all")
    (folder / "c-gone.png").symlink_to(folder / "nowhere.png")
    (folder / "d-presentation.odp").write_bytes(b"PK\x03\x04" + bytes(40))
    expected = {"a-corrupt.odp": "corrupt", "b-garbage.png": "not an image", "c-gone.png": "no such file",
                "d-presentation.odp": "OpenDocument"}
    if os.geteuid() != 0:  # root reads anything
        (folder / "e-locked.png").write_bytes((DATA / PHOTO).read_bytes())
        (folder / "e-locked.png").chmod(0)
        expected["e-locked.png"] = "permission denied"
    shutil.copy(DATA / PHOTO, folder / f"z-{PHOTO}")

    async def run():
        app = make_app(folder)
        async with app.run_test(size=SIZE) as pilot:
            files = app.query_one("#files")
            for i, path in enumerate(app.files):
                files.highlighted = i
                await settle(pilot)
                if path.name in expected:
                    assert app.error and expected[path.name] in app.error, (path.name, app.error)
                    assert app.query_one("#error").display
                    assert path.name in app.query_one("#error").render().plain
            assert app.error is None  # the good photo at the end still shows
            check_panes(app)
    asyncio.run(run())


def test_main_screen_snapshot(photo_dir, snap_compare):
    async def budget(pilot) -> None:  # 2,500 B: every codec has a file (ODP's whole file is smaller)
        await settle(pilot)
        await pilot.press("b", *"2500", "enter")
        await settle(pilot)

    assert snap_compare(make_app(photo_dir), terminal_size=SIZE, run_before=budget)


def test_cli_imports_textual_only_for_tui():
    code = "import sys, odp.cli.main; assert 'textual' not in sys.modules, 'textual imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    from click.testing import CliRunner

    from odp.cli.main import main

    r = CliRunner().invoke(main, ["tui", "--help"])
    assert r.exit_code == 0 and "--tokens" in r.output


def test_photo_budget_too_small_for_full_size_uses_a_smaller_coding_scale():
    """As `odp encode --bytes`: the full-size cut when it fits, else the largest smaller scale that does
    (encoded only then)."""
    from odp.tui.compare import Photo

    photo = Photo(Path(__file__).parent / "data" / "photo_768x512.png", ("psnr",), device="cpu")
    fits = photo.odp(max_bytes=2000)
    assert "at 1/" not in fits.label and photo.encoding.scales_encoded == [1]
    least = len(stream.truncate(photo.full, level=1))
    tiny = photo.odp(max_bytes=least - 1)
    assert tiny.label.endswith("at 1/2") and tiny.nbytes < least and tiny.pixels.shape == (512, 768, 3)
    assert container.read(tiny.data).header.display_size == (768, 512)


@pytest.mark.parametrize("freetype", [True, False])
def test_the_saved_sheet_draws_its_captions_with_or_without_freetype(monkeypatch, astronaut, freetype):
    """The standalone binary leaves FreeType out (odp.spec): the sheet then captions with Pillow's bitmap font."""
    import numpy as np
    from PIL import ImageFont, features

    from odp.tui.compare import Shown, sheet

    if not freetype:  # as Pillow is without its _imagingft module
        check = features.check
        monkeypatch.setattr(features, "check", lambda name: False if name == "freetype2" else check(name))
        monkeypatch.setattr(ImageFont, "core", object())
    pixels = np.asarray(astronaut)
    blank = sheet([(["odp", "1.2 KB"], Shown("odp", np.full_like(pixels, 255)))])
    out = sheet([(["odp", "1.2 KB"], Shown("odp", pixels)), (["jpeg"], Shown("jpeg", pixels))])
    h, w = pixels.shape[:2]
    assert out.width == 2 * w and out.height > h
    band = np.asarray(blank)[: blank.height - h]
    assert (band < 128).any()  # the caption was drawn
