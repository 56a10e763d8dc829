"""Rate-distortion of the shipped model on a folder of photos, at several kept-token counts.

    python -m odp.codec.evaluate ../shared/data/eval/photos --tokens 16 32 64 128 256

Each photo is encoded once; every k is a truncation of that file (the point of the
format). Reports mean bpp (exact file bytes), PSNR (RGB, 8-bit) and MS-SSIM per k,
plus entropy-coded bits per token and the tile-seam ratio (metrics.seam_ratio). `odp bench` compares with other codecs.
With --adaptive the file is the one `odp encode` writes (per-tile weights and caps) and k is
the mean tokens per tile; the report then also says whether quality ever falls as k grows.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from ...formats import container
from .. import coding, stream, weights
from ..imaging import IMAGE_SUFFIXES, prepare
from ..options import EncodeOptions
from .metrics import ms_ssim, psnr, seam_ratio


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder")
    ap.add_argument("--tokens", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--json", help="also write every per-image point to this file")
    ap.add_argument("--sizes-only", action="store_true",
                    help="file sizes and bits per token only: no decoding (quality columns left blank)")
    ap.add_argument("--adaptive", action="store_true",
                    help="encode as `odp encode` does (adaptive allocation with caps); k = mean tokens per tile")
    args = ap.parse_args(argv)
    args.tokens = sorted(set(args.tokens))

    model = weights.load()
    files = sorted(p for p in Path(args.folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    rows = []
    for f in files:
        im = Image.open(f)
        full = coding.encode(im, EncodeOptions(device="cpu", adaptive=args.adaptive), model)
        ref = prepare(im).pixels
        for k in args.tokens:
            data = stream.truncate(full, tokens=k)
            c = container.read(data)
            row = {"image": f.name, "tokens": k, "mean_tokens": float(np.mean(c.header.counts(c.level))), "bytes": len(data), "bpp": len(data) * 8 / (ref.shape[0] * ref.shape[1]),
                   "bits_per_token": 8 * c.payload_bytes / sum(c.header.counts(c.level)),
                   "psnr": math.nan, "ms_ssim": math.nan, "seam_ratio": math.nan}
            if not args.sizes_only:
                out = coding.decode_pixels(data, device="cpu")[0]
                row |= {"psnr": psnr(ref, out), "ms_ssim": ms_ssim(ref, out),
                        "seam_ratio": seam_ratio(out, model.config.tile)}
            rows.append(row)
        print(f"{f.name}: " + ", ".join(f"k={r['tokens']} {r['bytes']} B {r['psnr']:.2f} dB"
                                        for r in rows[-len(args.tokens):]), file=sys.stderr)
    means = []
    print(f"{'tokens':>6} {'bpp':>8} {'PSNR dB':>8} {'MS-SSIM':>8} {'bits/token':>10} {'seam':>6}"
          f"  ({len(files)} images, {model.name}; seam: tile-border / inside gradient)")
    for k in args.tokens:
        sel = [r for r in rows if r["tokens"] == k]
        mean = {key: float(np.nanmean(v)) if np.isfinite(v := [r[key] for r in sel]).any() else math.nan
                for key in ("bpp", "psnr", "ms_ssim", "bits_per_token", "seam_ratio")}
        means.append(mean)
        print(f"{k:>6} {mean['bpp']:>8.4f} {mean['psnr']:>8.2f} {mean['ms_ssim']:>8.4f} {mean['bits_per_token']:>10.3f}"
              f" {mean['seam_ratio']:>6.3f}")
    if not args.sizes_only:  # the "quality rises with kept tokens" check, on the means
        for key in ("psnr", "ms_ssim"):
            drops = [a[key] - b[key] for a, b in zip(means, means[1:])]
            worst = max(range(len(drops)), key=lambda i: drops[i], default=None)
            if worst is None or drops[worst] <= 0:
                print(f"{key}: never falls as k grows")
            else:
                print(f"{key}: falls from k={args.tokens[worst]} to k={args.tokens[worst + 1]} by {drops[worst]:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
