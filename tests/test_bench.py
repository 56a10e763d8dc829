"""`odp bench` and its parts: classic codecs under a byte budget, metrics, selection, BD-rate, outputs."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import DATA
import helpers
from odp.cli.main import main
from odp.codec.evaluation import bench, classic, metrics


@pytest.fixture(scope="module")
def pixels():
    return np.asarray(Image.open(DATA / "astronaut-320x240.png").convert("RGB"))


@pytest.mark.parametrize("name", ["jpeg", "webp"])
def test_best_under_is_the_highest_quality_that_fits(pixels, name):
    codec = classic.available_codecs()[name]
    v = classic.Variant(codec, 2, classic.shrink(pixels, 2))
    sizes = {q: len(codec.encode(v.small, q)) for q in codec.qualities}
    for budget in (300, 900, 2500, 10**6):
        q = v.best_under(budget)
        fitting = [k for k, s in sizes.items() if s <= budget]
        if not fitting:
            assert q is None
            continue
        assert sizes[q] <= budget
        # the search assumes size grows with quality; it must find the top of the fitting run
        assert q == codec.qualities[-1] or sizes[q + 1] > budget


def test_nothing_fits_a_budget_below_the_header(pixels):
    for codec in classic.available_codecs().values():
        assert classic.Variant(codec, 1, classic.shrink(pixels, 1)).best_under(20) is None


def test_downscale_variant_decodes_to_full_size(pixels):
    codec = classic.available_codecs()["webp"]
    v = classic.Variant(codec, 8, classic.shrink(pixels, 8))
    assert v.small.size == (40, 30)
    assert classic.decode(v.data(50), 320, 240).shape == pixels.shape


def test_metrics_on_real_photo(pixels):
    blurred = np.asarray(Image.fromarray(pixels).resize((80, 60)).resize((320, 240)))
    assert metrics.psnr(pixels, pixels) > 90
    assert 15 < metrics.psnr(pixels, blurred) < 35
    assert metrics.ms_ssim(pixels, pixels) == pytest.approx(1.0)
    assert metrics.ms_ssim(pixels, blurred) < 0.98
    assert np.isnan(metrics.ms_ssim(pixels[:100, :100], blurred[:100, :100]))
    assert metrics.better("psnr", 30, 20) and metrics.better("dists", 0.1, 0.2)


def test_seam_ratio_sees_a_seam(pixels):
    smooth = np.asarray(Image.open(DATA / "photo_768x512.png").convert("RGB"))
    assert 0.8 < metrics.seam_ratio(smooth, tile=256) < 1.2  # a real photo has no seams at tile borders
    seamed = smooth.copy()
    seamed[:, 256:512] = np.clip(seamed[:, 256:512].astype(int) + 40, 0, 255)  # one tile column brighter
    assert metrics.seam_ratio(seamed, tile=256) > 1.5
    assert np.isnan(metrics.seam_ratio(smooth[:200, :200], tile=256))


def test_scorer_rejects_unknown_metric(pixels):
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.Scorer(pixels, ["psnr", "vmaf"])


def test_bd_rate():
    rate = np.array([0.01, 0.02, 0.04, 0.08])
    quality = np.array([20.0, 23.0, 26.0, 29.0])
    assert bench.bd_rate(rate, quality, rate, quality) == pytest.approx(0.0)
    assert bench.bd_rate(rate, quality, rate / 2, quality) == pytest.approx(-50.0)  # same quality, half the bytes
    assert bench.bd_rate(rate, quality, rate * 1.1, quality) == pytest.approx(10.0)
    assert bench.bd_rate(rate, quality, rate, quality + 100) is None  # no overlap


def test_selection_takes_best_fitting_point_per_metric():
    pts = [
        {"image": "a", "codec": "jpeg", "scale": 1, "budgets": [0.1], "psnr": 20.0, "dists": 0.5},
        {"image": "a", "codec": "webp", "scale": 4, "budgets": [0.1], "psnr": 19.0, "dists": 0.3},
        {"image": "a", "codec": "odp", "scale": 1, "budgets": [0.1], "psnr": 19.5, "dists": 0.2},
    ]
    assert bench.at_budget(pts, 0.1, "hull", "psnr")["codec"] == "jpeg"
    assert bench.at_budget(pts, 0.1, "hull", "dists")["codec"] == "webp"  # the hull never includes ODP
    assert bench.at_budget(pts, 0.1, "webp", "psnr") is None  # full size only
    assert bench.at_budget(pts, 0.1, "webp", "psnr", bench.SCALES)["scale"] == 4
    assert bench.at_budget(pts, 0.2, "jpeg", "psnr") is None


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    sub = folder / "sub"
    sub.mkdir()
    shutil.copy(DATA / "astronaut-320x240.png", folder)
    shutil.copy(DATA / "coffee-200x150.png", sub)  # folders are searched recursively
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path_factory.mktemp("results")
    r = CliRunner().invoke(main, ["bench", str(folder), "--out", str(out), "--budgets", "0.05,0.2",
                                  "--metrics", "psnr,ms-ssim", "--codecs", "jpeg,webp", "--speed-images", "1", "--quiet",
                                  "--report", str(out / "results.md")])
    return r, out


def test_bench_writes_every_output(bench_run):
    r, out = bench_run
    assert r.exit_code == 0, r.output
    for name in ("points.json", "summary.csv", "comparison.csv", "bd_rate.csv", "speed.csv", "summary.md",
                 "side_by_side.png", "plots/psnr.png", "plots/ms-ssim.png"):
        assert (out / name).is_file(), name
    assert "| 0.05 | odp |" in r.output and "classic hull" in r.output
    assert r.output.startswith("ODP next to the codecs you know") and "| ODP bpp | WebP bpp |" in r.output
    assert Image.open(out / "plots/psnr.png").size[0] > 300
    page = (out / "results.md").read_text()
    assert "](plots/psnr.png)" in page and "](side_by_side.png)" in page and "| 0.2 | classic hull |" in page


def test_readme_tables_are_the_bench_output():
    """The README's two results tables are what `odp bench` writes for the shipped model's results,
    regenerated from its points: ODP beside WebP and AVIF, and ODP against the hull, each mean over the
    same images for every codec it compares."""
    folder = DATA.parents[1] / "docs" / "results" / "v4-finer"
    doc = json.loads((folder / "points.json").read_text())
    points, images = doc["points"], doc["settings"]["images"]
    budgets, names = tuple(doc["settings"]["budgets"]), tuple(doc["settings"]["metrics"])
    summary, comparison = bench.summarize(points, images, budgets, names, list(doc["settings"]["codecs"]))
    readme = (DATA.parents[1] / "README.md").read_text()
    table = bench.known_codecs_markdown(points, images, budgets, names)
    assert table in readme and table in (folder / "summary.md").read_text()
    assert "| 0.01 (491 B at 768×512) | 20 of 34 |" in table and "| 0.03 (1,474 B at 768×512) |" in table
    top = max(budgets)  # ODP's files reach the top budget (coded larger past the full-size file)
    assert f"| {top} (" in table and "ODP's whole file" not in table
    hull = bench.hull_markdown(comparison, summary, budgets, names)
    assert hull in readme and hull in (folder / "summary.md").read_text()
    row = next(r for r in comparison if r["budget_bpp"] == 0.01 and r["versus"] == "classic hull" and r["metric"] == "psnr")
    assert row["images_both"] == 28 and f"| 0.01 | 0.0096 | 28 | {row['odp_mean']:.2f} / {row['other_mean']:.2f} |" in hull


def test_paired_means_compare_the_same_images():
    """A comparison's means are over the images where both have a file; the summary's are each codec's own."""
    pts = [{"image": "a", "codec": "odp", "scale": 1, "budgets": [0.01], "bpp": 0.01, "psnr": 20.0},
           {"image": "b", "codec": "odp", "scale": 1, "budgets": [0.01], "bpp": 0.01, "psnr": 10.0},
           {"image": "a", "codec": "webp", "scale": 1, "budgets": [0.01], "bpp": 0.01, "psnr": 21.0}]
    summary, comparison = bench.summarize(pts, ["a", "b"], (0.01,), ("psnr",), ["webp"])
    assert next(r for r in summary if r["codec"] == "odp")["psnr"] == 15.0
    row = next(r for r in comparison if r["versus"] == "classic hull")
    assert (row["images_both"], row["odp_mean"], row["other_mean"], row["win_rate"]) == (1, 20.0, 21.0, 0.0)
    assert "| 0.01 | 0.0100 | 1 | 20.00 / 21.00 | 0% |" in bench.hull_markdown(comparison, summary, (0.01,), ("psnr",))


def test_bench_points_respect_their_budgets(bench_run):
    _, out = bench_run
    doc = json.loads((out / "points.json").read_text())
    assert len(doc["settings"]["images"]) == 2
    assert {p["codec"] for p in doc["points"]} == {"odp", "odp-psnr-scale", "odp-uniform", "jpeg", "webp"}
    for p in doc["points"]:
        for b in p["budgets"]:
            assert p["bytes"] <= int(b * p["width"] * p["height"] / 8)
        assert p["bpp"] == pytest.approx(p["bytes"] * 8 / (p["width"] * p["height"]))


def test_bench_odp_points_are_the_files_odp_makes_for_each_budget(bench_run):
    """"odp" / "odp-psnr-scale" points are what `odp encode --bytes` writes for the budget with
    `--scale auto` / `--scale psnr`; "odp-uniform" the largest cut within it of the full-size file with
    every tile alike. A point's setting is the size of its file."""
    from odp.codec import stream
    from odp.formats import container

    _, out = bench_run
    doc = json.loads((out / "points.json").read_text())
    dev = doc["settings"]["device"]
    for image in doc["settings"]["images"]:
        im = Image.open(image).convert("RGB")
        for codec, adaptive in (("odp", True), ("odp-psnr-scale", True), ("odp-uniform", False)):
            full = helpers.encode(im, device=dev, adaptive=adaptive)
            pts = [p for p in doc["points"] if p["image"] == image and p["codec"] == codec]
            assert pts, (image, codec)
            for p in pts:
                for b in p["budgets"]:
                    budget = bench.budget_bytes(b, p["width"], p["height"])
                    if codec != "odp-uniform":
                        scale = "psnr" if codec == "odp-psnr-scale" else "auto"
                        data = helpers.encode(im, max_bytes=budget, device=dev, scale=scale, refine=True)
                    else:
                        data = stream.truncate(full, max_bytes=budget)
                    c = container.read(data)
                    assert len(data) == p["bytes"] == p["setting"]
                    assert c.header.display_size == im.size
                    if c.header.base:  # version 4: its model codes at 2x, as the format says; full size to the bench
                        assert codec == "odp" and p["scale"] == 1 and not c.header.adaptive
                        continue
                    coded = c.header.width / im.width  # 1/N for a smaller coding scale, 2..4 for a larger one
                    assert p["scale"] == pytest.approx(1 if not c.header.scaled else
                                                       1 / round(coded) if coded > 1 else round(1 / coded))
                    assert c.header.adaptive == (adaptive and c.header.tiles > 1)  # one tile: it ends at its cap


def test_bench_hull_is_at_least_as_good_as_each_codec(bench_run):
    _, out = bench_run
    rows = list(csv.DictReader(open(out / "summary.csv")))
    for b in ("0.05", "0.2"):
        get = {r["codec"]: r for r in rows if r["budget_bpp"] == b}
        for c in ("jpeg", "webp", "jpeg+downscale", "webp+downscale"):
            if get[c]["psnr"] and get[c]["psnr_images"] == get["classic hull"]["psnr_images"]:
                assert float(get["classic hull"]["psnr"]) >= float(get[c]["psnr"]) - 1e-9


def test_bench_speed_rows(bench_run):
    _, out = bench_run
    rows = list(csv.DictReader(open(out / "speed.csv")))
    assert {r["codec"] for r in rows} >= {"odp (onnx, cpu)", "jpeg", "webp"}  # the backend a user gets
    assert all(float(r["encode_s_per_mp"]) > 0 and float(r["decode_s_per_mp"]) > 0 for r in rows)


def test_bench_resumes_from_its_cache_part_by_part(bench_run):
    """Cached per image and per codec: remeasuring ODP (a new model) leaves the classic codecs alone."""
    r, out = bench_run
    cached = sorted((out / "cache").glob("*.json"))
    assert len(cached) == 2 * 3  # 2 images x (odp, jpeg, webp)
    classic_files = {p: p.stat().st_mtime_ns for p in cached if "-odp-" not in p.name}
    for p in cached:
        if "-odp-" in p.name:
            p.unlink()
    before = json.loads((out / "points.json").read_text())["points"]
    folder = json.loads((out / "points.json").read_text())["settings"]["folder"]
    again = CliRunner().invoke(main, ["bench", folder, "--out", str(out), "--budgets", "0.05,0.2",
                                      "--metrics", "psnr,ms-ssim", "--codecs", "jpeg,webp", "--speed-images", "0", "--quiet"])
    assert again.exit_code == 0, again.output
    assert sorted((out / "cache").glob("*.json")) == cached
    assert {p: p.stat().st_mtime_ns for p in classic_files} == classic_files
    after = json.loads((out / "points.json").read_text())["points"]
    key = lambda p: (p["image"], p["codec"], p["scale"], p["setting"], p["bytes"])  # noqa: E731
    assert sorted(map(key, after)) == sorted(map(key, before))  # the same files again: encoding is deterministic


def test_bench_measures_only_the_budgets_its_cache_lacks(bench_run, tmp_path):
    """More budgets later (0.3 bpp past the old top): the cached parts keep their files and measure only
    the new budget, and the points are those of a run that asked for every budget at once."""
    _, out = bench_run
    folder = json.loads((out / "points.json").read_text())["settings"]["folder"]
    grown = tmp_path / "grown"
    shutil.copytree(out / "cache", grown / "cache")
    names = sorted(p.name for p in (grown / "cache").glob("*.json"))
    args = ["--metrics", "psnr,ms-ssim", "--codecs", "jpeg,webp", "--speed-images", "0", "--quiet"]
    r = CliRunner().invoke(main, ["bench", folder, "--out", str(grown), "--budgets", "0.05,0.2,0.3", *args])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (grown / "cache").glob("*.json")) == names
    assert all(json.loads(p.read_text())["budgets"] == [0.05, 0.2, 0.3] for p in (grown / "cache").glob("*.json"))
    r = CliRunner().invoke(main, ["bench", folder, "--out", str(tmp_path / "fresh"), "--budgets", "0.05,0.2,0.3", *args])
    assert r.exit_code == 0, r.output
    key = lambda p: (p["image"], p["codec"], p["scale"], p["setting"], sorted(p["budgets"]))  # noqa: E731
    points = lambda o: sorted(map(key, json.loads((o / "points.json").read_text())["points"]))  # noqa: E731
    assert points(grown) == points(tmp_path / "fresh")
    assert any(0.3 in p[4] for p in points(grown))
    r = CliRunner().invoke(main, ["bench", folder, "--out", str(grown), "--budgets", "0.2", *args])  # a subset: all cached
    assert r.exit_code == 0 and {b for p in points(grown) for b in p[4]} == {0.2}


def test_bench_odp_alone(bench_run):
    """--codecs none: ODP against its own uniform allocation only, from the same cache (nothing re-measured)."""
    _, out = bench_run
    cached = {p: p.stat().st_mtime_ns for p in (out / "cache").glob("*.json")}
    folder = json.loads((out / "points.json").read_text())["settings"]["folder"]
    r = CliRunner().invoke(main, ["bench", folder, "--out", str(out), "--budgets", "0.05,0.2",
                                  "--metrics", "psnr,ms-ssim", "--codecs", "none", "--speed-images", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "| 0.05 | odp uniform |" in r.output and "jpeg" not in r.output and "classic hull" not in r.output
    assert {p: p.stat().st_mtime_ns for p in (out / "cache").glob("*.json")} == cached
    assert {p["codec"] for p in json.loads((out / "points.json").read_text())["points"]} == {
        "odp", "odp-psnr-scale", "odp-uniform"}


def test_bench_caches_each_part_as_soon_as_it_is_measured(tmp_path, monkeypatch):
    """An interrupted run keeps the parts it finished (a photo's part can take many minutes)."""
    from odp.codec.evaluation import bench, classic

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(DATA / "coffee-200x150.png", folder)
    real = classic.Variant.best_under

    def interrupted(self, budget):
        if self.codec.name == "webp":
            raise KeyboardInterrupt
        return real(self, budget)

    monkeypatch.setattr(classic.Variant, "best_under", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench.run(folder, tmp_path / "out", budgets=(0.2,), metric_names=("psnr",), codec_names=["jpeg", "webp"],
                  speed_images=0, progress=False)
    done = sorted(p.name.split("-")[1] for p in (tmp_path / "out" / "cache").glob("*.json"))
    assert done == ["jpeg", "odp"]


@pytest.mark.parametrize("args, message", [
    (["--budgets", "abc"], "--budgets"),
    (["--budgets", "0"], "--budgets"),
    (["--metrics", "vmaf"], "unknown metric"),
    (["--codecs", "bpg", "--metrics", "psnr"], "not available"),
    (["--metrics", "psnr", "--report", "/nonexistent/folder/r.md"], "--report"),
])
def test_bench_bad_arguments_are_one_line_errors(tmp_path, args, message):
    shutil.copy(DATA / "coffee-200x150.png", tmp_path)
    r = CliRunner().invoke(main, ["bench", str(tmp_path), "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 1
    assert message in r.output and r.output.count("\n") == 1


def test_bench_empty_folder(tmp_path):
    r = CliRunner().invoke(main, ["bench", str(tmp_path), "--out", str(tmp_path / "o"), "--metrics", "psnr"])
    assert r.exit_code == 1 and "no images" in r.output


def test_bench_jobs_measure_the_same_points_in_parallel(bench_run, tmp_path):
    """--jobs 2 measures images in worker processes: the same files and scores as one process.
    The cache is keyed by image content, so a renamed copy of a photo is not measured again."""
    _, out = bench_run
    doc = json.loads((out / "points.json").read_text())
    folder = Path(doc["settings"]["folder"])
    r = CliRunner().invoke(main, ["bench", str(folder), "--out", str(tmp_path / "o"), "--budgets", "0.05,0.2",
                                  "--metrics", "psnr,ms-ssim", "--codecs", "jpeg,webp", "--speed-images", "0", "--quiet",
                                  "--jobs", "2"])
    assert r.exit_code == 0, r.output
    key = lambda p: (p["image"], p["codec"], p["scale"], p["setting"], p["bytes"])  # noqa: E731
    again = sorted(json.loads((tmp_path / "o" / "points.json").read_text())["points"], key=key)
    # every part bench_run measured (its points.json may be a later, narrower run's)
    before = sorted((p for f in (out / "cache").glob("*.json") for p in json.loads(f.read_text())["points"]), key=key)
    assert list(map(key, again)) == list(map(key, before))
    # the model's float arithmetic may round a pixel differently with another thread count
    assert [p["psnr"] for p in again] == pytest.approx([p["psnr"] for p in before], abs=1e-4)
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    shutil.copy(folder / "astronaut-320x240.png", renamed / "a-copy.png")
    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "o" / "cache").glob("*.json")}
    r = CliRunner().invoke(main, ["bench", str(renamed), "--out", str(tmp_path / "o"), "--budgets", "0.05,0.2",
                                  "--metrics", "psnr,ms-ssim", "--codecs", "jpeg,webp", "--speed-images", "0", "--quiet"])
    assert r.exit_code == 0, r.output
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "o" / "cache").glob("*.json")} == cached


def test_ms_ssim_is_pytorch_msssims(pixels):
    """The codec's numpy MS-SSIM (no torch needed for --msssim) is pytorch-msssim's, odd sizes included."""
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("pytorch_msssim").ms_ssim
    blurred = np.asarray(Image.fromarray(pixels).resize((80, 60)).resize((320, 240)))
    for h, w in ((240, 320), (161, 175), (233, 200)):
        a, b = pixels[:h, :w], blurred[:h, :w]
        expected = float(reference(*(torch.from_numpy(np.array(x)).permute(2, 0, 1)[None].float() for x in (a, b)),
                                   data_range=255.0))
        assert metrics.ms_ssim(a, b) == pytest.approx(expected, abs=1e-5)


def test_the_report_links_the_whole_range_page_where_there_is_one(tmp_path):
    out = tmp_path / "results"
    (out / "plots").mkdir(parents=True)
    report = tmp_path / "results.md"
    assert bench.range_section(report, out) == []
    (tmp_path / "range.md").write_text("# range")
    (out / "plots" / "range-psnr.png").write_bytes(b"")
    section = "\n".join(bench.range_section(report, out))
    assert "[range.md](range.md)" in section and "![range-psnr](results/plots/range-psnr.png)" in section


def test_bench_can_measure_the_default_odp_file_alone(tmp_path):
    """--odp-files odp: only what `odp encode --bytes` makes (no other coding scale, no uniform file),
    in a cache of its own; an unknown name is refused in one line."""
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(DATA / "coffee-200x150.png", folder)
    out = tmp_path / "results"
    r = CliRunner().invoke(main, ["bench", str(folder), "--out", str(out), "--budgets", "0.1", "--metrics", "psnr",
                                  "--codecs", "webp", "--speed-images", "0", "--quiet", "--odp-files", "odp"])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "points.json").read_text())
    assert {p["codec"] for p in doc["points"]} == {"odp", "webp"}
    bad = CliRunner().invoke(main, ["bench", str(folder), "--out", str(out), "--odp-files", "odp,bogus", "--quiet"])
    assert bad.exit_code != 0 and "'bogus'" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_edges_compares_each_partial_tile_region_with_the_same_pixels_in_full_tiles():
    """codec/evaluation/edges.py: each edge region of the 700x450 crop is the same pixels as its place in
    a crop of whole tiles, so the two PSNRs differ only by how the tile around them was coded."""
    from odp.codec.evaluation import edges

    photo = Image.open(DATA / "photo_768x512.png").convert("RGB")
    part = edges.centre(photo, *edges.PARTIAL)
    for region, (box, inside) in edges.REGIONS.values():
        full = part.crop(box)
        assert full.width % 256 == 0 and full.height % 256 == 0
        assert np.array_equal(np.asarray(part)[region], np.asarray(full)[inside])
        assert any(s.stop - s.start < 256 for s in region)  # a partial tile's pixels in the 700x450 crop


@pytest.mark.slow
def test_edges_measures_small_crops_and_partial_tiles(tmp_path, capsys):
    from odp.codec.evaluation import edges

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(DATA / "photo_768x512.png", photos)
    Image.open(DATA / "astronaut-320x240.png").save(photos / "small.png")  # under 768x512: skipped
    edges.main([str(photos), "--json", str(tmp_path / "rows.jsonl")])
    out = capsys.readouterr().out
    assert out.startswith("1 photos of 2") and "| 128x128 |" in out and "| corner |" in out
    row = json.loads((tmp_path / "rows.jsonl").read_text())
    assert all(np.isfinite(v) for k, v in row.items() if k != "image")
    assert row["768x512 whole psnr"] > row["768x512 first psnr"] > 15  # the refinement stage adds detail
