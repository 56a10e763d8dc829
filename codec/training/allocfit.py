"""Fit the allocation predictor of a model: each tile's error at each token count, without decoding.

    python -m odp.codec.training.allocfit collect --model odp-small-v2 --tiles 800 --out runs/alloc-v2.safetensors
    python -m odp.codec.training.allocfit fit --model odp-small-v2 --data runs/alloc-v2.safetensors

`collect` decodes random tiles of the training photos (every scale the encoder codes at: areas from
0.1 to 3 MP, edge tiles included) at PREDICTED_COUNTS and records their true mean squared error beside
`allocation.tile_features`; `fit` fits one ridge regression of the log error per count and writes it
next to the model's weights (`<model>.allocation.safetensors`), where the encoder finds it. Training
photos only (the split of --config), never data/eval.
"""
from __future__ import annotations

import argparse
import json
import os
import tomllib
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors.numpy import load_file, save_file

from ..allocation import PREDICTED_CAP_FLOOR, PREDICTED_COUNTS, design, tile_areas, tile_features
from .. import tiling
from ..engine import Engine
from ..imaging import resize
from ..registry import WEIGHTS_DIR, find
from ..stream import token_bits
from .train import split_photos


def collect(model_name: str, config: Path, tiles: int, seed: int, out: Path) -> None:
    """Measure `tiles` random training tiles into `out` (safetensors, rewritten as it grows; a rerun continues)."""
    os.environ.setdefault("ODP_THREADS", "1")
    entry = find(model_name)
    engine = Engine(entry, "cpu", batch=8)
    photos, _ = split_photos(tomllib.loads(config.read_text())["train"])
    old = load_file(str(out)) if out.exists() else {}
    feats, errs = [old["features"]] if old else [], [old["mse"]] if old else []
    rng = np.random.default_rng(seed + sum(len(e) for e in errs))
    while sum(len(e) for e in errs) < tiles:
        im = Image.open(photos[rng.integers(len(photos))]).convert("RGB")
        area = np.exp(rng.uniform(np.log(0.1e6), np.log(3e6)))
        f = min(1.0, (area / (im.width * im.height)) ** 0.5)
        pixels = resize(np.asarray(im), (max(32, round(im.width * f)), max(32, round(im.height * f))))
        h, w = pixels.shape[:2]
        n = np.prod(tiling.grid(w, h, engine.tile))
        sel = np.sort(rng.choice(n, size=min(4, n), replace=False))
        toks = np.zeros((n, entry.tokens), np.int32)
        every = tiling.all_tiles(pixels, engine.tile)
        toks[sel] = engine.net.encode(every[sel])
        err = np.stack([engine.tile_errors(toks, pixels, sel, k) for k in PREDICTED_COUNTS], 1)
        bits = np.zeros(toks.shape)
        bits[sel] = token_bits(toks[sel], entry.best_entropy)
        feats.append(tile_features(pixels, engine.tile, bits, PREDICTED_COUNTS)[sel])
        errs.append(err / (3 * tile_areas(pixels, engine.tile)[sel, None]))
        save_file({"features": np.concatenate(feats), "mse": np.concatenate(errs),
                   "counts": np.array(PREDICTED_COUNTS, np.int64)}, str(out))
        print(f"\r  {sum(len(e) for e in errs)}/{tiles} tiles", end="", flush=True)
    print()


def fit(data: dict[str, np.ndarray], ridge: float = 1.0) -> tuple[np.ndarray, dict]:
    """(coefficients (counts, DESIGN_WIDTH), report): log mse = design(features) @ coef, one ridge
    regression per count; the report is of a fit on 4/5 of the tiles, checked on the other 1/5."""
    a, y = design(data["features"]), np.log(data["mse"])
    n = len(a)
    test = np.arange(n) % 5 == 0

    def solve(rows: np.ndarray) -> np.ndarray:
        return np.stack([np.linalg.solve(a[rows, j].T @ a[rows, j] + ridge * np.eye(a.shape[2]),
                                         a[rows, j].T @ y[rows, j]) for j in range(a.shape[1])])

    coef = solve(~test)
    pred = np.einsum("tkf,kf->tk", a[test], coef)
    report = {"tiles": int(n), "checked": int(test.sum()),
              "rms_log_error": [round(float(v), 3) for v in np.sqrt(((pred - y[test]) ** 2).mean(0))],
              "least_error_count_agrees": round(float((np.argmin(pred, 1) == np.argmin(y[test], 1)).mean()), 3)}
    return solve(np.ones(n, bool)), report  # the shipped coefficients: every tile


def cap_counts(mse: np.ndarray, share: float = 0.05) -> np.ndarray:
    """The counts from PREDICTED_CAP_FLOOR up at which at least `share` of the training tiles have their
    least error: where the encoder may cap a tile (a count that is almost never best is never guessed)."""
    counts = np.array(PREDICTED_COUNTS)
    best = counts[np.argmin(mse, 1)]
    keep = [c for c in counts if c >= PREDICTED_CAP_FLOOR and np.mean(best == c) >= share]
    return np.array(keep or [counts[-1]], np.int64)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["collect", "fit"])
    ap.add_argument("--model", default="odp-small-v2")
    ap.add_argument("--config", type=Path, default=Path(__file__).parent / "configs" / "odp-small-v3.toml",
                    help="whose training split to draw photos from")
    ap.add_argument("--tiles", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=Path("runs/alloc.safetensors"))
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = ap.parse_args(argv)
    if args.action == "collect":
        collect(args.model, args.config, args.tiles, args.seed, args.data)
        return
    data = load_file(str(args.data))
    coef, report = fit(data)
    caps = cap_counts(data["mse"])
    report["cap_counts"] = caps.tolist()
    print(json.dumps(report))
    path = args.out / f"{args.model}.allocation.safetensors"
    save_file({"coef": coef, "counts": data["counts"].astype(np.int64), "cap_counts": caps}, str(path),
              metadata={"model": args.model, "report": json.dumps(report)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
