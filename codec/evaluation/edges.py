"""Small images and partial tiles: do they decode as well as full tiles do?

    python -m odp.codec.evaluation.edges ../shared/data/eval/photos [--limit N] [--json FILE]

Each photo is first shrunk to the smallest size that still covers 768x512 (one smaller than that is
skipped, never enlarged).
Two measurements, both on the default file (`odp.encode`, every token of both stages) and on its first
stage alone (`refine=False`):

- **Small images**: centre crops of 128x128, 200x150 and 256x256 (smaller than a tile or one tile) and a
  768x512 centre crop (6 full tiles), each coded on its own: PSNR and LPIPS-Alex of the whole file.
  Different crops hold different pixels, so this compares sizes, not tiles.
- **Partial tiles, paired**: a 700x450 crop has a partial tile column (188 px) at its right and a
  partial row (194 px) at its bottom. The same pixels are also coded inside full tiles, in 256x512 and
  512x256 crops placed so they cover them; PSNR of each edge region (right strip, bottom strip, corner)
  in the 700x450 file against the same region in the full-tile file. Same pixels, same model: the
  difference is what the edge costs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..quality import psnr
from .bench import find_images
from .metrics import Scorer

SMALL = ((128, 128), (200, 150), (256, 256), (768, 512))
PARTIAL = (700, 450)  # 2 full tile columns + 188 px, 1 full tile row + 194 px
# region (rows, cols) of the 700x450 crop -> (crop box (left, top, right, bottom) of full tiles covering it,
# where the region lies inside that crop)
REGIONS = {
    "right": ((slice(0, 256), slice(512, 700)), ((188, 0, 700, 256), (slice(0, 256), slice(324, 512)))),
    "bottom": ((slice(256, 450), slice(0, 512)), ((0, 194, 512, 450), (slice(62, 256), slice(0, 512)))),
    "corner": ((slice(256, 450), slice(512, 700)), ((188, 194, 700, 450), (slice(62, 256), slice(324, 512)))),
}


def decoded(im: Image.Image, refine: bool) -> np.ndarray:
    import odp

    return np.asarray(odp.decode(odp.encode(im, refine=refine, device="cpu"), device="cpu").convert("RGB"))


def centre(im: Image.Image, w: int, h: int) -> Image.Image:
    left, top = (im.width - w) // 2, (im.height - h) // 2
    return im.crop((left, top, left + w, top + h))


def measure(path: Path) -> dict | None:
    im = Image.open(path).convert("RGB")
    factor = max(768 / im.width, 512 / im.height)
    if factor > 1:
        return None
    im = im.resize((max(768, round(im.width * factor)), max(512, round(im.height * factor))), Image.LANCZOS)
    out: dict = {"image": path.name}
    for w, h in SMALL:
        crop = centre(im, w, h)
        score = Scorer(np.asarray(crop), ("psnr", "lpips-alex"))
        for stage, refine in (("whole", True), ("first", False)):
            for metric, value in score(decoded(crop, refine)).items():
                out[f"{w}x{h} {stage} {metric}"] = value
    part = centre(im, *PARTIAL)
    ref = np.asarray(part)
    for stage, refine in (("whole", True), ("first", False)):
        shown = decoded(part, refine)
        for name, (region, (box, inside)) in REGIONS.items():
            full = decoded(part.crop(box), refine)
            out[f"{name} {stage} partial psnr"] = psnr(ref[region], shown[region])
            out[f"{name} {stage} full psnr"] = psnr(ref[region], full[inside])
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--limit", type=int, default=0, help="only the first N photos (0: all)")
    ap.add_argument("--json", type=Path, help="also write every photo's figures here (JSON lines)")
    args = ap.parse_args(argv)
    paths = find_images(args.folder)
    rows = []
    for path in paths[:args.limit or None]:
        row = measure(path)
        if row is None:
            continue
        rows.append(row)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    if not rows:
        raise SystemExit(f"edges: no photo of at least 768x512 in {args.folder}")
    print(f"{len(rows)} photos of {len(paths)} (those of at least 768x512)")
    print("| crop | whole file PSNR | whole LPIPS-Alex | first stage PSNR | first LPIPS-Alex |\n|---|---:|---:|---:|---:|")
    for w, h in SMALL:
        cells = [np.mean([r[f"{w}x{h} {s} {m}"] for r in rows]) for s in ("whole", "first") for m in ("psnr", "lpips-alex")]
        print(f"| {w}x{h} | {cells[0]:.2f} | {cells[1]:.3f} | {cells[2]:.2f} | {cells[3]:.3f} |")
    print("\n| region of the 700x450 crop | whole file: partial / full tile PSNR | first stage: partial / full |\n|---|---|---|")
    for name in REGIONS:
        cells = [np.mean([r[f"{name} {s} {k} psnr"] for r in rows]) for s in ("whole", "first") for k in ("partial", "full")]
        print(f"| {name} | {cells[0]:.2f} / {cells[1]:.2f} | {cells[2]:.2f} / {cells[3]:.2f} |")


if __name__ == "__main__":
    main()
