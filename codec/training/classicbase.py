"""Experiment: a refinement stage over a classic codec's thumbnail, against ODP's file and the classic hull.

    python -m odp.codec.training.classicbase --config codec/training/configs/odp-refine-classic.toml \
        [--snapshot codec/training/snapshots/odp-refine-classic]

On the run's held-out photos (never trained on, never the eval set; each at most `--area` MP), at each
budget: ODP's default file cut to the budget; the classic hull (AVIF and WebP through Pillow, shrunk 1, 2,
4 or 8 times and enlarged back, the best file of no more bytes per metric and photo); and the candidate
file layout, a base layer then stage tokens: the thumbnail the encoder picks (codec/thumbnail.py: the
best by PSNR) within a fraction of the budget, then as many tokens per tile of the refinement model
(coded at 2x, given the thumbnail enlarged) as the rest of the budget holds under its context model
(fraction 1: no tokens, the model's picture from the thumbnail alone). The candidate takes, per metric and photo, its best fraction, as the
hull takes its best variant. Without `--snapshot` the model is the config's `init` as shipped (zero-shot).
Prints a JSON line per photo and budget as it goes, then one per budget: the means and the candidate's
wins against the hull and ODP.
Encoder settings are fast ones (classic.THUMBNAIL_CODECS: AVIF speed 6, WebP method 4) for all classic files alike.
"""
from __future__ import annotations

import argparse
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import odp
from .. import stream
from ..thumbnail import Candidates
from ..engine import Engine
from ..evaluation import perceptual
from ..evaluation.classic import THUMBNAIL_CODECS, Variant, decode, shrink
from ..evaluation.metrics import HIGHER_IS_BETTER, better
from ..imaging import enlarge_bicubic, resize
from ..quality import psnr
from ..weights import load
from .heldout import fine_tuned
from .train import split_photos

HEADER_BYTES = 24  # the container's header and the stage's layer framing, about
SHRINKS = (1, 2, 4, 8)


def thumbnails(pixels: np.ndarray) -> list[Variant]:
    """Every thumbnail codec at every shrink of the photo; each remembers the files it made."""
    return [Variant(codec, s, shrink(pixels, s)) for codec in THUMBNAIL_CODECS.values() for s in SHRINKS]


def thumbnail(v: Variant, max_bytes: int, size: tuple[int, int]) -> tuple[bytes, np.ndarray] | None:
    """(file, picture enlarged back to `size`) of the variant's highest quality that fits, or None."""
    q = v.best_under(max_bytes)
    return None if q is None else (v.data(q), decode(v.data(q), *size))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--snapshot", type=Path)
    ap.add_argument("--budgets", default="0.01,0.02,0.03,0.05,0.1")
    ap.add_argument("--fractions", default="0.6,0.8,1.0", help="shares of the budget the thumbnail may take")
    ap.add_argument("--photos", type=int, default=10)
    ap.add_argument("--area", type=float, default=0.4)
    args = ap.parse_args(argv)
    tc = tomllib.loads(Path(args.config).read_text())["train"]
    torch.set_num_threads(1)
    model = load(tc["init"])
    engine = Engine(fine_tuned(model, args.snapshot) if args.snapshot else model, "cpu")
    entropy = model.entry.best_entropy
    judges = {"lpips-alex": perceptual.get("alex"), "dists": perceptual.get("dists")}

    def scores(ref: np.ndarray, out: np.ndarray) -> dict:
        x, y = (torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() / 255 for a in (out, ref))
        with torch.no_grad():
            return {"psnr": psnr(ref, out), **{k: float(m(x, y)) for k, m in judges.items()}}

    budgets = [float(b) for b in args.budgets.split(",")]
    rows: dict = {b: [] for b in budgets}
    for path in split_photos(tc)[1][:args.photos]:
        im = Image.open(path).convert("RGB")
        s = min(1.0, math.sqrt(args.area * 1e6 / (im.width * im.height)))
        im = im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)
        ref = np.asarray(im)
        h, w = ref.shape[:2]
        whole, variants, big_ref = odp.encode(im), thumbnails(ref), enlarge_bicubic(ref, 2)
        bases = Candidates(ref)
        for b in budgets:
            total = int(b * w * h / 8)
            row = {"odp": scores(ref, np.asarray(odp.decode(odp.truncate(whole, bytes=total))))}
            hull = [scores(ref, t[1]) for v in variants if (t := thumbnail(v, total, (w, h)))]
            cand = []
            for f in (float(x) for x in args.fractions.split(",")):
                base = bases.best_within(int(total * f) - HEADER_BYTES)  # as the encoder picks it
                if base is None:
                    continue
                cond = enlarge_bicubic(base.picture, 2)
                tokens = engine.encode(big_ref, cond=cond)
                bits = np.cumsum(stream.token_bits(tokens, entropy).sum(0))  # every tile's first n tokens
                n = 0 if f >= 1 else int(np.searchsorted(bits, (total - len(base.data) - HEADER_BYTES) * 8, "right"))
                big = engine.decode(tokens, 2 * w, 2 * h, np.full(tokens.shape[0], n), cond=cond)
                cand.append({**scores(ref, resize(big, (w, h))), "fraction": f})
            if hull and cand:
                pick = {k: max if HIGHER_IS_BETTER[k] else min for k in ("psnr", "lpips-alex", "dists")}
                row["hull"] = {k: pick[k](r[k] for r in hull) for k in pick}
                row["candidate"] = {k: pick[k](r[k] for r in cand) for k in pick}
                row["fraction"] = {k: pick[k](cand, key=lambda r: r[k])["fraction"] for k in pick}  # which won
                rows[b].append(row)
                print(json.dumps({"photo": path.name, "budget_bpp": b, **row}), flush=True)
    for b, rs in rows.items():
        if not rs:
            continue
        mean = {who: {k: round(float(np.mean([r[who][k] for r in rs])), 4) for k in rs[0][who]}
                for who in ("odp", "hull", "candidate")}
        wins = {f"candidate beats {who}": {k: sum(better(k, r["candidate"][k], r[who][k]) for r in rs)
                                           for k in rs[0][who]} for who in ("hull", "odp")}
        print(json.dumps({"budget_bpp": b, "photos": len(rs), **mean, **wins}), flush=True)


if __name__ == "__main__":
    main()
