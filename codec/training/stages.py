"""Past the first stage's whole file: a refinement-stage snapshot against coding the image enlarged.

    python -m odp.codec.training.stages --config codec/training/configs/odp-refine-x2.toml \
        --snapshot codec/training/snapshots/odp-refine-x2

On the run's held-out photos (never trained on, never the eval set), each at most `--area` MP:
- `first`: the shipped file (the base model, full size), its cuts at the budgets;
- `enlarged`: the image coded at `scale` times each side by the base model alone (a standalone file,
  `odp encode --scale 1/2`), its largest cut within each budget;
- `refined`: the first stage's whole file, then the refinement stage's first k tokens of every tile
  of the image enlarged `scale` times (the same k in every tile; bytes: those tokens entropy-coded with
  the base model's tables, which were not fitted to them, so an upper bound).
Prints one JSON line per photo and method with its (bpp, PSNR) points, then each method's mean PSNR
at the budgets (linear between a photo's points; a budget past a photo's last point is left out).
What decides whether the refinement stage is worth a container and an encoder.
"""
from __future__ import annotations

import argparse
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from .. import tiling
from ..coding import encode
from ..engine import Engine
from ..model import ModelConfig, Tokenizer
from ..options import EncodeOptions
from ..quality import psnr
from ..ratecontrol import Coded, render
from ..stream import cut_points, pack, read_tokens, truncate
from ..weights import load
from ...entropy.coder import KnownTokens
from .train import split_photos


def refiner(cfg: dict, snapshot: Path) -> Tokenizer:
    tok = Tokenizer(ModelConfig.from_dict(cfg["model"]))
    t = load_file(str(snapshot / "snapshot.safetensors"))
    tok.load_state_dict({k[4:]: v.float() for k, v in t.items() if k.startswith("ema.")})
    return tok.eval()


def enlarge(pixels: np.ndarray, scale: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, sH, sW) in [-1, 1], bicubic as in training (train.Refinement)."""
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)


def tiles_of(x: torch.Tensor, tile: int) -> torch.Tensor:
    """(1, 3, H, W) -> (n, 3, tile, tile) in tiling's order, edge tiles reflect-padded."""
    a = ((x[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    t = tiling.all_tiles(a, tile)
    return torch.from_numpy(t).permute(0, 3, 1, 2).float() / 127.5 - 1


def refined_curve(tok: Tokenizer, ref: np.ndarray, first: np.ndarray, first_bytes: int, scale: int,
                  ks: list[int], entry) -> list[tuple[float, float]]:
    h, w = ref.shape[:2]
    big_w, big_h = w * scale, h * scale
    x, cond = tiles_of(enlarge(ref, scale), tok.cfg.tile), tiles_of(enlarge(first, scale), tok.cfg.tile)
    with torch.no_grad():
        ids = torch.cat([tok.encode(x[i:i + 8], cond[i:i + 8]) for i in range(0, len(x), 8)])
    toks = ids.numpy().astype(np.int32)
    whole = pack(toks, big_w, big_h, entry, entropy=KnownTokens(entry.best_entropy, toks))
    out = []
    for k in ks:
        canvas = np.empty((big_h, big_w, 3), np.uint8)
        with torch.no_grad():
            for i in range(0, len(x), 8):
                y = tok.decode(ids[i:i + 8, :k], cond[i:i + 8])
                y = ((y.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
                tiling.place_tiles(canvas, y, i, tok.cfg.tile)
        tiling.deblock(canvas, tok.cfg.tile)
        shown = np.asarray(Image.fromarray(canvas).resize((w, h), Image.LANCZOS))
        extra = len(truncate(whole, tokens=k)) if k else 0
        out.append(((first_bytes + extra) * 8 / (w * h), psnr(ref, shown)))
    return out


def cut_curve(data: bytes, engine: Engine, ref: np.ndarray) -> list[tuple[float, float]]:
    toks = read_tokens(data)[2]
    h, w = ref.shape[:2]
    pts = []
    for nbytes, _ in cut_points(data):
        cut = truncate(data, max_bytes=nbytes)
        pts.append((len(cut) * 8 / (w * h), psnr(ref, render(Coded(1, data, toks), cut, engine))))
    return pts


def at(points: list[tuple[float, float]], bpp: float) -> float | None:
    """PSNR at `bpp` on a curve: the best point within it (a file is cut to fit), None below the first."""
    fits = [p for b, p in points if b <= bpp + 1e-9]
    return max(fits) if fits else None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--snapshot", type=Path, required=True)
    ap.add_argument("--photos", type=int, default=4, help="the first N held-out photos")
    ap.add_argument("--area", type=float, default=0.4, help="largest photo size in MP")
    ap.add_argument("--budgets", default="0.03,0.05,0.075,0.1,0.15,0.2,0.25")
    ap.add_argument("--ks", default="0,8,16,32,64,128,256")
    args = ap.parse_args(argv)
    cfg = tomllib.loads(Path(args.config).read_text())
    tc, rc = cfg["train"], cfg["refine"]
    torch.set_num_threads(1)
    base = load(rc["base"])
    engine = Engine(base, "cpu")
    tok = refiner(cfg, args.snapshot)
    scale, ks = int(rc["scale"]), [int(k) for k in args.ks.split(",")]
    budgets = [float(b) for b in args.budgets.split(",")]
    curves: dict[str, list] = {"first": [], "enlarged": [], "refined": []}
    for path in split_photos(tc)[1][:args.photos]:
        im = Image.open(path).convert("RGB")
        s = min(1.0, math.sqrt(args.area * 1e6 / (im.width * im.height)))
        im = im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS) if s < 1 else im
        ref = np.asarray(im)
        whole = encode(im, EncodeOptions(device="cpu", scale=1), engine=engine)
        first = render(Coded(1, whole, read_tokens(whole)[2]), whole, engine)
        big = encode(im, EncodeOptions(device="cpu", scale=f"1/{scale}"), engine=engine)
        got = {"first": cut_curve(whole, engine, ref), "enlarged": cut_curve(big, engine, ref),
               "refined": refined_curve(tok, ref, first, len(whole), scale, ks, base.entry)}
        for name, pts in got.items():
            curves[name].append(pts)
            print(json.dumps({"photo": path.name, "method": name,
                              "points": [(round(b, 4), round(p, 2)) for b, p in pts]}), flush=True)
    for name, per_photo in curves.items():
        row = {}
        for b in budgets:
            vals = [v for v in (at(pts, b) for pts in per_photo) if v is not None]
            if len(vals) == len(per_photo):
                row[b] = round(float(np.mean(vals)), 2)
        print(json.dumps({"method": name, "photos": len(per_photo), "mean_psnr_at_bpp": row}))


if __name__ == "__main__":
    main()
