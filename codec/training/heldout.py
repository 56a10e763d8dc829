"""A decoder-only snapshot against the model it fine-tunes, on whole held-out training photos.

    python -m odp.codec.training.heldout --config codec/training/configs/odp-small-v3.toml \
        --snapshot codec/training/snapshots/odp-small-v3

The run's held-out photos (every `holdout_every`-th, never trained on, never the eval set), each at
most `--area` MP, are encoded once with the `init` model (or `--against`, a shipped model making the same
tokens); a decoder-only fine-tune makes the same tokens, so each cut of that file (the largest within each budget) is the same bytes for both, and
only the decoders differ. Prints the mean PSNR, LPIPS-Alex, DISTS and seam ratio (metrics.seam_ratio, at
the decoders' tile pitch) of each at each budget: what decides whether the snapshot ships.

For a refinement stage's run (a config with `[refine]`, `init` the shipped stage), each photo is
encoded as `odp encode` does (first stage, then the shipped refinement stage) and each cut's stage is
drawn by the shipped stage's decoder and by the snapshot's (default budgets 0.05-0.2 bpp).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tomllib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..coding import encode
from .. import ratecontrol, registry
from ..engine import Engine
from ..imaging import Prepared
from ..evaluation import perceptual
from ..evaluation.metrics import seam_ratio
from ..evaluation.range import picture_of
from ..model import ModelConfig
from ..options import EncodeOptions
from ..quality import psnr
from ..ratecontrol import Coded, render
from ..refinement import stage_picture
from ..stream import container, read_tokens, truncate
from ..weights import Model, load
from .train import snapshot_over_init, split_photos


def fine_tuned(base: Model, snapshot: Path) -> Model:
    """`base` with the snapshot's EMA weights laid over it (a decoder-only snapshot holds only those), in the
    snapshot's own shape (a lighter decoder's head differs from its base's: `init_lighter`)."""
    cfg = ModelConfig.from_dict(json.loads((snapshot / "state.json").read_text())["config"]["model"])
    tok = snapshot_over_init(snapshot, type(base.tokenizer)(cfg), base.tokenizer.state_dict())
    # the entry tells an Engine how the network draws (its tile, `out_shrink`): the snapshot's shape
    return Model(dataclasses.replace(base.entry, config=cfg.to_dict()), cfg, tok.eval())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--snapshot", type=Path, required=True)
    ap.add_argument("--budgets", help="bits per pixel, comma-separated (default 0.005-0.03; 0.05-0.2 for a stage)")
    ap.add_argument("--area", type=float, default=0.4, help="largest photo size in MP (a Kodak photo is 0.39)")
    ap.add_argument("--against", help="the shipped model to compare with (default: the run's init); the same "
                                      "tokens, e.g. the stage shipped from an earlier snapshot of this run")
    args = ap.parse_args(argv)
    cfg = tomllib.loads(Path(args.config).read_text())
    tc, staged = cfg["train"], "refine" in cfg
    torch.set_num_threads(1)
    init = load(tc["init"])
    base = load(args.against) if args.against else init
    if base.entry.contexts != init.entry.contexts:
        raise SystemExit(f"{base.name} does not make {init.name}'s tokens: nothing to compare on the same bytes")
    engines = {base.name: Engine(base, "cpu"), "snapshot": Engine(fine_tuned(init, args.snapshot), "cpu")}
    alex, dists = perceptual.get("alex"), perceptual.get("dists")
    budgets = [float(b) for b in (args.budgets or ("0.05,0.1,0.15,0.2" if staged else "0.005,0.01,0.02,0.03")).split(",")]
    scores: dict = {}
    _, held = split_photos(tc)
    for path in held:
        im = Image.open(path).convert("RGB")
        s = min(1.0, math.sqrt(args.area * 1e6 / (im.width * im.height)))
        im = im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS) if s < 1 else im
        ref = np.asarray(im)
        pictures = staged_pictures(ref, base, engines) if staged else first_stage_pictures(im, engines, base.name)
        pitch = base.tile // base.entry.scale  # where the tiles of the decoders compared meet, in the picture
        for b in budgets:
            try:
                data, drawn = pictures(int(b * im.width * im.height / 8))
            except ValueError:
                continue
            for name, out in drawn.items():
                x, y = (torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255 for a in (out, ref))
                r = scores.setdefault((b, name), {"psnr": [], "lpips-alex": [], "dists": [], "seam": [], "bpp": []})
                r["psnr"].append(psnr(ref, out))
                r["lpips-alex"].append(float(alex(x, y)))
                r["dists"].append(float(dists(x, y)))
                r["seam"].append(seam_ratio(out, pitch))
                r["bpp"].append(len(data) * 8 / (im.width * im.height))
    for (b, name), r in scores.items():
        print(json.dumps({"budget_bpp": b, "decoder": name, "images": len(r["psnr"]),
                          **{k: round(float(np.nanmean(v)), 4) for k, v in r.items()}}))


def first_stage_pictures(im: Image.Image, engines: dict, shipped: str):
    """max_bytes -> (the shipped model's file's cut, each decoder's picture of it)."""
    whole = encode(im, EncodeOptions(device="cpu"), engine=engines[shipped])

    def at(max_bytes: int):
        data = truncate(whole, max_bytes=max_bytes)
        toks = read_tokens(data)[2]
        return data, {name: render(Coded(1, whole, toks), data, e) for name, e in engines.items()}
    return at


def staged_pictures(pixels: np.ndarray, stage: Model, engines: dict):
    """max_bytes -> (the default file's cut, each stage decoder's picture of it): the file is made by
    the first stage's shipped model and the installed stage, as `odp encode` does: `stage` or one making its
    tokens (a decoder-only fine-tune of the same encoder)."""
    first = Engine(registry.find_by_hash(stage.entry.refines), "cpu")
    ladder = ratecontrol.ScaleLadder(Prepared(pixels, b"", b""), first, refine=True)
    r = ladder.refined
    if r is None or r.engine.entry.contexts != stage.entry.contexts:
        raise SystemExit(f"the encoder's refinement stage does not make {stage.name}'s tokens: compare against the installed one")

    def at(max_bytes: int):
        data = truncate(r.data, max_bytes=max_bytes)
        c = container.read(data)
        if not c.stages:  # a cut inside the first stage: the stage decoders do not differ there
            return data, dict.fromkeys(engines, picture_of(data, ladder))
        h = c.stages[-1]
        return data, {name: stage_picture(e, r.tokens, h.header, h.level, r.so_far) for name, e in engines.items()}
    return at


if __name__ == "__main__":
    main()
