"""range.py and rangeplot on a real photo: one file's cuts against the classic hull, past the default file."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from odp.codec.evaluation import classic, range as range_eval, rangeplot


@pytest.fixture(scope="module")
def measured(tmp_path_factory, coffee):
    """A 256x192 crop of a real photo measured as `range.py --extend` does, at 0.2 and 0.4 bpp."""
    folder = tmp_path_factory.mktemp("range")
    path = folder / "coffee.png"
    coffee.convert("RGB").crop((0, 0, 256, 192)).save(path)
    codecs = {k: v for k, v in classic.available_codecs().items() if k in ("jpeg", "webp")}
    doc = range_eval.measure(path, (0.2, 0.4), ("psnr", "ms-ssim"), codecs, extend=True)
    (folder / "coffee.json").write_text(json.dumps(doc))
    return folder, doc


def test_the_extended_file_reaches_past_the_default_file_and_keeps_improving(measured):
    _, doc = measured
    odp = doc["odp"]
    assert odp["whole"]["bpp"] > 0.4  # the third stage: the default file stops near 0.2 bpp
    assert odp["0.2"]["bpp"] <= 0.2 and 0.3 < odp["0.4"]["bpp"] <= 0.4
    assert odp["0.2"]["psnr"] < odp["0.4"]["psnr"] < odp["whole"]["psnr"]
    for b in ("0.2", "0.4"):  # the hull is the best of the codecs measured
        assert doc["hull"][b]["psnr"] == max(c["psnr"] for c in doc["codecs"][b].values())


def test_the_plot_averages_the_same_photos(measured, tmp_path):
    folder, doc = measured
    found, n = rangeplot.curves([rangeplot.load(folder)], "psnr")
    assert n == 1
    assert found["odp"] == [(0.2, pytest.approx(doc["odp"]["0.2"]["psnr"])), (0.4, pytest.approx(doc["odp"]["0.4"]["psnr"]))]
    assert set(found) == {"odp", "classic hull", "jpeg", "webp"}
    rangeplot.main([str(folder), "--out", str(tmp_path)])
    assert (tmp_path / "range-psnr.png").stat().st_size > 10_000
    assert np.isfinite(found["classic hull"][0][1])


def test_the_report_embeds_the_plots_and_the_table(measured, tmp_path):
    folder, _ = measured
    report = tmp_path / "range.md"
    rangeplot.main([str(folder), "--out", str(tmp_path / "plots"), "--report", str(report)])
    text = report.read_text()
    assert "![range-psnr](plots/range-psnr.png)" in text
    assert "| 0.4 |" in text and "Whole file: mean" in text


def test_a_known_hull_is_reused_and_odp_measured_afresh(measured, monkeypatch):
    folder, doc = measured
    monkeypatch.setattr(range_eval.classic, "Variant", None)  # no classic codec may run
    again = range_eval.measure(folder / "coffee.png", (0.2, 0.4), ("psnr", "ms-ssim"), {}, extend=True, known=doc)
    assert again["hull"] == doc["hull"] and again["codecs"] == doc["codecs"]
    assert again["odp"] == doc["odp"]  # the same model: the same files and pictures


def test_per_budget_files_are_what_odp_encode_makes_for_each_budget(measured, monkeypatch):
    """--per-budget: each budget its own `odp encode --bytes` file, against the same known hull."""
    import odp

    folder, doc = measured
    monkeypatch.setattr(range_eval.classic, "Variant", None)  # the hull is reused, never re-measured
    per = range_eval.measure_per_budget(folder / "coffee.png", (0.2, 0.4), ("psnr", "ms-ssim"), doc)
    assert per["hull"] == doc["hull"]
    im = Image.open(folder / "coffee.png").convert("RGB")
    for b in ("0.2", "0.4"):
        data = odp.encode(im, bytes=int(float(b) * 256 * 192 / 8), device="cpu")
        assert per["odp"][b]["bytes"] == len(data) and per["odp"][b]["version"] == data[4]
    assert per["odp"]["0.2"]["psnr"] < per["odp"]["0.4"]["psnr"]
    table = range_eval.summarise([per], (0.2, 0.4), ("psnr", "ms-ssim"), per_budget=True)
    assert f"| 0.4 | {per['odp']['0.4']['bpp']:.4f} | {int(per['odp']['0.4']['version'] == 4)}/1 | " \
           f"{per['odp']['0.4']['psnr']:.4f} | {doc['hull']['0.4']['psnr']:.4f} (1) |" in table
