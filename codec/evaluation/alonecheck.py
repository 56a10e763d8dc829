"""A version-4 cut of few layers against the thumbnail alone of the same budget (ratecontrol.ALONE_MAX_LAYERS).

    python -m odp.codec.evaluation.alonecheck /work/data/train-v2 --bpp 0.01 --width 1300 --every 15

Each photo (every `--every`-th of the folder, from `--offset`; training photos, never the eval set, since
this tunes the encoder) is made `--width` pixels wide (or a centred square with `--square`) and coded as a
version-4 file: the thumbnail within BASE_SHARE of the budget, the base model's tokens cut to the budget.
Its cut is scored beside the file that is the thumbnail alone within the whole budget (drawn by
registry.thumbnail_model) on PSNR, LPIPS-Alex, LPIPS-VGG and DISTS. Prints one line per photo and, per
number of layers the cut kept, how often the thumbnail alone scores better and its mean PSNR change.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from .. import ratecontrol
from ..coding import engine_for
from ..imaging import IMAGE_SUFFIXES, Prepared
from ..options import EncodeOptions
from ..refinement import shown
from ..stream import container, truncate
from .metrics import HIGHER_IS_BETTER, Scorer

METRICS = ("psnr", "lpips-alex", "lpips-vgg", "dists")


def sized(path: Path, width: int, square: bool) -> np.ndarray:
    im = Image.open(path).convert("RGB")
    if square:
        s = min(im.size)
        im = im.crop(((im.width - s) // 2, (im.height - s) // 2, (im.width + s) // 2, (im.height + s) // 2))
        return np.asarray(im.resize((width, width), Image.LANCZOS))
    return np.asarray(im.resize((width, max(1, round(im.height * width / im.width))), Image.LANCZOS))


def compare(pixels: np.ndarray, bpp: float, engine) -> dict | None:
    """Layers kept by the cut, and both files' scores; None where no base fits the budget."""
    h, w = pixels.shape[:2]
    n = int(bpp * w * h / 8)
    ladder = ratecontrol.ScaleLadder(Prepared(pixels, b"", b""), engine, refine=True, base=True)
    base = ladder.base_within(n)
    if base is None:
        return None
    whole = ladder.based(base).data
    cut = whole if len(whole) <= n else truncate(whole, max_bytes=n)
    alone = ratecontrol.thumbnail_alone(ladder, n, base)
    score = Scorer(pixels, METRICS)
    return {"layers": len(container.read(cut).layers), "bytes": (len(cut), len(alone)),
            "cut": score(shown(cut)), "alone": score(shown(alone))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--bpp", type=float, default=0.01)
    ap.add_argument("--width", type=int, default=1300)
    ap.add_argument("--square", action="store_true", help="a centred square, --width a side")
    ap.add_argument("--every", type=int, default=15)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--photos", type=int, default=10)
    args = ap.parse_args(argv)
    engine = engine_for(EncodeOptions(device="cpu"))
    paths = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)  # as training lists them
    by_layers: dict[int, list[dict]] = {}
    for path in paths[args.offset::args.every][:args.photos]:
        r = compare(sized(path, args.width, args.square), args.bpp, engine)
        if r is None:
            print(f"{path.name}: no base fits", flush=True)
            continue
        by_layers.setdefault(r["layers"], []).append(r)
        print(f"{path.name}: layers {r['layers']} bytes {r['bytes'][0]}/{r['bytes'][1]} "
              + " ".join(f"{m} {r['cut'][m]:.4f}/{r['alone'][m]:.4f}" for m in METRICS), flush=True)
    print("layers | photos | " + " | ".join(f"alone better on {m}" for m in METRICS) + " | mean PSNR change (dB)")
    for layers, rs in sorted(by_layers.items()):
        better = [sum(r["alone"][m] != r["cut"][m] and (r["alone"][m] > r["cut"][m]) == HIGHER_IS_BETTER[m]
                      for r in rs) for m in METRICS]
        change = np.mean([r["alone"]["psnr"] - r["cut"]["psnr"] for r in rs])
        print(f"{layers} | {len(rs)} | " + " | ".join(map(str, better)) + f" | {change:+.3f}")


if __name__ == "__main__":
    main()
