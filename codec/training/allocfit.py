"""Fit the allocation predictor of a model: each tile's error at each token count, without decoding.

    python -m odp.codec.training.allocfit collect --model odp-small-v2 --tiles 800 --out runs/alloc-v2.npz
    python -m odp.codec.training.allocfit fit --model odp-small-v2 --data runs/alloc-v2.npz

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
from safetensors.numpy import save_file

from ..allocation import PREDICTED_COUNTS, tile_features
from .. import tiling
from ..engine import Engine
from ..imaging import resize
from ..registry import WEIGHTS_DIR, find
from ..stream import token_bits
from .train import split_photos


def collect(model_name: str, config: Path, tiles: int, seed: int, out: Path) -> None:
    """Measure `tiles` random training tiles into `out` (.npz, rewritten as it grows; a rerun continues)."""
    os.environ.setdefault("ODP_THREADS", "1")
    entry = find(model_name)
    engine = Engine(entry, "cpu", batch=8)
    photos, _ = split_photos(tomllib.loads(config.read_text())["train"])
    old = dict(np.load(out)) if out.exists() else {}
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
        every = np.concatenate(list(tiling.iter_tile_batches(pixels, engine.tile, 64)))
        toks[sel] = engine.net.encode(every[sel])
        cols = -(-w // engine.tile)
        area_px = np.array([(min(h, (t // cols + 1) * engine.tile) - t // cols * engine.tile)
                            * (min(w, (t % cols + 1) * engine.tile) - t % cols * engine.tile) for t in sel])
        err = np.stack([engine.tile_errors(toks, pixels, sel, k) for k in PREDICTED_COUNTS], 1)
        bits = np.zeros(toks.shape)
        bits[sel] = token_bits(toks[sel], entry.best_entropy)
        feats.append(tile_features(pixels, engine.tile, bits, PREDICTED_COUNTS)[sel])
        errs.append(err / (3 * area_px[:, None]))
        np.savez(out, features=np.concatenate(feats), mse=np.concatenate(errs), counts=np.array(PREDICTED_COUNTS))
        print(f"\r  {sum(len(e) for e in errs)}/{tiles} tiles", end="", flush=True)
    print()


def fit(data: dict[str, np.ndarray], ridge: float = 1e-2) -> tuple[np.ndarray, dict]:
    """(coefficients (counts, F + 1), report): log mse = features @ coef[:-1] + coef[-1], per count."""
    x, y = data["features"], np.log(data["mse"])
    n = len(x)
    test = np.arange(n) % 5 == 0  # every 5th tile checks the fit
    coef = np.empty((x.shape[1], x.shape[2] + 1))
    resid = []
    for j in range(x.shape[1]):
        a = np.concatenate([x[:, j], np.ones((n, 1))], 1)
        train = a[~test]
        coef[j] = np.linalg.solve(train.T @ train + ridge * np.eye(a.shape[1]), train.T @ y[~test, j])
        resid.append(a[test] @ coef[j] - y[test, j])
    resid = np.array(resid)
    best_true = np.argmin(data["mse"][test], 1)
    best_pred = np.argmin(np.exp(np.einsum("tkf,kf->tk", x[test], coef[:, :-1]) + coef[:, -1]), 1)
    report = {"tiles": int(n), "checked": int(test.sum()),
              "rms_log_error": [round(float(v), 3) for v in np.sqrt((resid ** 2).mean(1))],
              "least_error_count_agrees": round(float((best_true == best_pred).mean()), 3)}
    # refit on every tile for the shipped coefficients
    for j in range(x.shape[1]):
        a = np.concatenate([x[:, j], np.ones((n, 1))], 1)
        coef[j] = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ y[:, j])
    return coef, report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=["collect", "fit"])
    ap.add_argument("--model", default="odp-small-v2")
    ap.add_argument("--config", type=Path, default=Path(__file__).parent / "configs" / "odp-small-v3.toml",
                    help="whose training split to draw photos from")
    ap.add_argument("--tiles", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=Path("runs/alloc.npz"))
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = ap.parse_args(argv)
    if args.action == "collect":
        collect(args.model, args.config, args.tiles, args.seed, args.data)
        return
    data = dict(np.load(args.data))
    coef, report = fit(data)
    print(json.dumps(report))
    path = args.out / f"{args.model}.allocation.safetensors"
    save_file({"coef": coef, "counts": data["counts"].astype(np.int64)}, str(path),
              metadata={"model": args.model, "report": json.dumps(report)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
