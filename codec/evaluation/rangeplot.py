"""Plots of ODP's whole range against the classic hull and each classic codec, from range.py's results.

    python -m odp.codec.evaluation.rangeplot docs/results/range docs/results/range-extended \
        --out docs/results/plots --report docs/range.md

One PNG per metric (range-psnr.png, range-ms-ssim.png): the mean score against bits per pixel of
ODP's cuts (the default file, then, from the second folder, the file with its third stage), of the
classic hull and of each classic codec's best file (any downscale), over the photos every folder
measured. A point is drawn only where every one of those photos has a file within the budget (the
bench's rule), so each curve averages the same photos. Per-codec scores come from the photo's JSON
where range.py measured that budget itself, else from `odp bench`'s cache. With --report, a page
with the plots and each folder's table (range.summarise) over the same photos.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .range import cached_part, summarise

HIGHER = {"psnr": True, "ms-ssim": True}


def load(folder: Path) -> dict[str, dict]:
    """range.py's results in `folder`, by image path."""
    return {d["image"]: d for d in (json.loads(p.read_text()) for p in sorted(folder.glob("*.json")))}


def cached_codec(image: str, codec: str, budget: float, metric: str) -> float | None:
    """`codec`'s best score within `budget` (any scale) in `odp bench`'s cache, or None."""
    doc = cached_part(Path(image), codec, budget)
    scores = [p[metric] for p in doc["points"] if budget in p["budgets"]] if doc is not None else []
    if not scores:
        return None
    return max(scores) if HIGHER[metric] else min(scores)


def curves(runs: list[dict[str, dict]], metric: str) -> dict[str, list[tuple[float, float]]]:
    """label -> [(bpp, mean score)] over the photos every run measured."""
    images = sorted(set.intersection(*(set(r) for r in runs)))
    out: dict[str, dict[float, float]] = {}
    for run in runs:
        budgets = sorted({float(b) for d in run.values() for b in d["hull"]})
        for b in budgets:
            docs = [run[i] for i in images]
            key = str(b)
            if all(key in d["odp"] for d in docs):
                out.setdefault("odp", {})[b] = float(np.mean([d["odp"][key][metric] for d in docs]))
            if all(metric in d["hull"].get(key, {}) for d in docs):
                out.setdefault("classic hull", {})[b] = float(np.mean([d["hull"][key][metric] for d in docs]))
            for codec in ("jpeg", "webp", "avif", "jxl"):
                vals = [d.get("codecs", {}).get(key, {}).get(codec, {}).get(metric) for d in docs]
                vals = [v if v is not None else cached_codec(d["image"], codec, b, metric) for v, d in zip(vals, docs)]
                if all(v is not None for v in vals):
                    out.setdefault(codec, {})[b] = float(np.mean(vals))
    return {label: sorted(points.items()) for label, points in out.items()}, len(images)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", type=Path, nargs="+", help="range.py --out folders")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--report", type=Path, help="also write a Markdown page with the plots and the tables")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [load(f) for f in args.folders]
    args.out.mkdir(parents=True, exist_ok=True)
    pictures = []
    for metric in ("psnr", "ms-ssim"):
        found, n = curves(runs, metric)
        fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
        for label, points in found.items():
            style = "-o" if label in ("odp", "classic hull") else "--."
            ax.plot([b for b, _ in points], [v for _, v in points], style, label=label,
                    linewidth=2.2 if label == "odp" else 1.2)
        ax.set_xscale("log")
        ax.set_xlabel("budget (bits per pixel, log scale)")
        ax.set_ylabel(f"{metric}  (higher is better)")
        ax.set_title(f"{metric}: ODP's cuts of one file vs the best classic file, mean over {n} images",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = args.out / f"range-{metric}.png"
        fig.savefig(path)
        plt.close(fig)
        pictures.append(path)
        print(path, {label: [(b, round(v, 4)) for b, v in pts] for label, pts in found.items()})
    if args.report:
        write_report(args, runs, pictures, n)


def write_report(args, runs: list[dict[str, dict]], pictures: list[Path], n: int) -> None:
    """The page: what was measured and how, the plots, then each folder's table over the same photos."""
    import os

    images = sorted(set.intersection(*(set(r) for r in runs)))
    rel = lambda p: os.path.relpath(p, args.report.parent)  # noqa: E731
    default_bpp = sum(runs[0][i]["odp"]["whole"]["bpp"] for i in images) / len(images)
    lines = ["# The whole range of one ODP file against the classic hull", "",
             f"Generated by `python -m odp.codec.evaluation.rangeplot {' '.join(map(str, args.folders))} "
             f"--out {args.out} --report {args.report}` from the results of `python -m odp.codec.evaluation.range` "
             f"in each folder (the first without, the second with `--extend`), over the {n} eval photos both measured. "
             "Each photo is encoded once; every budget is that file cut by `odp truncate --bytes` (no network) "
             f"and scored on what `odp decode` shows. The default file stops near {default_bpp:.2f} bpp; with `--extend` it goes "
             "on into the third stage (what `odp encode --no-base --bpp 0.4` makes). The classic hull at each budget is the "
             "best JPEG / WebP / AVIF / JPEG XL file of no more bytes, at full size or downscaled and enlarged back, "
             "per metric. A plotted point averages every photo; a table's hull column averages the photos where a "
             "classic file fits (how many in parentheses); a win is ODP better than the hull on that photo.", ""]
    lines += [f"![{p.stem}]({rel(p)})" for p in pictures] + [""]
    for folder, run in zip(args.folders, runs):
        docs = [run[i] for i in images]
        budgets = tuple(sorted(set.intersection(*({float(b) for b in d["hull"]} for d in docs))))
        metric_names = [m for m in ("psnr", "ms-ssim", "lpips-alex", "dists") if m in docs[0]["odp"]["whole"]]
        lines += [f"## `{folder}`", "", summarise(docs, budgets, metric_names), ""]
    tmp = args.report.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, args.report)


if __name__ == "__main__":
    main()
