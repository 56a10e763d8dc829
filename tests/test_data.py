"""Training-data preparation (odp.codec.training.data): the filtering rules, the licence lookup and
the output folder, on small local images only (no network, no apt)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from odp.codec.training import data

PHOTO = Path(__file__).parent / "data" / "photo_768x512.png"


def item(path: Path, name: str | None = None, **kw) -> data.Item:
    it = data.Item(name or path.name, "pkg", "1.0", "GPL-2+", "", path, "/" + path.name, **kw)
    data.measure(it)
    return it


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(PHOTO) as im:
        return im.convert("RGB")


def gradient(w: int, h: int) -> Image.Image:
    """A typical vector wallpaper background: a diagonal blend between two colours."""
    t = (np.arange(w)[None, :] + np.arange(h)[:, None]) / (w + h - 2)
    a, b = np.array([20, 40, 120]), np.array([250, 140, 60])
    return Image.fromarray((a + t[..., None] * (b - a)).round().astype(np.uint8))


def test_near_duplicate_keeps_largest(tmp_path, photo):
    photo.resize((1536, 1024), Image.LANCZOS).save(tmp_path / "big.png")
    photo.save(tmp_path / "small.jpg", quality=85)
    Image.open(tmp_path / "big.png").crop((480, 0, 1056, 1024)).save(tmp_path / "tall.png")
    items = [item(tmp_path / n) for n in ("small.jpg", "tall.png", "big.png")]
    data.decide(items, evals=[])
    status = {it.name: (it.status, it.reason) for it in items}
    assert status["big.png"] == ("kept", "")
    assert status["small.jpg"] == ("dropped", "near duplicate of big.png")
    assert status["tall.png"] == ("dropped", "near duplicate of big.png")  # a centre crop


def test_exact_duplicate_and_distinct_photos(tmp_path, photo):
    photo.save(tmp_path / "a.png")
    photo.save(tmp_path / "b.png", compress_level=1)  # other bytes, same pixels
    photo.transpose(Image.FLIP_TOP_BOTTOM).save(tmp_path / "c.png")
    items = [item(tmp_path / n) for n in ("a.png", "b.png", "c.png")]
    data.decide(items, evals=[])
    assert [(it.status, it.reason) for it in items] == [
        ("kept", ""), ("dropped", "exact duplicate of a.png"), ("kept", "")]


def test_few_colours_drops_gradient_keeps_photo(tmp_path, photo):
    gradient(1024, 768).save(tmp_path / "gradient.png")
    photo.save(tmp_path / "photo.png")
    Image.new("RGB", (600, 400), (90, 90, 90)).save(tmp_path / "tiny.png")
    items = [item(tmp_path / n) for n in ("gradient.png", "photo.png", "tiny.png")]
    data.decide(items, evals=[])
    g, p, t = items
    assert g.status == "dropped" and g.reason.startswith("few colours")
    assert p.status == "kept" and p.colours >= data.MIN_COLOURS
    assert t.reason == "too small (short side 400 < 512)"
    curated = item(tmp_path / "gradient.png", curated=True)  # --include photos skip these rules
    data.decide([curated], evals=[])
    assert curated.status == "kept"


def test_transparent_overlay_dropped(tmp_path, photo):
    im = photo.convert("RGBA")
    im.putalpha(Image.fromarray(np.full((512, 768), 40, np.uint8)))
    im.save(tmp_path / "overlay.png")
    it = item(tmp_path / "overlay.png")
    data.decide([it], evals=[])
    assert it.reason == "transparent (alpha down to 40)"


def test_eval_duplicate_dropped(tmp_path, photo):
    ev = tmp_path / "eval" / "photos"
    ev.mkdir(parents=True)
    photo.save(ev / "wikiphoto_001.png")
    gradient(512, 512).save(ev / "other.png")
    photo.save(tmp_path / "same.png")
    photo.resize((1152, 768), Image.LANCZOS).save(tmp_path / "bigger.jpg", quality=90)
    evals = data.eval_items(tmp_path / "eval")
    assert [e.name for e in evals] == ["photos/other.png", "photos/wikiphoto_001.png"]
    items = [item(tmp_path / "same.png"), item(tmp_path / "bigger.jpg", curated=True)]
    data.decide(items, evals)
    assert [it.reason for it in items] == ["eval duplicate (photos/wikiphoto_001.png)"] * 2


DEP5 = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: some-wallpapers

Files: *
Copyright: 2014 Visual Design Group
License: GPL-2+

Files: nature/*.jpg
       abstract/Silk.png
Copyright: 2008, A. Photographer
License: CC-BY-SA-4.0

Files: 16.04/Bridge_by_Someone.jpg
Copyright: 2018, Someone
License: CC0-1.0

Files: debian/*
Copyright: 2020 Debian packager
License: Expat

License: GPL-2+
 This package is free software ...
"""


def test_dep5_picks_stanza_for_installed_path():
    cr = data.parse_copyright(DEP5)
    assert cr.package_wide == "GPL-2+"
    base = "usr/share/backgrounds/"
    assert cr.licence_for(base + "mate/nature/Aqua.jpg") == ("CC-BY-SA-4.0", "2008, A. Photographer")
    assert cr.licence_for(base + "mate/abstract/Silk.png")[0] == "CC-BY-SA-4.0"
    assert cr.licence_for(base + "mate/abstract/Flow.png")[0] == "GPL-2+"        # only `*`
    assert cr.licence_for(base + "nature/Aqua.png")[0] == "GPL-2+"               # not *.jpg
    assert cr.licence_for(base + "mate/abstract/Elephants.jpg")[0] == "GPL-2+"   # not nature/
    assert cr.licence_for(base + "Bridge_by_Someone.jpg")[0] == "CC0-1.0"        # installed flat
    assert cr.licence_for("usr/share/doc/x/debian/changelog")[0] == "Expat"


def test_free_form_copyright_is_package_wide():
    text = ("Image Authors:\n - a.jpg:\n   Licensed under Creative Commons Attribution 2.0 License.\n"
            "under the terms of the GNU General Public License as published by\n")
    cr = data.parse_copyright(text)
    assert cr.stanzas == []
    assert cr.licence_for("usr/share/backgrounds/a.jpg") == (
        "package-wide: Creative Commons Attribution 2.0 License; GNU General Public License", "")


def test_package_names_and_repeatable_output(tmp_path, photo):
    root = tmp_path / "root"
    (root / "usr/share/doc/kde-walls").mkdir(parents=True)
    (root / "usr/share/doc/kde-walls/copyright").write_text(DEP5)
    for name in ("Autumn", "Grey"):
        d = root / "usr/share/wallpapers" / name / "contents/images"
        d.mkdir(parents=True)
        photo.save(d / "1920x1080.jpg", quality=90)
        (d / "1280x800.jpg").symlink_to("1920x1080.jpg")  # skipped: points at a listed file
    (root / "usr/share/wallpapers/Grey/contents/images/1920x1080.jpg").unlink()
    gradient(800, 600).save(root / "usr/share/wallpapers/Grey/contents/images/1920x1080.webp")
    items = data.package_items("kde-walls", root, "4:5.27")
    assert [it.name for it in items] == ["kde-walls__Autumn_1920x1080.jpg", "kde-walls__Grey_1920x1080.png"]
    assert items[0].original == "/usr/share/wallpapers/Autumn/contents/images/1920x1080.jpg"
    assert items[0].licence == "GPL-2+"
    for it in items:
        data.measure(it)
    for it in items:  # keep both (the gradient would be dropped): tests copying vs converting
        it.status = "kept"
    out = tmp_path / "out"
    data.write(items, out)
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    assert first["kde-walls__Autumn_1920x1080.jpg"] == items[0].path.read_bytes()  # JPEG copied
    with Image.open(out / "kde-walls__Grey_1920x1080.png") as im:
        assert im.format == "PNG" and im.mode == "RGB"
    data.write(items, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    items[1].status, items[1].reason = "dropped", "few colours (12 < 2000)"
    data.write(items, out)  # a file kept before and dropped now is removed
    assert sorted(p.name for p in out.iterdir()) == ["SOURCES.tsv", "kde-walls__Autumn_1920x1080.jpg"]
    rows = [r.split("\t") for r in (out / "SOURCES.tsv").read_text().splitlines()]
    assert rows[0] == list(data.COLUMNS)
    assert rows[2][-2:] == ["dropped", "few colours (12 < 2000)"]


def test_repository_paths_and_out_inside_repo_refused(tmp_path):
    """The default eval folder is the shared one beside the repository, and no --out inside the
    repository is accepted (training data never lands in it)."""
    assert (data.REPO / "pyproject.toml").is_file()
    assert data.EVAL_DIR == data.REPO.parent / "shared" / "data" / "eval"
    evals = tmp_path / "eval"
    evals.mkdir()
    for inside in (data.REPO / "runs" / "data", data.REPO / "tests" / "data" / "x"):
        with pytest.raises(data.DataError, match="inside the repository"):
            data.prepare(inside, [], [], evals)
