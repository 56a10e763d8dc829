"""The predicted allocation against the measured one: BD-rate on PSNR over the same photos.

    python -m odp.codec.evaluation.alloccheck ../shared/data/eval/photos

Each photo is tokenized once at full size; its tokens are packed twice, with the allocation whose
errors are predicted (the default, no trial decodes) and with the one that decodes every tile at
each count (`allocation(..., measure=True)`), and each file is cut at the same budgets (bpp) and
decoded. Prints per budget the mean PSNR of both, the BD-rate of predicted against measured (mean over
photos; positive: the prediction needs more bytes for the same PSNR) and the time each allocation took.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .. import registry
from ..allocation import allocation
from ..engine import Engine
from ..quality import psnr
from ..stream import container, pack, truncate
from .bench import bd_rate

BUDGETS = (0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03)


def curves(path: Path, engine: Engine) -> dict:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    h, w = pixels.shape[:2]
    toks = engine.encode(pixels)
    entry = engine.entry
    out = {"image": path.name, "tiles": len(toks)}
    for method in ("measured", "predicted"):
        t = time.perf_counter()
        weights, caps = allocation(toks, pixels, engine, entry.best_entropy, measure=method == "measured")
        out[f"{method}_s"] = time.perf_counter() - t
        whole = pack(toks, w, h, entry, weights=weights, caps=caps)
        points = {}
        for bpp in BUDGETS + ("whole",):
            try:
                data = whole if bpp == "whole" else truncate(whole, max_bytes=int(bpp * w * h / 8))
            except ValueError:  # the budget is below this file's first layer
                continue
            c = container.read(data)
            points[bpp] = (len(data) * 8 / (w * h), psnr(engine.picture(toks, c.header, c.level), pixels))
        out[method] = points
    r1, q1 = zip(*sorted(set(out["measured"].values())))
    r2, q2 = zip(*sorted(set(out["predicted"].values())))
    out["bd_rate_percent"] = bd_rate(r1, q1, r2, q2)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--model", default=registry.DEFAULT_MODEL)
    ap.add_argument("--out", type=Path, help="write every photo's curves here (JSON lines)")
    args = ap.parse_args(argv)
    engine = Engine(registry.find(args.model), "cpu")
    rows = []
    for path in sorted(p for p in args.folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")):
        rows.append(curves(path, engine))
        r = rows[-1]
        print(f"{r['image']}: BD-rate {r['bd_rate_percent']:+.2f}%  allocation {r['measured_s']:.2f} s -> "
              f"{r['predicted_s']:.2f} s", flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(r) + "\n")
    bd = [r["bd_rate_percent"] for r in rows if r["bd_rate_percent"] is not None]
    print(f"\n{len(rows)} photos: BD-rate (PSNR) of predicted against measured allocation: mean {np.mean(bd):+.2f}%, "
          f"median {np.median(bd):+.2f}%, worst {max(bd):+.2f}%")
    print(f"allocation time: measured {sum(r['measured_s'] for r in rows):.1f} s, "
          f"predicted {sum(r['predicted_s'] for r in rows):.1f} s in all")
    print("budget bpp | photos | PSNR measured | PSNR predicted | bpp measured | bpp predicted")
    for bpp in BUDGETS + ("whole",):
        both = [r for r in rows if bpp in r["measured"] and bpp in r["predicted"]]
        if both:
            (rm, qm), (rp, qp) = (np.mean([r[k][bpp] for r in both], 0) for k in ("measured", "predicted"))
            print(f"{bpp} | {len(both)} | {qm:.3f} | {qp:.3f} | {rm:.5f} | {rp:.5f}")


if __name__ == "__main__":
    main()
