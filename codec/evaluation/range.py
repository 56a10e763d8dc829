"""The whole range of one ODP file against the classic hull, on a folder of photos.

    python -m odp.codec.evaluation.range ../shared/data/eval --out runs/range

Each photo is encoded once as `odp encode` does by default (first stage, then the refinement
stage); every budget is that file cut by `odp truncate --bytes` (no network), and its picture is
what `odp decode` shows. The classic hull at each budget: the best JPEG / WebP / AVIF (/ JPEG XL)
file of no more bytes, at full size or downscaled and enlarged back, per metric (the bench's rule):
from `odp bench`'s cache where it measured that budget (scales 1, 2, 4, 8), else measured here at
full size and 1/2 (FRESH_SCALES). PSNR and MS-SSIM for both; with --deep, LPIPS and DISTS too (slow on a CPU).
With --extend, the file goes on past the refinement stage into the further stage (what `odp encode
--no-base --bpp 0.4` or more makes: ratecontrol.ScaleLadder.extended), measured at EXTENDED_BUDGETS.
With --per-budget, each budget is instead the file `odp encode --bytes` makes for it (version 4, a base
thumbnail and tokens, where one fits): the best ODP offers at that size, though not one file for all.
Resumable: one JSON file per photo in --out. Prints the mean per budget and the win rates.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .. import coding, ratecontrol
from ..imaging import Prepared
from ..refinement import stage_picture
from ..stream import container, truncate
from . import classic, metrics
from .bench import budget_bytes, find_images

BUDGETS = (0.01, 0.03, 0.05, 0.1, 0.15, 0.2)  # bits per pixel (the whole file: about 0.2 on the eval photos)
# Downscaled by 2 at most, for budgets the bench's cache lacks (0.15 bpp and up): at 0.2 bpp, 1/4 and 1/8
# never gave the hull's best file on any metric of the 34 eval photos in the bench's cache, and each
# costs a quality search of its own.
FRESH_SCALES = (1, 2)
EXTENDED_BUDGETS = (0.2, 0.25, 0.3, 0.4)  # --extend: past the refinement stage's whole file (about 0.2)
BENCH_CACHE = Path(__file__).parents[2] / "docs" / "results" / "cache"


def picture_of(cut: bytes, ladder: ratecontrol.ScaleLadder) -> np.ndarray:
    """What `odp decode` shows of `cut`, a cut of the ladder's whole file, from the tokens in hand."""
    c = container.read(cut)
    if not c.stages:
        return ladder.engine.picture(ladder.full.tokens, c.header, c.level)
    r = ladder.refined if len(c.stages) == 1 else ladder.extended
    return stage_picture(r.engine, r.tokens, c.stages[-1].header, c.stages[-1].level, r.so_far)


def cached_part(path: Path, part: str, budget: float) -> dict | None:
    """`odp bench`'s cached part of this photo (docs/results/cache: a codec's best file under each
    budget at each scale, every metric scored), or None unless there is exactly one and it measured `budget`."""
    stem = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    found = sorted(BENCH_CACHE.glob(f"{stem}-{part}-*.json"))
    if len(found) != 1:
        return None
    doc = json.loads(found[0].read_text())
    return doc if budget in doc.get("budgets", ()) else None


def cached_hull(path: Path, budget: float, metric_names, codecs: dict) -> dict | None:
    """The hull at `budget` from `odp bench`'s cache of the same photo, or None where the bench did not
    measure this budget for every codec."""
    best: dict[str, float] = {}
    for name in codecs:
        doc = cached_part(path, name, budget)
        if doc is None:
            return None
        for p in doc["points"]:
            if budget not in p["budgets"]:
                continue
            for m in metric_names:
                better = max if m in ("psnr", "ms-ssim") else min
                best[m] = p[m] if m not in best else better(best[m], p[m])
    return best


def measure(path: Path, budgets, metric_names, codecs: dict, extend: bool = False, known: dict | None = None) -> dict:
    """ODP's file of this photo at each budget against the classic hull; `known`: an earlier result for
    the same photo whose hull is reused as it stands (the classic files do not depend on ODP's model)."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    h, w = pixels.shape[:2]
    score = metrics.Scorer(pixels, metric_names)
    engine = coding.engine_for(coding.EncodeOptions(device="cpu"))
    t0 = time.perf_counter()
    ladder = ratecontrol.ScaleLadder(Prepared(pixels, b"", b""), engine, refine=True)
    whole = ladder.refined.data if ladder.refined is not None else ladder.full.data
    if extend and ladder.extended is not None:
        whole = ladder.extended.data
    seconds = time.perf_counter() - t0
    odp, first_bytes = {}, len(ladder.full.data)
    for b in budgets + ("whole",):
        cut = whole if b == "whole" else truncate(whole, max_bytes=budget_bytes(b, w, h))
        odp[str(b)] = {"bytes": len(cut), "bpp": len(cut) * 8 / (w * h), **score(picture_of(cut, ladder))}
    hull, each, variants = {}, {}, {}  # each: the best file of each classic codec (any scale), per metric
    if known is not None:
        hull, each, budgets = known["hull"], known.get("codecs", {}), ()
    for b in budgets:
        cached = cached_hull(path, b, metric_names, codecs)
        if cached is not None:
            hull[str(b)] = cached
            continue
        best: dict[str, float] = {}
        each[str(b)] = {}
        for name, codec in codecs.items():
            for scale in FRESH_SCALES:
                if (name, scale) not in variants:  # one per codec and scale: its sizes serve every budget
                    variants[name, scale] = classic.Variant(codec, scale, classic.shrink(pixels, scale))
                v = variants[name, scale]
                q = v.best_under(budget_bytes(b, w, h))
                if q is None:
                    continue
                s = score(classic.decode(v.data(q), w, h))
                mine = each[str(b)].setdefault(name, {})
                for m, x in s.items():
                    better = max if m in ("psnr", "ms-ssim") else min
                    best[m] = x if m not in best else better(best[m], x)
                    mine[m] = x if m not in mine else better(mine[m], x)
        hull[str(b)] = best
    return {"image": str(path), "width": w, "height": h, "first_stage_bytes": first_bytes,
            "encode_seconds": seconds, "odp": odp, "hull": hull, "codecs": each}


def measure_per_budget(path: Path, budgets, metric_names, known: dict) -> dict:
    """The file `odp encode --bytes` makes at each budget (a file of its own each, version 4 where a
    base thumbnail fits), decoded as `odp decode` shows it, against the hull of `known` (earlier results
    for the same photo)."""
    import odp

    pixels = np.asarray(Image.open(path).convert("RGB"))
    h, w = pixels.shape[:2]
    score = metrics.Scorer(pixels, metric_names)
    odp_, seconds = {}, 0.0
    for b in budgets:
        t0 = time.perf_counter()
        data = odp.encode(Image.fromarray(pixels), bytes=budget_bytes(b, w, h), device="cpu")
        seconds += time.perf_counter() - t0
        odp_[str(b)] = {"bytes": len(data), "bpp": len(data) * 8 / (w * h),
                        "version": container.read(data).header.version,
                        **score(np.asarray(odp.decode(data).convert("RGB")))}
    return {"image": str(path), "width": w, "height": h, "encode_seconds": seconds / len(budgets),
            "odp": odp_, "hull": known["hull"], "codecs": {}}


def summarise(results: list[dict], budgets, metric_names, per_budget: bool = False) -> str:
    """Means per budget: ODP's over every photo, the hull's over the photos where a classic file fits;
    with `per_budget`, both over those photos (ODP's mean there, then how far under or over the hull)."""
    lines = ["| budget bpp | ODP bpp | " + ("version-4 files | " if per_budget else "")
             + " | ".join(f"ODP {m} | hull {m} | ODP wins" for m in metric_names) + " |",
             "|---:|---:|" + ("---:|" if per_budget else "") + "---:|---:|---:|" * len(metric_names)]
    every = results
    for b in budgets:
        key = str(b)
        if per_budget:  # the photos with a hull at this budget (the earlier results measured it)
            results = [r for r in every if key in r["odp"]]
        cells = [f"{b}", f"{np.mean([r['odp'][key]['bpp'] for r in results]):.4f}"]
        if per_budget:
            cells.append(f"{sum(r['odp'][key]['version'] == 4 for r in results)}/{len(results)}")
        for m in metric_names:
            both = [(r["odp"][key][m], r["hull"][key][m]) for r in results if m in r["hull"].get(key, {})]
            higher = m in ("psnr", "ms-ssim")
            wins = sum((o > c) if higher else (o < c) for o, c in both)
            mine = [o for o, _ in both] if per_budget else [r["odp"][key][m] for r in results]
            cells += [f"{np.mean(mine):.4f}" if mine else "n/a",
                      f"{np.mean([c for _, c in both]):.4f} ({len(both)})" if both else "n/a",
                      f"{wins}/{len(both)}"]
        lines.append("| " + " | ".join(cells) + " |")
    if per_budget:
        lines += ["", f"Encode {np.mean([r['encode_seconds'] for r in every]):.1f} s per file on average "
                  f"({len(every)} photos)."]
        return "\n".join(lines)
    whole = [r["odp"]["whole"] for r in results]
    lines.append("")
    lines.append(f"Whole file: mean {np.mean([x['bpp'] for x in whole]):.4f} bpp, "
                 + ", ".join(f"{m} {np.mean([x[m] for x in whole]):.4f}" for m in metric_names)
                 + f"; first stage alone {np.mean([r['first_stage_bytes'] * 8 / (r['width'] * r['height']) for r in results]):.4f} bpp"
                 + f"; encode {np.mean([r['encode_seconds'] for r in results]):.1f} s per photo on average ({len(results)} photos).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--deep", action="store_true", help="also LPIPS-Alex and DISTS")
    ap.add_argument("--limit", type=int, help="only the first N photos")
    ap.add_argument("--report", type=Path, help="also write the summary here (markdown)")
    ap.add_argument("--extend", action="store_true", help="the file with the further stage, at 0.2..0.4 bpp")
    ap.add_argument("--hull-from", type=Path, action="append", help="reuse the classic hull of the same photo's "
                    "result in this folder (a new ODP model against the same hull, without re-encoding the "
                    "classic codecs); repeat it to join the hulls of several folders")
    ap.add_argument("--per-budget", action="store_true", help="each budget its own `odp encode --bytes` file "
                    "(needs --hull-from: the photos and hulls of earlier results)")
    args = ap.parse_args(argv)
    names = ("psnr", "ms-ssim") + (("lpips-alex", "dists") if args.deep else ())
    if args.per_budget and not args.hull_from:
        ap.error("--per-budget measures against the hull of earlier results: give --hull-from")
    args.out.mkdir(parents=True, exist_ok=True)
    codecs = classic.available_codecs()
    results, budgets = [], EXTENDED_BUDGETS if args.extend else BUDGETS
    if args.per_budget:
        budgets = tuple(sorted(set(BUDGETS) | set(EXTENDED_BUDGETS)))
    for path in find_images(args.folder)[:args.limit]:
        stem = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        kind = "-extended" if args.extend else "-per-budget" if args.per_budget else ""
        cached = args.out / f"{stem}-{'deep' if args.deep else 'plain'}{kind}.json"
        if not cached.exists():
            # the same photo's earlier result of this kind; for --per-budget its range and extended results,
            # their hulls joined
            tag = "deep" if args.deep else "plain"
            priors = [f"{stem}-{tag}.json", f"{stem}-{tag}-extended.json"] if args.per_budget else [cached.name]
            known = None
            for prior in (folder / name for folder in args.hull_from or () for name in priors):
                if prior.exists():
                    doc = json.loads(prior.read_text())
                    known = doc if known is None else {**known, "hull": {**known["hull"], **doc["hull"]}}
            if args.per_budget:
                if known is None:
                    continue  # no hull for this photo
                doc = measure_per_budget(path, [b for b in budgets if str(b) in known["hull"]], names, known)
            else:
                doc = measure(path, budgets, names, codecs, args.extend, known)
            tmp = cached.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, cached)
            last = doc["odp"]["whole" if "whole" in doc["odp"] else str(max(map(float, doc["odp"])))]
            print(f"{path.name}: {'whole' if 'whole' in doc['odp'] else 'largest'} {last['bpp']:.4f} bpp "
                  f"{last['psnr']:.2f} dB", flush=True)
        results.append(json.loads(cached.read_text()))
    if args.per_budget:  # the budgets some photo has a hull for
        budgets = tuple(b for b in budgets if any(str(b) in r["odp"] for r in results))
    table = summarise(results, budgets, names, args.per_budget)
    print(table)
    if args.report:
        command = (f"python -m odp.codec.evaluation.range {args.folder} --out {args.out}"
                   f"{' --deep' if args.deep else ''}{' --extend' if args.extend else ''}"
                   f"{f' --limit {args.limit}' if args.limit else ''}"
                   f"{''.join(f' --hull-from {h}' for h in args.hull_from or ())}"
                   f"{' --per-budget' if args.per_budget else ''} --report {args.report}")
        if args.per_budget:
            head = (f"# ODP's file for each budget against the classic hull\n\nGenerated by `{command}` "
                    f"({len(results)} photos). Each budget is the file `odp encode --bytes` makes for it (version "
                    "4, a base thumbnail and tokens, where one fits; how many photos in the third column), decoded "
                    "as `odp decode` shows it; the hull is the earlier results' (the best classic file of no more "
                    "bytes per metric). Means over the photos where a classic file fits (how many in "
                    "parentheses); a win is ODP better than the hull on that photo.\n\n")
        else:
            head = (f"# The whole range of one ODP file against the classic hull\n\nGenerated by `{command}` "
                    f"({len(results)} photos). Each photo{__doc__.split('Each photo', 1)[1].split('With --per-budget')[0].rstrip()} "
                    "ODP's columns are means over every photo; the hull's over the photos where a classic file fits "
                    "(how many in parentheses); a win is ODP better than the hull on that photo.\n\n")
        args.report.write_text(head + table + "\n")


if __name__ == "__main__":
    main()
