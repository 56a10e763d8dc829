"""Turn a training run into shippable weights: EMA tokenizer + per-position entropy tables.

    python -m odp.codec.training.export --run runs/small --name odp-small-v1 --tiles 3000
    python -m odp.codec.training.export --refine CONFIG --snapshot DIR --tokens FILE --name odp-refine-x2-v1
    python -m odp.codec.training.export --run SNAPSHOT_DIR --name odp-thumbnail-x2-v1 --thumbnail-only

Token statistics come from random crops of the training photos (same sampler as
training); the smoothing strength is picked by code length on the held-out training
photos. Never looks at data/eval.

A decoder-only run (`freeze_encoder`, started from shipped weights with `init`) makes the same
tokens as the model it started from: its export keeps that model's tables and records its sha256
as `tokens_of`, so the context model trained on those tokens serves both (weights.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ...entropy.models import PositionTables
from ..model import ModelConfig, Tokenizer
from ..registry import path_of
from ..weights import WEIGHTS_DIR, load, load_path, save_weights
from .train import DECODER_PREFIXES, CropSampler, snapshot_over_init, split_photos


@torch.inference_mode()
def collect_tokens(tok: Tokenizer, sampler: CropSampler, n: int, batch: int = 16) -> np.ndarray:
    out = []
    for i in range(0, n, batch):
        out.append(tok.encode(sampler.batch(min(batch, n - i))).numpy())
        print(f"\r  tokens for {i + len(out[-1])}/{n} tiles", end="", file=sys.stderr)
    print(file=sys.stderr)
    return np.concatenate(out)


def count(tokens: np.ndarray, alphabet: int) -> np.ndarray:
    counts = np.zeros((tokens.shape[1], alphabet), np.int64)
    for j in range(tokens.shape[1]):
        counts[j] = np.bincount(tokens[:, j], minlength=alphabet)
    return counts


def fitted_tables(train: np.ndarray, held: np.ndarray, alphabet: int) -> tuple[PositionTables, int, float]:
    """Per-position tables from training tokens, the smoothing picked by bits/token on held-out ones
    -> (tables, prior weight, bits/token)."""
    counts = count(train, alphabet)
    best = None
    for w in (64, 256, 1024, 4096, 16384):
        tables = PositionTables.from_counts(counts, prior_weight=w)
        bpt = tables.bits(held) / held.size
        print(f"  prior weight {w}: {bpt:.3f} bits/token on held-out tokens", file=sys.stderr)
        if best is None or bpt < best[2]:
            best = (tables, w, bpt)
    return best


def export_refinement(config: Path, snapshot: Path, tokens: Path, name: str, out: Path) -> dict:
    """A refinement stage's snapshot -> shippable weights (EMA, fp16) with per-position tables fitted
    to its tokens (`context tokens --refine` of the same snapshot; every 5th photo held out, as the
    context model's training does), bound to the model it refines, and its ONNX graphs."""
    import tomllib

    from safetensors.numpy import load_file as load_np

    from .. import registry
    from . import onnx as export_onnx

    cfg = tomllib.loads(config.read_text())
    snap_sha = registry.file_sha256(snapshot / "snapshot.safetensors").hex()
    with safe_open(str(tokens), framework="np") as f:
        made_by = (f.metadata() or {}).get("snapshot_sha256")
    if made_by != snap_sha:
        sys.exit(f"export: {tokens} was not made from {snapshot} (run context tokens --refine on it)")
    tok = Tokenizer(ModelConfig.from_dict(cfg["model"]))
    state = load_file(str(snapshot / "snapshot.safetensors"))
    tok.load_state_dict({k[4:]: v.float() for k, v in state.items() if k.startswith("ema.")})
    tok.eval()
    found = load_np(str(tokens))
    names = sorted(found)
    held = set(names[::5])
    train = np.concatenate([found[n] for n in names if n not in held]).astype(np.int64)
    held_tokens = np.concatenate([found[n] for n in names if n in held]).astype(np.int64)
    tables, w, bpt = fitted_tables(train, held_tokens, tok.cfg.codebook_size)
    classic = cfg["refine"]["base"] == "classic"  # a version-4 file's first stage, over a classic thumbnail
    base = None if classic else registry.find(cfg["refine"]["base"])
    step = json.loads((snapshot / "state.json").read_text())["step"]
    path = Path(out) / f"{name}.safetensors"
    extra = {"snapshot_sha256": snap_sha, "scale": str(cfg["refine"]["scale"]), "step": str(step)}
    digest = save_weights(path, name, tok, tables, refines=None if classic else base.sha256,
                          extra=extra | ({"base": "classic"} if classic else {}))
    graphs = export_onnx.export(load_path(path), Path(out))
    return {"name": name, "sha256": digest.hex(), "step": step, "refines": "classic" if classic else base.name,
            "prior_weight": w,
            "heldout_bits_per_token": round(bpt, 4), "graphs": [g.name for g in graphs]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a training run's folder (its checkpoint), or a decoder-only run's snapshot folder")
    ap.add_argument("--name", required=True)
    ap.add_argument("--tiles", type=int, default=3000, help="training crops to estimate the tables from")
    ap.add_argument("--out", default=str(WEIGHTS_DIR))
    ap.add_argument("--refine", type=Path, help="a refinement stage's config: export its --snapshot instead")
    ap.add_argument("--snapshot", type=Path, help="with --refine: the snapshot folder")
    ap.add_argument("--tokens", type=Path, help="with --refine: its tokens (context tokens --refine)")
    ap.add_argument("--thumbnail-only", action="store_true",
                    help="a decoder-only run of a version-4 base model trained at 0 tokens: the model that files "
                         "holding their thumbnail alone name (registry.thumbnail_model)")
    args = ap.parse_args(argv)
    if args.refine:
        if not (args.snapshot and args.tokens):
            ap.error("--refine needs --snapshot and --tokens")
        print(json.dumps(export_refinement(args.refine, args.snapshot, args.tokens, args.name, Path(args.out))))
        return
    if not args.run:
        ap.error("give --run (or --refine)")

    run = Path(args.run)
    state = json.loads((run / "state.json").read_text())
    cfg = state["config"]
    mc, tc = ModelConfig.from_dict(cfg["model"]), cfg["train"]
    tok = Tokenizer(mc)
    if (run / "ckpt.safetensors").is_file():
        t = load_file(str(run / "ckpt.safetensors"))
        tok.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ema.")})
    else:  # a committed snapshot of a decoder-only run holds the decoder's EMA: laid over its init's weights
        if not tc.get("init"):
            sys.exit(f"export: {run} has no ckpt.safetensors, and a snapshot needs its run's init model")
        snapshot_over_init(run, tok, load(tc["init"]).tokenizer.state_dict())
    # ship what is decoded: round-trip through fp16 before measuring anything
    tok.load_state_dict({k: v.half().float() for k, v in tok.state_dict().items()})
    tok.eval()

    if cfg.get("loss", {}).get("freeze_encoder") and tc.get("init"):
        base = load(tc["init"])
        base_state = base.tokenizer.state_dict()
        changed = [k for k, v in tok.state_dict().items()
                   if not k.startswith(DECODER_PREFIXES) and not torch.equal(v, base_state[k])]
        if changed:
            sys.exit(f"export: the encoder of {run} differs from {tc['init']} ({changed[0]}): not a decoder-only run")
        # the tokenizer that first made these tokens: a fine-tune of a fine-tune names the original,
        # whose context model serves them all (registry looks one step back)
        with safe_open(str(path_of(tc["init"])), framework="np") as f:
            root = (f.metadata() or {}).get("tokens_of")
        path = Path(args.out) / f"{args.name}.safetensors"
        # a stage's decoder refines the same pictures at the same scale: a refinement stage's (`refines`)
        # or the first stage of version-4 files, refining a classic thumbnail (`base`)
        extra = {"step": str(state["step"])}
        if base.entry.refines or base.entry.base:
            extra |= {"scale": str(base.entry.scale)} | ({"base": base.entry.base} if base.entry.base else {})
        if args.thumbnail_only:
            if base.entry.base != "classic":
                sys.exit(f"export: --thumbnail-only is for a fine-tune of a version-4 base model, not of {tc['init']}")
            extra["thumbnail_only"] = "1"
        digest = save_weights(path, args.name, tok, base.tables, tokens_of=bytes.fromhex(root) if root else base.sha256,
                              refines=base.entry.refines or None, extra=extra)
        from . import onnx as export_onnx  # the default backend runs the model from its ONNX graphs

        graphs = [g.name for g in export_onnx.export(load_path(path), Path(args.out))]
        print(json.dumps({"name": args.name, "sha256": digest.hex(), "step": state["step"],
                          "tokens_of": base.name, "tables": "kept from " + base.name, "graphs": graphs}))
        return

    train_files, held = split_photos(tc)
    train_tokens = collect_tokens(tok, CropSampler(train_files, tc["areas_mp"], mc.tile, seed=99), args.tiles)
    held_tokens = collect_tokens(tok, CropSampler(held, tc["areas_mp"], mc.tile, seed=98), max(64, args.tiles // 10))
    tables, w, bpt = fitted_tables(train_tokens, held_tokens, mc.codebook_size)
    path = Path(args.out) / f"{args.name}.safetensors"
    digest = save_weights(path, args.name, tok, tables)
    summary = {"name": args.name, "sha256": digest.hex(), "step": state["step"], "table_tiles": args.tiles,
               "prior_weight": w, "heldout_bits_per_token": round(bpt, 4)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
