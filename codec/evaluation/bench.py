"""`odp bench`: rate-distortion and speed of ODP against JPEG, WebP, AVIF (and JPEG XL).

For every image and every byte budget, each codec gets its best file of no more bytes:
ODP as `odp encode --bytes` makes it (one full encode, truncated; coded at 1/2, 1/3 or 1/4
only where the full size cannot fit; past the first stage's whole file, its refinement stage cut; "odp scale by psnr" as `--scale psnr` makes it, the coding
scale of highest PSNR; "odp uniform" the full-size file without adaptive allocation), a classic codec by the
highest quality that fits, at full size and after downscaling by 2, 4 and 8 (the
"downscale trick"). The "classic hull" is, per metric, the best of all classic
variants that fit. Rate is exact file bytes x 8 / original pixels.

Outputs in --out: points.json (every measured point and the run's settings), summary.csv
(mean metric per budget and codec), comparison.csv (ODP against each codec at the same
budget: win rate, mean difference, BD-rate), plots/*.png, side_by_side.png; and a
Markdown summary on stdout. Per-image results are cached in cache/ so an interrupted run
resumes where it stopped.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from ...formats import container
from .. import coding, network, ratecontrol, registry, stream, thumbnail, tiling, workers
from ..allocation import ALLOCATION_GRID, ENCODER_VERSION
from ..engine import Engine, pick_device
from ..imaging import IMAGE_SUFFIXES, Prepared
from ..options import EncodeOptions
from . import classic, metrics
from .settings import BUDGETS, ODP_CONTENDERS, SCALES

CACHE_VERSION = 3  # 3: budgets out of the key, listed in the part's cache


def find_images(folder: Path) -> list[Path]:
    """Every image under folder (recursively), in a stable order."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def budget_bytes(bpp: float, width: int, height: int) -> int:
    return int(bpp * width * height / 8)


# --------------------------------------------------------------------------- measuring one image


def measure_parts(path: Path, parts: list[str], budgets, metric_names, codecs, model, device: str,
                  odp_files_wanted=ODP_CONTENDERS):
    """Points for one image, per part ("odp" or a classic codec's name), each at its best file
    per budget; yields (part, {"points", "seconds"}) as each part is done, so the caller can
    cache it at once (a 1 MP photo takes many minutes per part on a 2-core CPU). Parts are
    cached apart: a new ODP model re-measures only the "odp" part."""
    pixels = np.asarray(Image.open(path).convert("RGB"))  # bare pixels: no ICC/EXIF for anyone
    h, w = pixels.shape[:2]
    score = metrics.Scorer(pixels, metric_names, "cpu" if device == "cpu" else device)
    for part in parts:
        t0 = time.time()
        points: dict[tuple, dict] = {}

        def add(scale: int, setting: int, data_len: int, budget: float, decoded) -> None:
            if (scale, setting) not in points:
                points[scale, setting] = {"image": str(path), "width": w, "height": h, "codec": part,
                                          "scale": scale, "setting": setting, "bytes": data_len,
                                          "bpp": data_len * 8 / (w * h), "budgets": [], **score(decoded())}
            points[scale, setting]["budgets"].append(budget)

        stats = {}
        if part == "odp":
            engine = Engine(model, device)
            fulls, stats, ladder = odp_files(pixels, engine, odp_files_wanted)
            scored: dict[bytes, dict] = {}  # contenders often pick the same file: score it once
            for codec, codeds in fulls.items():
                for b in budgets:
                    try:  # the encoder's own choice of coding scale
                        if codec == "odp":  # the encoder's own file: what `odp encode --bytes` makes
                            data = ratecontrol.within(ladder, budget_bytes(b, w, h))
                            coded = ratecontrol.Coded(coded_scale(data), data, None)
                        elif codec == "odp-psnr-scale":
                            data, coded = ratecontrol.best_within(codeds, budget_bytes(b, w, h), pixels, engine)
                        else:
                            data, coded = ratecontrol.first_within(codeds, budget_bytes(b, w, h))
                        if codec == "odp-psnr-scale":
                            data, coded = ratecontrol.best_refined_within(ladder, data, coded, budget_bytes(b, w, h))
                    except ValueError:  # not even one token per tile fits
                        continue
                    key = (codec, coded.scale, len(data))  # a cut's size names it, whatever stage it ends in
                    if key not in points:
                        if data not in scored:
                            scored[data] = score(coding.decode_pixels(data, device=device)[0])
                        points[key] = {"image": str(path), "width": w, "height": h, "codec": codec,
                                       "scale": coded.scale, "setting": key[2], "bytes": len(data),
                                       "bpp": len(data) * 8 / (w * h), "budgets": [], **scored[data]}
                    points[key]["budgets"].append(b)
        else:
            for scale in SCALES:
                v = classic.Variant(codecs[part], scale, classic.shrink(pixels, scale))
                for b in budgets:
                    q = v.best_under(budget_bytes(b, w, h))
                    if q is not None:
                        add(scale, q, v.size(q), b, lambda v=v, q=q: classic.decode(v.data(q), w, h))
        yield part, {"points": list(points.values()), "seconds": time.time() - t0, "stats": stats}


def measure_image(path: Path, missing: dict[str, tuple], files: dict[str, Path], metric_names, codec_names,
                  device: str, model=None, odp_files_wanted=ODP_CONTENDERS) -> None:
    """Measure the budgets each part of one image lacks (`missing`: part -> budgets), merge them into
    what its cache holds, and cache each part as soon as it is done (atomically: an interrupted run
    leaves no half-written part). Runs in a worker process with --jobs."""
    model = model or registry.find()
    codecs = {k: v for k, v in classic.available_codecs().items() if k in codec_names}
    for budgets in sorted(set(missing.values())):
        parts = [part for part, b in missing.items() if b == budgets]
        for part, doc in measure_parts(path, parts, budgets, metric_names, codecs, model, device, odp_files_wanted):
            old = json.loads(files[part].read_text()) if files[part].exists() else None
            tmp = files[part].with_suffix(".tmp")
            tmp.write_text(json.dumps(merged(old, doc, budgets)))
            os.replace(tmp, files[part])


def merged(old: dict | None, new: dict, budgets) -> dict:
    """A part's cache with more budgets: `new` measured `budgets`, which `old` (or nothing) lacked. A
    file chosen at several budgets is one point listing them all."""
    if old is None:
        return {**new, "budgets": sorted(budgets)}
    ident = lambda p: (p["codec"], p["scale"], p["setting"])  # noqa: E731
    points = {ident(p): {**p, "budgets": list(p["budgets"])} for p in old["points"]}
    for p in new["points"]:
        if ident(p) in points:
            points[ident(p)]["budgets"] += p["budgets"]
        else:
            points[ident(p)] = p
    return {"points": list(points.values()), "seconds": old["seconds"] + new["seconds"],
            "stats": old.get("stats") or new["stats"], "budgets": sorted({*old["budgets"], *budgets})}


def odp_files(pixels: np.ndarray, engine: Engine,
              wanted=ODP_CONTENDERS) -> tuple[dict[str, list], dict, ratecontrol.ScaleLadder]:
    """Full ODP files of one image, as ratecontrol.Coded lists per contender ("odp": adaptive allocation,
    full size first, then the smaller coding scales for budgets it cannot fit; "odp-psnr-scale": the
    same files, chosen by PSNR; both coded larger where a budget leaves bytes past the whole file (the
    ladder returned keeps those); "odp-uniform": full size, every tile alike; all with the shipped
    context model) and what they
    cost: bits per token under each entropy model (raw ids, per-position tables, context model; the
    same uniform tokens) and encode seconds of the full-size file: the encoder's own files
    (ratecontrol.encode_at, as `odp encode` makes them), timed whole and by part."""
    h, w = pixels.shape[:2]
    model, bare = engine.model, Prepared(pixels, b"", b"")
    t0 = time.perf_counter()
    toks = engine.encode(pixels)
    t1 = time.perf_counter()
    uniform = ratecontrol.encode_at(bare, 1, engine, adaptive=False)
    t2 = time.perf_counter()
    ladder = ratecontrol.ScaleLadder(bare, engine, refine=True, base=True)
    full = ladder.full
    t3 = time.perf_counter()
    smaller = list(ladder)[1:] if "odp-psnr-scale" in wanted else []  # "odp" codes smaller only if it must
    fulls = {"odp": [full, *smaller], "odp-psnr-scale": [full, *smaller], "odp-uniform": [uniform]}
    assert tuple(fulls) == ODP_CONTENDERS
    fulls = {k: v for k, v in fulls.items() if k in wanted}
    t4 = time.perf_counter()
    tables = stream.pack(toks, w, h, model, entropy=model.tables)
    t5 = time.perf_counter()
    payload = lambda d: container.read(d).payload_bytes * 8 / toks.size  # noqa: E731
    stats = {"tokens": int(toks.size), "raw_bits_per_token": math.log2(model.codebook_size),
             "tables_bits_per_token": payload(tables), "context_bits_per_token": payload(uniform.data),
             "entropy_model": model.best_entropy.id, "tokenize_s": t1 - t0, "allocate_s": (t3 - t2) - (t2 - t1),
             "entropy_code_s": t5 - t4, "megapixels": w * h / 1e6}
    return fulls, stats, ladder


def coded_scale(data: bytes) -> int:
    """How many times smaller than the image a file's first stage is coded (1: full size or larger)."""
    h = container.read(data).header
    return max(1, round(h.display_size[0] / h.width))


def part_key(part: str, metric_names, codecs, model, odp_files_wanted=ODP_CONTENDERS) -> str:
    """What a cached part depends on: the metrics, and the model or the codec's settings. Not the
    budgets: each budget's files are chosen alone, so a part's cache records the budgets it measured
    and a run with more budgets measures only those it lacks."""
    import PIL

    deps = {"version": CACHE_VERSION, "metrics": metric_names}
    if part == "odp":
        deps["model_sha256"] = model.sha256.hex()
        refinement = registry.refinement_for(model)  # its stage is part of the encoder's files
        if refinement is not None:
            deps["refinement_sha256"] = refinement.sha256.hex()
        based = registry.base_model()  # version-4 files within a budget (ratecontrol.based_within)
        if based is not None:
            deps["base"] = [based.sha256.hex(), ratecontrol.BASE_SHARE, thumbnail.FORMATS, list(thumbnail.SHRINKS),
                            list(thumbnail.FALLBACK_SHRINKS), thumbnail.FINER, thumbnail.FINER_REACH,
                            {k: [v.start, v.stop] for k, v in thumbnail.QUALITIES.items()}, thumbnail.STORED,
                            registry.thumbnail_model(based).sha256.hex()]
        deps["deblock"] = [tiling.DEBLOCK_REACH, tiling.DEBLOCK_EDGE]
        deps["format"] = [container.VERSION, model.best_entropy.id, list(ALLOCATION_GRID), ENCODER_VERSION,
                          list(stream.LEVELS), list(ratecontrol.SCALES), list(odp_files_wanted)]
    else:
        c = codecs[part]
        deps |= {"final": c.final, "qualities": [c.qualities.start, c.qualities.stop - 1], "scales": SCALES,
                 "pillow": PIL.__version__}
    return hashlib.sha256(json.dumps(deps, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- selecting and comparing


def offers(p: dict, codec: str, scales) -> bool:
    """Whether point p belongs to a contender: a codec at some scales, or ("hull") any classic variant."""
    if codec == "hull":
        return not p["codec"].startswith("odp")
    return p["codec"] == codec and (p["scale"] in scales or codec.startswith("odp"))  # ODP's: its encoder's choice


def at_budget(points: list[dict], budget: float, codec: str, metric: str, scales=(1,)) -> dict | None:
    """The point a codec offers at this budget: for several scales, the best by `metric`."""
    best = None
    for p in points:
        if budget in p["budgets"] and offers(p, codec, scales) and not math.isnan(p[metric]):
            if best is None or metrics.better(metric, p[metric], best[metric]):
                best = p
    return best


def contenders(codec_names, with_uniform: bool = False) -> list[tuple[str, str, tuple]]:
    """(label, codec, scales): each codec at full size, each with the downscale trick, and the hull;
    `with_uniform` puts ODP's other choices first: the coding scale by PSNR (`--scale psnr`) and no
    adaptive allocation (what the allocation gains)."""
    out = [("odp scale by psnr", "odp-psnr-scale", (1,)), ("odp uniform", "odp-uniform", (1,))] if with_uniform else []
    out += [(c, c, (1,)) for c in codec_names]
    out += [(f"{c}+downscale", c, SCALES) for c in codec_names]
    return out + ([("classic hull", "hull", SCALES)] if codec_names else [])


def summarize(points: list[dict], images: list[str], budgets, metric_names, codec_names):
    """Mean metric per (budget, contender), and ODP-vs-contender comparisons at equal budgets."""
    by_image = {im: [p for p in points if p["image"] == im] for im in images}
    summary, comparison = [], []
    for b in budgets:
        for label, codec, scales in [("odp", "odp", (1,))] + contenders(codec_names, with_uniform=True):
            row = {"budget_bpp": b, "codec": label}
            for m in metric_names:
                vals = [p[m] for im in images if (p := at_budget(by_image[im], b, codec, m, scales))]
                row[f"{m}_images"] = len(vals)
                row[m] = float(np.mean(vals)) if vals else None
            sizes = [p["bpp"] for im in images if (p := at_budget(by_image[im], b, codec, metric_names[0], scales))]
            row["mean_bpp"] = float(np.mean(sizes)) if sizes else None
            summary.append(row)
        for label, codec, scales in contenders(codec_names, with_uniform=True):
            for m in metric_names:
                wins = n = only_odp = only_other = 0
                odp_sum = other_sum = 0.0
                for im in images:
                    o = at_budget(by_image[im], b, "odp", m)
                    c = at_budget(by_image[im], b, codec, m, scales)
                    only_odp += bool(o and not c)
                    only_other += bool(c and not o)
                    if o and c:
                        n += 1
                        wins += metrics.better(m, o[m], c[m])
                        odp_sum, other_sum = odp_sum + o[m], other_sum + c[m]
                comparison.append({"budget_bpp": b, "versus": label, "metric": m, "images_both": n,
                                   "odp_wins": wins, "win_rate": wins / n if n else None,
                                   "mean_diff_odp_minus_other": (odp_sum - other_sum) / n if n else None,
                                   "odp_mean": odp_sum / n if n else None, "other_mean": other_sum / n if n else None,
                                   "images_only_odp_has_a_file": only_odp,
                                   "images_only_other_has_a_file": only_other})
    return summary, comparison


def _envelope(rate: np.ndarray, quality: np.ndarray):
    """Sort by rate and keep the points that improve quality (a rate-quality curve must rise)."""
    order = np.argsort(rate)
    r, q = [], []
    for i in order:
        if not q or quality[i] > q[-1]:
            r.append(rate[i])
            q.append(quality[i])
    return np.array(r), np.array(q)


def bd_rate(r1, q1, r2, q2) -> float | None:
    """Bjøntegaard-style rate difference of curve 2 against curve 1, in percent (negative: 2 needs
    fewer bytes), over their overlapping quality range; piecewise-linear in log-rate, which is
    steadier than the cubic fit on few points. None without overlap."""
    r1, q1 = _envelope(np.log(np.asarray(r1)), np.asarray(q1))
    r2, q2 = _envelope(np.log(np.asarray(r2)), np.asarray(q2))
    lo, hi = max(q1.min(initial=np.inf), q2.min(initial=np.inf)), min(q1.max(initial=-np.inf), q2.max(initial=-np.inf))
    if len(q1) < 2 or len(q2) < 2 or not hi > lo:
        return None
    grid = np.linspace(lo, hi, 101)
    diff = np.mean(np.interp(grid, q2, r2) - np.interp(grid, q1, r1))
    return float((math.exp(diff) - 1) * 100)


def bd_rates(points, images, metric_names, codec_names) -> list[dict]:
    """BD-rate of ODP against each full-size codec and against the hull, per metric (mean over images)."""
    out = []
    for label, codec, scales in contenders(codec_names, with_uniform=True):
        for m in metric_names:
            sign = 1 if metrics.HIGHER_IS_BETTER[m] else -1
            vals = []
            for im in images:
                pts = [p for p in points if p["image"] == im and not math.isnan(p[m])]
                o = [p for p in pts if p["codec"] == "odp"]
                c = [p for p in pts if offers(p, codec, scales)]
                v = bd_rate([p["bpp"] for p in c], [sign * p[m] for p in c],
                            [p["bpp"] for p in o], [sign * p[m] for p in o])
                if v is not None:
                    vals.append(v)
            out.append({"versus": label, "metric": m, "images_with_overlap": len(vals),
                        "bd_rate_percent_mean": float(np.mean(vals)) if vals else None,
                        "bd_rate_percent_median": float(np.median(vals)) if vals else None})
    return out


# --------------------------------------------------------------------------- speed


def _proc_status_bytes(field: str) -> int | None:
    """A memory figure of this process from /proc/self/status (Linux), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rss_peak_reset() -> int | None:
    """Reset the kernel's peak-RSS mark (Linux) and return the current RSS in bytes."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _proc_status_bytes("VmRSS")


def _timed(fn, repeats: int) -> tuple[float, int | None]:
    fn()  # warm-up
    base = _rss_peak_reset()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    peak = _proc_status_bytes("VmHWM")
    return statistics.median(times), (peak - base if peak is not None and base is not None else None)


def _worker_threads(n: int) -> None:
    """A bench worker's share of the CPU threads, for whichever backend runs the network."""
    os.environ["ODP_THREADS"] = str(n)
    if network.has_torch():
        import torch

        torch.set_num_threads(n)


def _torch_version() -> str | None:
    if not network.has_torch():
        return None
    import torch

    return torch.__version__


def measure_speed(paths: list[Path], codecs, model, devices, repeats: int = 3, quality: int = 50) -> list[dict]:
    """Encode and decode seconds per megapixel (median of repeats after a warm-up) and the extra
    peak memory while doing it. Classic codecs at `quality` with their final settings."""
    rows = []
    for path in paths:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        mp = pixels.shape[0] * pixels.shape[1] / 1e6
        im = Image.fromarray(pixels, "RGB")
        jobs = []
        for dev in devices:
            opts = EncodeOptions(device=dev)
            data = coding.encode(im, opts, model)
            jobs.append((f"odp ({Engine(model, dev).backend}, {dev})", "default settings",
                         lambda opts=opts: coding.encode(im, opts, model),
                         lambda dev=dev, data=data: coding.decode(data, device=dev)))
        for c in codecs.values():
            data = c.encode(im, quality)
            jobs.append((c.name, f"quality {quality} {c.final}", lambda c=c: c.encode(im, quality),
                         lambda data=data: classic.decode(data, *im.size)))
        for name, setting, enc, dec in jobs:
            te, me = _timed(enc, repeats)
            td, md = _timed(dec, repeats)
            rows.append({"image": str(path), "codec": name, "setting": setting, "megapixels": mp,
                         "encode_s_per_mp": te / mp, "decode_s_per_mp": td / mp,
                         "encode_peak_extra_mb": me / 2**20 if me is not None else None,
                         "decode_peak_extra_mb": md / 2**20 if md is not None else None})
    return rows


# --------------------------------------------------------------------------- output


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(summary, metric_names, labels, out_dir: Path, n_images: int) -> list[Path]:
    """One PNG per metric: mean score of the best file within each budget, log-scale bpp (none without
    matplotlib, which the bench extra installs: the tables do not need it)."""
    try:
        import matplotlib
    except ImportError:
        return []

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for m in metric_names:
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
        for label in labels:
            rows = [r for r in summary if r["codec"] == label and r[m] is not None and r[f"{m}_images"] == n_images]
            if rows:
                style = "-o" if label in ("odp", "classic hull") else "--."
                ax.plot([r["budget_bpp"] for r in rows], [r[m] for r in rows], style, label=label,
                        linewidth=2.2 if label == "odp" else 1.2)
        ax.set_xscale("log")
        ax.set_xlabel("budget (bits per pixel, log scale)")
        ax.set_ylabel(m + ("  (higher is better)" if metrics.HIGHER_IS_BETTER[m] else "  (lower is better)"))
        ax.set_title(f"{m}: best file within each budget, mean over {n_images} images")
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"{m}.png"
        fig.savefig(path)
        plt.close(fig)
        files.append(path)
    return files


def side_by_side(path: Path, pts: list[dict], budgets, metric: str, model, device: str, out: Path) -> None:
    """original | ODP | best classic variant (by `metric`) at no more bytes, one row per budget."""
    from PIL import ImageDraw

    pixels = np.asarray(Image.open(path).convert("RGB"))
    h, w = pixels.shape[:2]
    codecs = classic.available_codecs()
    classic_run = any(p["codec"] in codecs for p in pts)
    engine = Engine(model, device)
    ladder = ratecontrol.ScaleLadder(Prepared(pixels, b"", b""), engine, refine=True)
    rows = []
    for b in budgets:
        o = at_budget(pts, b, "odp", metric)
        c = at_budget(pts, b, "hull", metric)
        cells = [(pixels, "original")]
        for p, what in ((o, "no file fits"), (c, "no file fits" if classic_run else "no classic codec run")):
            if p is None:
                cells.append((np.full_like(pixels, 255), what))
                continue
            if p["codec"] == "odp":  # the same file again: what `odp encode --bytes` makes for this budget
                data = ratecontrol.within(ladder, budget_bytes(b, w, h))
                img = coding.decode_pixels(data, device=device)[0]
            else:
                v = classic.Variant(codecs[p["codec"]], p["scale"], classic.shrink(pixels, p["scale"]))
                img = classic.decode(v.data(p["setting"]), w, h)
            name = ("ODP" if p["codec"] == "odp" else f"{p['codec'].upper()} q{p['setting']}") + (
                f" at 1/{p['scale']}" if p["scale"] > 1 else "")
            cells.append((img, f"{name}: {p['bytes']} B, {p['bpp']:.4f} bpp, {metric} {p[metric]:.3f}"))
        rows.append((b, cells))
    band = 18
    sheet = Image.new("RGB", (3 * w, len(rows) * (h + band)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (b, cells) in enumerate(rows):
        for i, (img, text) in enumerate(cells):
            sheet.paste(Image.fromarray(img), (i * w, r * (h + band) + band))
            label = text if i else f"original; budget {b} bpp = {budget_bytes(b, w, h)} bytes"
            draw.text((i * w + 4, r * (h + band) + 3), label, fill="black")
    sheet.save(out)


def markdown(summary, comparison, bd, metric_names, budgets) -> str:
    """The summary table (mean per budget) and the byte-matched win rates, as Markdown."""
    labels = list(dict.fromkeys(r["codec"] for r in summary))
    lines = ["| budget bpp | codec | mean bpp | " + " | ".join(metric_names) + " |",
             "|---:|---|---:|" + "---:|" * len(metric_names)]
    for b in budgets:
        for label in labels:
            r = next(r for r in summary if r["budget_bpp"] == b and r["codec"] == label)
            cells = [("–" if r[m] is None else f"{r[m]:.4f}" if m != "psnr" else f"{r[m]:.2f}")
                     + ("" if r[f"{m}_images"] in (0, max(x[f"{m}_images"] for x in summary)) else f" ({r[f'{m}_images']})")
                     for m in metric_names]
            mb = "–" if r["mean_bpp"] is None else f"{r['mean_bpp']:.4f}"
            lines.append(f"| {b} | {label} | {mb} | " + " | ".join(cells) + " |")
    lines += ["", "ODP's win rate against each codec at the same budget (images where both have a file):", "",
              "| budget bpp | versus | " + " | ".join(metric_names) + " |", "|---:|---|" + "---:|" * len(metric_names)]
    versus = list(dict.fromkeys(r["versus"] for r in comparison))
    for b in budgets:
        for v in versus:
            cells = []
            for m in metric_names:
                r = next(r for r in comparison if r["budget_bpp"] == b and r["versus"] == v and r["metric"] == m)
                cells.append("–" if r["win_rate"] is None else f"{100 * r['win_rate']:.0f}% of {r['images_both']}"
                             + (f" (+{r['images_only_odp_has_a_file']} only ODP)" if r["images_only_odp_has_a_file"] else "")
                             + (f" (+{r['images_only_other_has_a_file']} only {v})"
                                if r["images_only_other_has_a_file"] else ""))
            lines.append(f"| {b} | {v} | " + " | ".join(cells) + " |")
    lines += ["", "BD-rate of ODP (mean over images with overlapping curves; negative: ODP needs fewer bytes):", "",
              "| versus | " + " | ".join(metric_names) + " |", "|---|" + "---:|" * len(metric_names)]
    for v in versus:
        cells = []
        for m in metric_names:
            r = next(r for r in bd if r["versus"] == v and r["metric"] == m)
            cells.append("–" if r["bd_rate_percent_mean"] is None
                         else f"{r['bd_rate_percent_mean']:+.1f}% ({r['images_with_overlap']})")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def known_codecs_markdown(points: list[dict], images: list[str], budgets, metric_names) -> str:
    """ODP next to WebP and AVIF (each at full size or downscaled, its best file within the budget) at
    0.01 and 0.03 bpp and at the top of ODP's range (the first budget ODP's whole file stays under by
    10% or more): the README's short table. Means over the images where all three have a file (that
    count when not all), so that the columns compare the same photos."""
    by_image = {im: [p for p in points if p["image"] == im] for im in images}
    codecs = [c for c in ("odp", "webp", "avif") if any(p["codec"] == c for p in points)]
    scales = {c: (1,) if c == "odp" else SCALES for c in codecs}
    names = {"odp": "ODP", "webp": "WebP", "avif": "AVIF"}
    metrics_ = [m for m in ("lpips-alex", "dists", "psnr") if m in metric_names]
    arrows = {"psnr": "PSNR dB ↑", "lpips-alex": "LPIPS-Alex ↓", "dists": "DISTS ↓"}

    def best(im, b, c, m):
        return at_budget(by_image[im], b, c, m, scales[c])

    odp_bpp = {b: np.mean(bs) for b in budgets if (bs := [p["bpp"] for im in images if (p := best(im, b, "odp", metric_names[0]))])}
    top = next((b for b in sorted(budgets) if odp_bpp.get(b, b) < 0.9 * b), max(budgets))
    shown = [b for b in (0.01, 0.03) if b in budgets and b < top] + [top]
    lines = ["| budget bpp | images | " + " | ".join(f"{names[c]} bpp" for c in codecs) + " | "
             + " | ".join(f"{arrows[m]} " + " / ".join(names[c] for c in codecs) for m in metrics_) + " |",
             "|---:|---:|" + "---:|" * len(codecs) + "---|" * len(metrics_)]
    for b in dict.fromkeys(shown):
        common = [im for im in images if all(best(im, b, c, metric_names[0]) for c in codecs)]
        if not common:
            continue
        mean = lambda c, m, key: np.mean([best(im, b, c, m)[key] for im in common])  # noqa: E731
        label = f"{b} ({budget_bytes(b, 768, 512):,} B at 768×512)" + (
            ", ODP's whole file" if b == top and odp_bpp.get(top, top) < 0.9 * top else "")
        lines.append(f"| {label} | {len(common)}{'' if len(common) == len(images) else f' of {len(images)}'} | "
                     + " | ".join(f"{mean(c, metric_names[0], 'bpp'):.4f}" for c in codecs) + " | "
                     + " | ".join(" / ".join(format(mean(c, m, m), ".2f" if m == "psnr" else ".3f") for c in codecs)
                                  for m in metrics_) + " |")
    return "\n".join(lines)


def hull_markdown(comparison: list[dict], summary: list[dict], budgets, metric_names) -> str:
    """ODP against the classic hull at each budget, means over the images where both have a file (ODP
    has one for every image; the hull not for the smallest budgets of small images) and ODP's win
    rate on the perceptual metrics: the README's results table."""
    ms = [m for m in ("psnr", "ms-ssim", "lpips-alex", "lpips-vgg", "dists") if m in metric_names]
    won = [m for m in ("lpips-alex", "lpips-vgg", "dists", "psnr") if m in metric_names]
    if not any(r["versus"] == "classic hull" for r in comparison):
        return ""
    c = {(float(r["budget_bpp"]), r["metric"]): r for r in comparison if r["versus"] == "classic hull"}
    odp_bpp = {float(r["budget_bpp"]): r["mean_bpp"] for r in summary if r["codec"] == "odp"}
    heads = {"psnr": "PSNR dB", "ms-ssim": "MS-SSIM", "lpips-alex": "LPIPS-Alex ↓", "lpips-vgg": "LPIPS-VGG ↓",
             "dists": "DISTS ↓"}
    plain = {"psnr": "PSNR", "lpips-alex": "LPIPS-Alex", "lpips-vgg": "LPIPS-VGG", "dists": "DISTS"}
    lines = ["| budget bpp | ODP bpp | images both have | " + " | ".join(f"{heads[m]} ODP / hull" for m in ms)
             + " | " + " | ".join(("ODP better on " if i == 0 else "on ") + plain[m] for i, m in enumerate(won)) + " |",
             "|---:|---:|---:|" + "---|" * len(ms) + "---:|" * len(won)]
    for b in budgets:
        if (b, "psnr") not in c or not c[b, "psnr"]["images_both"] or odp_bpp.get(b) in (None, ""):
            continue
        cells = [f"{float(c[b, m]['odp_mean']):{'.2f' if m == 'psnr' else '.4f'}} / "
                 f"{float(c[b, m]['other_mean']):{'.2f' if m == 'psnr' else '.4f'}}" for m in ms]
        wins = [f"{100 * float(c[b, m]['win_rate']):.0f}%" for m in won]
        lines.append(f"| {b:g} | {float(odp_bpp[b]):.4f} | {c[b, 'psnr']['images_both']} | " + " | ".join(cells)
                     + " | " + " | ".join(wins) + " |")
    return "\n".join(lines)


def entropy_markdown(stats: list[dict]) -> str:
    """Bits per token under each entropy model, and what adaptive allocation costs the encoder."""
    if not stats:
        return ""
    total = sum(s["tokens"] for s in stats)
    mean = lambda k: sum(s[k] * s["tokens"] for s in stats) / total  # noqa: E731
    raw, tables, ctx = mean("raw_bits_per_token"), mean("tables_bits_per_token"), mean("context_bits_per_token")
    mp = sum(s["megapixels"] for s in stats)
    per_mp = lambda k: sum(s[k] for s in stats) / mp  # noqa: E731
    return ("\n\nBits per token, all tokens of every image, measured as file payload bytes (same tokens):\n\n"
            "| entropy model | bits/token | vs raw ids | vs per-position tables |\n|---|---:|---:|---:|\n"
            f"| raw 12-bit ids | {raw:.3f} | | |\n"
            f"| per-position tables (pos-freq-v1) | {tables:.3f} | {100 * (tables / raw - 1):+.1f}% | |\n"
            f"| context model ({stats[0]['entropy_model']}) | {ctx:.3f} | {100 * (ctx / raw - 1):+.1f}% | "
            f"{100 * (ctx / tables - 1):+.1f}% |\n\n"
            f"Encoder time per megapixel (CPU seconds, during this run): tokenizer {per_mp('tokenize_s'):.2f}, "
            f"adaptive allocation {per_mp('allocate_s'):.2f}, entropy coding {per_mp('entropy_code_s'):.2f}.")


# --------------------------------------------------------------------------- the run


def run(folder: Path, out: Path, budgets=BUDGETS, metric_names=metrics.METRICS, device: str = "auto",
        codec_names=None, speed_images: int = 2, progress: bool = True, report: Path | None = None,
        jobs: int = 1, odp_files_wanted=ODP_CONTENDERS) -> str:
    """Benchmark every image under folder; write the outputs to `out`; return the Markdown summary.

    With `report`, also write a Markdown page there that embeds the plots (docs/results.md); with
    `jobs` > 1, measure that many images at once in worker processes. `odp_files_wanted`: which of
    ODP_CONTENDERS to measure ("odp" alone is several times faster: no other coding scales, no
    refinement of them); a choice has its own cache."""
    unknown = [x for x in odp_files_wanted if x not in ODP_CONTENDERS]
    if "odp" not in odp_files_wanted or unknown:
        raise ValueError(f"ODP files to measure: 'odp' and any of {', '.join(ODP_CONTENDERS[1:])}"
                         + (f", not {unknown[0]!r}" if unknown else ""))
    odp_files_wanted = [x for x in ODP_CONTENDERS if x in odp_files_wanted]
    from tqdm import tqdm

    t0 = time.time()
    images = find_images(folder)
    if not images:
        raise ValueError(f"{folder}: no images found")
    codecs = classic.available_codecs()
    if codec_names is not None:  # [] measures ODP alone
        unknown = set(codec_names) - set(codecs)
        if unknown:
            raise ValueError(f"codec {sorted(unknown)[0]!r} is not available here: {', '.join(codecs)}")
        codecs = {k: v for k, v in codecs.items() if k in codec_names}
    dev = pick_device(device)
    model = registry.find()  # an Entry: the Engine runs the backend a user gets by default (network.py)
    budgets, metric_names = tuple(sorted(budgets)), tuple(metric_names)
    settings = {"model_sha256": model.sha256.hex(), "budgets": budgets, "metrics": metric_names, "scales": SCALES,
                "codecs": {k: {"final": c.final, "qualities": [c.qualities.start, c.qualities.stop - 1]}
                           for k, c in codecs.items()}}
    parts = ["odp", *codecs]
    keys = {part: part_key(part, metric_names, codecs, model, odp_files_wanted) for part in parts}
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    files = {}
    for path in images:  # keyed by content: the cache follows a photo that moves, and can be committed
        stem = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        files[path] = {part: cache / f"{stem}-{part}-{keys[part]}.json" for part in parts}

    def lacking(f: Path) -> tuple:
        have = set(json.loads(f.read_text())["budgets"]) if f.exists() else set()
        return tuple(b for b in budgets if b not in have)
    todo = [(path, {part: lacking(files[path][part]) for part in parts}) for path in images]
    todo = [(path, {part: b for part, b in missing.items() if b}) for path, missing in todo]
    todo = [(path, missing) for path, missing in todo if missing]
    jobs = max(1, min(jobs, len(todo)))
    bar = tqdm(total=len(images), initial=len(images) - len(todo), desc="bench", unit="image",
               disable=not progress, file=sys.stderr)
    if jobs == 1:
        for path, missing in todo:
            measure_image(path, missing, files[path], metric_names, list(codecs), dev, model, odp_files_wanted)
            bar.update()
    else:  # one process per image at a time; each gets its share of the CPU threads
        import concurrent.futures as cf
        import multiprocessing

        threads = max(1, (os.cpu_count() or 1) // jobs)
        with cf.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                    initializer=_worker_threads, initargs=(threads,)) as pool:
            futures = [pool.submit(measure_image, path, missing, files[path], metric_names,
                                   list(codecs), dev, None, odp_files_wanted) for path, missing in todo]
            for f in cf.as_completed(futures):
                f.result()
                bar.update()
    bar.close()
    points, measured_s, odp_stats = [], 0.0, []
    for path in images:
        for part in parts:
            doc = json.loads(files[path][part].read_text())
            points += [{**p, "image": str(path), "budgets": [b for b in p["budgets"] if b in budgets]}
                       for p in doc["points"] if set(p["budgets"]) & set(budgets)]  # the cache may know it by another path
            measured_s += doc["seconds"]
            if doc.get("stats"):
                odp_stats.append(doc["stats"])
    names = [str(p) for p in images]
    summary, comparison = summarize(points, names, budgets, metric_names, list(codecs))
    bd = bd_rates(points, names, metric_names, list(codecs))
    devices = ["cpu"] + (["cuda"] if dev == "cuda" else [])
    speed = measure_speed(images[:speed_images], codecs, model, devices) if speed_images else []
    labels = ["odp"] + [c[0] for c in contenders(list(codecs), with_uniform=True)]
    plot_files = plot(summary, metric_names, labels, out / "plots", len(images))
    pick = "lpips-alex" if "lpips-alex" in metric_names else metric_names[0]
    side = [b for b in (0.01, 0.03) if b in budgets] or list(budgets[:2])
    shown = max(images[:8], key=lambda p: Image.open(p).size[0])  # a wide photo shows the most
    side_by_side(shown, [p for p in points if p["image"] == str(shown)], side, pick, model, dev,
                 out / "side_by_side.png")
    write_csv(out / "summary.csv", summary)
    write_csv(out / "comparison.csv", comparison)
    write_csv(out / "bd_rate.csv", bd)
    write_csv(out / "speed.csv", speed)
    elapsed = time.time() - t0
    meta = {**settings, "folder": str(folder), "images": names, "device": dev, "seconds_total": elapsed,
            "seconds_measuring_all_parts": measured_s, "backend": Engine(model, "cpu").backend,
            "torch": _torch_version(), "platform": platform.platform(),
            "cpu_threads": workers.threads(), "model": model.name}
    (out / "points.json").write_text(json.dumps({"settings": meta, "points": points, "summary": summary,
                                                 "comparison": comparison, "bd_rate": bd, "speed": speed,
                                                 "odp_stats": odp_stats}, indent=1))
    md = ("ODP next to the codecs you know (WebP and AVIF at their best size, downscaled where that helps):\n\n"
          + known_codecs_markdown(points, names, budgets, metric_names) + "\n\n"
          + ("ODP against the classic hull (per metric and image the best classic file within the budget):\n\n"
             + hull_markdown(comparison, summary, budgets, metric_names) + "\n\n" if codecs else "")
          + markdown(summary, comparison, bd, metric_names, budgets) + entropy_markdown(odp_stats))
    if speed:
        md += "\n\nSpeed (median of 3 after a warm-up; peak memory above the idle process):\n\n"
        md += "| codec | setting | encode s/MP | decode s/MP | encode peak MB | decode peak MB |\n|---|---|---:|---:|---:|---:|\n"
        for c in dict.fromkeys(r["codec"] for r in speed):
            rs = [r for r in speed if r["codec"] == c]
            f = lambda k: statistics.median([r[k] for r in rs]) if all(r[k] is not None for r in rs) else float("nan")
            md += (f"| {c} | {rs[0]['setting']} | {f('encode_s_per_mp'):.3f} | {f('decode_s_per_mp'):.3f} | "
                   f"{f('encode_peak_extra_mb'):.0f} | {f('decode_peak_extra_mb'):.0f} |\n")
    md += (f"\n{len(images)} images; this run took {elapsed / 60:.1f} minutes; measuring every codec on every "
           f"image took {measured_s / 60:.1f} minutes in all (summed over cached parts); "
           f"plots: {', '.join(p.name for p in plot_files) or 'none (matplotlib is not installed)'}")
    (out / "summary.md").write_text(md + "\n")
    if report:
        write_report(report, md, meta, out, plot_files, shown, side)
    return md


def range_section(report: Path, out: Path) -> list[str]:
    """A link to the whole-range page beside the report (rangeplot.py --report) and its plots, where they exist."""
    page = report.parent / "range.md"
    plots = sorted((out / "plots").glob("range-*.png"))
    if not page.is_file():
        return []
    rel = lambda p: os.path.relpath(p, report.parent)  # noqa: E731
    return (["## The whole range of one file", "",
             f"One default file cut to each budget (and past it, the file with its third stage) against the "
             f"classic hull and each codec: [{rel(page)}]({rel(page)}).", ""]
            + [f"![{p.stem}]({rel(p)})" for p in plots] + [""])


def write_report(report: Path, md: str, meta: dict, out: Path, plot_files: list[Path], shown: Path, side) -> None:
    """The results page: how it was made, the tables, the plots and the side-by-side picture."""
    rel = lambda p: os.path.relpath(p, report.parent)  # noqa: E731
    cmd = " ".join(["odp bench", meta["folder"], "--out", str(out), "--report", str(report)])
    page = [f"# Results: ODP ({meta['model']}) against the classic codecs", "",
            f"Regenerate with `{cmd}` (`odp fetch-metrics` once first). "
            f"{len(meta['images'])} images from `{meta['folder']}`, never trained on; device {meta['device']}, "
            f"{meta['cpu_threads']} CPU threads, network on {meta.get('backend', 'torch')}, {meta['platform']}. "
            f"Each measured part (an image under ODP or one classic codec) is kept in `{rel(out / 'cache')}`, "
            "keyed by the image's content and everything the part depends on, and committed with this page: "
            "the command resumes where a run stopped (`--jobs N` measures N images at once) and re-measures "
            "only what a new model or codec version changes, or the budgets a part has not measured yet.", "",
            "Each codec gets its best file of no more bytes than the budget (bpp = file bytes × 8 / pixels, "
            "headers included). ODP: the file `odp encode --bytes` makes (one encode, truncated to the budget; "
            "coded at 1/2, 1/3 or 1/4 of each side only where the full size cannot fit; past the first stage's whole file, "
            "its refinement stage cut to the budget); `odp scale by psnr`: "
            "`--scale psnr`, the coding scale (full, 1/2, 1/3, 1/4) whose cut has the highest PSNR; "
            "`odp uniform`: the full-size file without adaptive allocation. Classic codecs: the highest quality that fits "
            "(JPEG optimised, WebP method 6, AVIF speed 0, JPEG XL effort 9); `+downscale`: the best of full size "
            "and Lanczos downscaling by 2, 4 and 8, enlarged back; `classic hull`: per metric, the best of every "
            "classic variant. A number in parentheses after a mean is how many images had a file that fits.", "",
            md, "", "## Plots", ""]
    page += [f"![{p.stem}]({rel(p)})" for p in plot_files]
    page += ["", f"## Side by side: `{shown}` at {' and '.join(map(str, side))} bpp", "",
             "original | ODP | best classic variant at no more bytes (by LPIPS-Alex)", "",
             f"![side by side]({rel(out / 'side_by_side.png')})", ""]
    page += range_section(report, out)
    if (out / "processes.md").is_file():  # whole-process times (codec/evaluation/processes.py), kept across runs
        page += ["## Whole-process times", "", (out / "processes.md").read_text().strip(), ""]
    tmp = report.with_suffix(".tmp")
    tmp.write_text("\n".join(page))
    os.replace(tmp, report)
