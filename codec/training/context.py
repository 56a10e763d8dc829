"""Train the token context model (entropy/context.py) and ship it quantised.

    python -m odp.codec.training.context tokens --data /work/data/train-v2 --out runs/ctx/tokens.safetensors
    python -m odp.codec.training.context train --tokens runs/ctx/tokens.safetensors --val runs/ctx/val.safetensors \
        --run runs/ctx --name ctx16-v1 --dropout 0.3 --epochs 3

`tokens` runs the shipped tokenizer over training photos (centre crop up to 1024x1024 and
its mirror image); `train` fits the float model (Adam, cosine schedule; every 5th photo held
out), quantises it to integers, measures bits/token of the integer model on the held-out
photos against the per-position tables, and writes entropy/weights/NAME.safetensors bound
to the tokenizer's sha256. Never reads data/eval.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from ...entropy import context
from ...entropy.models import TOTAL, PositionTables
from .. import weights
from ..engine import Engine
from .export import count
from .train import list_photos

SHIPPED_DIR = Path(__file__).parents[2] / "entropy" / "weights"
LOGIT_UNIT = 32      # integer logits count 1/32 nat
EXP_BITS = 20        # exp table: round(2**20 * exp(-i / 32)), at least 1


class FloatContext(nn.Module):
    """The float model that entropy/context.py runs in integers: same layers, same order."""

    def __init__(self, alphabet: int, positions: int, lags: int, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)  # on the context embeddings, in training only: it memorises tiles otherwise
        self.alphabet, self.lags = alphabet, lags
        self.emb = nn.Embedding(alphabet + 1, dim)
        self.l1 = nn.Linear(lags * dim, hidden, bias=False)
        self.pos_bias = nn.Parameter(torch.zeros(positions, hidden))
        self.l2 = nn.Linear(hidden, alphabet)

    def forward(self, ctx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.l1(self.drop(self.emb(ctx)).flatten(1)) + self.pos_bias[pos])
        return self.l2(h)


class FloatDigitContext(nn.Module):
    """The float model that entropy/context.py's DigitContextModel runs in integers: FloatContext's hidden
    layer before its ReLU, then per digit an offset for the lower digits, a ReLU and a small output layer."""

    def __init__(self, radix: int, digits: int, positions: int, lags: int, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.alphabet, self.radix, self.digits, self.lags = radix ** digits, radix, digits, lags
        self.emb = nn.Embedding(self.alphabet + 1, dim)
        self.l1 = nn.Linear(lags * dim, hidden, bias=False)
        self.pos_bias = nn.Parameter(torch.zeros(positions, hidden))
        self.prefix_bias = nn.Parameter(torch.zeros(sum(radix ** k for k in range(digits)), hidden))
        self.w2 = nn.Parameter(torch.randn(digits, radix, hidden) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(digits, radix))

    def forward(self, ctx: torch.Tensor, pos: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
        """Logits (n, digits, radix) of each digit of `tok` given its context and its lower digits."""
        pre = self.l1(self.drop(self.emb(ctx)).flatten(1)) + self.pos_bias[pos]
        out, row = [], 0
        for k in range(self.digits):
            g = F.relu(pre + self.prefix_bias[row + tok % self.radix ** k])
            out.append(g @ self.w2[k].T + self.b2[k])
            row += self.radix ** k
        return torch.stack(out, 1)

    def loss(self, ctx: torch.Tensor, pos: torch.Tensor, tok: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Cross-entropy per token (the sum over its digits), in nats."""
        digits = torch.div(tok[:, None], self.radix ** torch.arange(self.digits), rounding_mode="floor") % self.radix
        nll = F.cross_entropy(self(ctx, pos, tok).flatten(0, 1), digits.flatten(), reduction="none")
        per_token = nll.view(-1, self.digits).sum(1)
        return per_token.sum() if reduction == "sum" else per_token.mean()


def extract(data: list[str], out: Path, name: str | None = None) -> None:
    """Tokens (tiles, K) of every training photo's centre crop and its mirror, one tensor per photo,
    into a safetensors file (metadata: the tokenizer's sha256). `name`: an installed first-stage model
    (default: the default one)."""
    model = weights.load(name) if name else weights.load()
    tile = model.config.tile
    found = {}
    engine = Engine(model, "cpu", 4)
    files = list_photos(data)
    for i, f in enumerate(files):
        im = np.asarray(Image.open(f).convert("RGB"))
        h, w = im.shape[:2]
        ch, cw = min(h, 1024) // tile * tile, min(w, 1024) // tile * tile
        if not ch or not cw:
            continue
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        crop = np.ascontiguousarray(im[y0:y0 + ch, x0:x0 + cw])
        both = [engine.encode(c) for c in (crop, np.ascontiguousarray(crop[:, ::-1]))]
        found[f.name] = np.concatenate(both).astype(np.int16)
        print(f"\r  {i + 1}/{len(files)} photos", end="", file=sys.stderr)
    print(file=sys.stderr)
    from safetensors.numpy import save_file

    save_file(found, str(out), metadata={"tokenizer_sha256": model.sha256.hex()})


def extract_refinement(config: Path, snapshot: Path | None, data: list[str], out: Path, side: int = 512,
                       name: str | None = None) -> None:
    """Tokens (tiles, K) of a refinement stage (config's [refine], weights of `snapshot`, or the installed
    stage model `name`: then bound to its sha256 like a first stage's tokens) on every
    training photo's centre crop (at most side x side, the run's held-out photos left out): the crop
    coded whole by the base model, its picture enlarged with the crop as the codec does
    (codec/refinement.py). One tensor per photo, metadata: the snapshot's step and sha256 (export.py
    fits the shipped model's tables to them, and `train --tokenizer` binds a context model with them)."""
    import tempfile
    import tomllib

    from safetensors.torch import load_file

    from .. import registry
    from ..model import ModelConfig, Tokenizer
    from .train import split_photos

    cfg = tomllib.loads(config.read_text())
    rc = cfg["refine"]
    base = ClassicBase(rc) if rc["base"] == "classic" else Engine(weights.load(rc["base"]), "cpu", 4)
    base_tables = registry.find(cfg["train"]["init"] if rc["base"] == "classic" else rc["base"]).tables
    held = {p.name for p in split_photos(cfg["train"])[1]}
    if name:
        stage = weights.load(name)
        found = _stage_tokens(base, Engine(stage, "cpu", 4), [f for f in list_photos(data) if f.name not in held],
                              side, int(rc["scale"]))
        from safetensors.numpy import save_file

        save_file(found, str(out), metadata={"tokenizer_sha256": stage.sha256.hex(), "refines": rc["base"]})
        return
    tok = Tokenizer(ModelConfig.from_dict(cfg["model"]))
    state = load_file(str(snapshot / "snapshot.safetensors"))
    tok.load_state_dict({k[4:]: v.float() for k, v in state.items() if k.startswith("ema.")})
    step = json.loads((snapshot / "state.json").read_text())["step"]
    snapshot_sha = registry.file_sha256(snapshot / "snapshot.safetensors").hex()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "refine.safetensors"
        weights.save_weights(path, "refine", tok.eval(), base_tables)
        found = _stage_tokens(base, Engine(weights.load_path(path), "cpu", 4),
                              [f for f in list_photos(data) if f.name not in held], side, int(rc["scale"]))
    from safetensors.numpy import save_file

    save_file(found, str(out), metadata={"refinement_step": str(step), "snapshot_sha256": snapshot_sha})


class ClassicBase:
    """A classic codec's thumbnail as a refinement stage's picture so far (config `base = "classic"`): each
    photo's crop shrunk by one of `shrink`, coded by one of the codecs at a quality in its range (as training
    draws them; a fixed draw per photo), decoded and enlarged back."""

    def __init__(self, rc: dict):
        self.shrink, self.quality, self.rng = rc["shrink"], rc["quality"], np.random.default_rng(5)

    def picture(self, crop: np.ndarray) -> np.ndarray:
        from ..evaluation.classic import THUMBNAIL_CODECS, decode, shrink

        codec = str(self.rng.choice(sorted(self.quality)))
        q = int(self.rng.integers(self.quality[codec][0], self.quality[codec][1] + 1))
        small = shrink(crop, int(self.rng.choice(self.shrink)))
        return decode(THUMBNAIL_CODECS[codec].encode(small, q), crop.shape[1], crop.shape[0])


def _stage_tokens(base, stage: Engine, files: list[Path], side: int, scale: int) -> dict[str, np.ndarray]:
    """A stage's tokens on each photo's centre crop (at most side x side) coded whole by `base` first
    (an Engine, or a ClassicBase)."""
    from .. import refinement

    found = {}
    for i, f in enumerate(files):
        im = np.asarray(Image.open(f).convert("RGB"))
        h, w = im.shape[:2]
        ch, cw = min(h, side), min(w, side)
        crop = np.ascontiguousarray(im[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw])
        shown = base.picture(crop) if isinstance(base, ClassicBase) else base.decode(base.encode(crop), cw, ch)
        found[f.name] = refinement.encode_stage(stage, crop, shown, scale).astype(np.int16)
        print(f"\r  {i + 1}/{len(files)} photos", end="", file=sys.stderr)
    print(file=sys.stderr)
    return found


def load_tokens(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """The tokens of a `tokens` run and its metadata."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    with safe_open(path, framework="np") as f:
        meta = f.metadata() or {}
    return load_file(path), meta


def tokenizer_for(meta: dict, name: str | None) -> tuple[weights.Model, bytes]:
    """The model whose tokens these are, and the sha256 to bind a context model to (b"" for a
    refinement stage's tokens without --tokenizer: measured, bound to nothing). A refinement
    model's weights record the snapshot they were exported from (export.py): it must be the
    snapshot that made the tokens."""
    from safetensors import safe_open

    model = weights.load(name) if name else weights.load()
    if "snapshot_sha256" in meta:
        if not name:
            return model, b""
        with safe_open(str(model.entry.path), framework="np") as f:
            made_by = (f.metadata() or {}).get("snapshot_sha256")
        if made_by != meta["snapshot_sha256"]:
            sys.exit(f"train_context: error: the tokens come from another snapshot than {name}'s weights")
        return model, model.sha256
    if bytes.fromhex(meta.get("tokenizer_sha256", "")) != model.sha256:
        sys.exit("train_context: error: the tokens were made by other tokenizer weights than the shipped ones")
    return model, model.sha256


def samples(groups: list[np.ndarray], lags: int, alphabet: int):
    toks = np.concatenate(groups).astype(np.int64)                       # (tiles, K)
    n, k = toks.shape
    pos = np.tile(np.arange(k), n)
    src = pos[:, None] - np.arange(1, lags + 1)[None, :]
    rows = np.repeat(np.arange(n), k)
    ctx = np.where(src >= 0, toks[rows[:, None], np.maximum(src, 0)], alphabet)
    return torch.from_numpy(ctx), torch.from_numpy(pos), torch.from_numpy(toks.reshape(-1))


def quantise(net: FloatContext, name: str, tokenizer_sha256: bytes, ctx: torch.Tensor, pos: torch.Tensor) -> tuple[dict, dict]:
    """Float model -> integer tensors and metadata for context.ContextModel; (ctx, pos) are training
    contexts that set the hidden layer's requantisation shift (its values kept to about 15 bits)."""
    emb = net.emb.weight.detach().double().numpy()
    w1 = net.l1.weight.detach().double().numpy()
    pb = net.pos_bias.detach().double().numpy()
    w2 = net.l2.weight.detach().double().numpy()
    b2 = net.l2.bias.detach().double().numpy()
    s_e = 2047 / np.abs(emb).max()
    s_1 = 127 / np.abs(w1).max()
    s_2 = 127 / np.abs(w2).max()
    q_emb, q_w1, q_w2 = (np.round(a * s).astype(np.int64) for a, s in ((emb, s_e), (w1, s_1), (w2, s_2)))
    q_pb = np.round(pb * s_e * s_1).astype(np.int64)
    x = q_emb[ctx.numpy()].reshape(len(ctx), -1).astype(np.float64)
    h = np.maximum(x @ q_w1.T.astype(np.float64) + q_pb[pos.numpy()], 0)
    shift1 = max(0, int(math.ceil(math.log2(np.quantile(h, 0.99999) + 1))) - 15)
    h_scale = s_e * s_1 / 2 ** shift1                     # hidden (integers) ~ h_float * h_scale
    # logit = (z * mult + b2) >> shift2 in 1/LOGIT_UNIT nat: mult about 2**20 keeps the scale exact to 1e-6
    ideal = LOGIT_UNIT / (h_scale * s_2)
    shift2 = max(1, 20 - int(math.floor(math.log2(ideal))))
    mult = int(round(ideal * 2 ** shift2))
    q_b2 = np.round(b2 * LOGIT_UNIT * 2 ** shift2).astype(np.int64)
    lut = np.maximum(1, np.round(2.0 ** EXP_BITS * np.exp(-np.arange(EXP_BITS * LOGIT_UNIT * 0.7) / LOGIT_UNIT)))
    tensors = {"emb": q_emb.astype(np.int16), "w1": q_w1.astype(np.int8), "pos_bias": q_pb.astype(np.int64),
               "w2": q_w2.astype(np.int8), "b2": q_b2, "exp_lut": lut.astype(np.int64)}
    meta = {"id": name, "lags": str(net.lags), "shift1": str(shift1), "mult": str(mult), "shift2": str(shift2),
            "tokenizer_sha256": tokenizer_sha256.hex()}
    return tensors, meta


def quantise_digits(net: FloatDigitContext, name: str, tokenizer_sha256: bytes, ctx: torch.Tensor, pos: torch.Tensor,
                    tok: torch.Tensor) -> tuple[dict, dict]:
    """As `quantise`, for a DigitContextModel: the digit offsets share the hidden layer's integer scale."""
    emb = net.emb.weight.detach().double().numpy()
    w1 = net.l1.weight.detach().double().numpy()
    pb = net.pos_bias.detach().double().numpy()
    prefix = net.prefix_bias.detach().double().numpy()
    w2 = net.w2.detach().double().numpy()
    b2 = net.b2.detach().double().numpy()
    s_1, s_2 = 127 / np.abs(w1).max(), 127 / np.abs(w2).max()
    q_w1, q_w2 = np.round(w1 * s_1).astype(np.int64), np.round(w2 * s_2).astype(np.int64)
    # embeddings small enough that the first layer is one exact float32 product when decoding (no limbs:
    # half the decoder's time, entropy/context.py): (|emb| + 1) * max row sum of |w1| < 2**24
    s_e = min(2047, (2 ** 24 - 1) // int(np.abs(q_w1).sum(1).max()) - 1) / np.abs(emb).max()
    q_emb = np.round(emb * s_e).astype(np.int64)
    q_pb, q_prefix = (np.round(a * s_e * s_1).astype(np.int64) for a in (pb, prefix))
    x = q_emb[ctx.numpy()].reshape(len(ctx), -1).astype(np.float64)
    pre = x @ q_w1.T.astype(np.float64) + q_pb[pos.numpy()]
    t, row, peaks = tok.numpy().astype(np.int64), 0, []
    for k in range(net.digits):
        peaks.append(np.quantile(np.maximum(pre + q_prefix[row + t % net.radix ** k], 0), 0.99999))
        row += net.radix ** k
    shift1 = max(0, int(math.ceil(math.log2(max(peaks) + 1))) - 15)
    h_scale = s_e * s_1 / 2 ** shift1
    ideal = LOGIT_UNIT / (h_scale * s_2)
    shift2 = max(1, 20 - int(math.floor(math.log2(ideal))))
    mult = int(round(ideal * 2 ** shift2))
    q_b2 = np.round(b2 * LOGIT_UNIT * 2 ** shift2).astype(np.int64)
    lut = np.maximum(1, np.round(2.0 ** EXP_BITS * np.exp(-np.arange(EXP_BITS * LOGIT_UNIT * 0.7) / LOGIT_UNIT)))
    tensors = {"emb": q_emb.astype(np.int16), "w1": q_w1.astype(np.int8), "pos_bias": q_pb, "prefix_bias": q_prefix,
               "w2": q_w2.astype(np.int8), "b2": q_b2, "exp_lut": lut.astype(np.int64)}
    meta = {"id": name, "lags": str(net.lags), "shift1": str(shift1), "mult": str(mult), "shift2": str(shift2),
            "digits": str(net.digits), "radix": str(net.radix), "tokenizer_sha256": tokenizer_sha256.hex()}
    return tensors, meta


def integer_bits(model, ctx: torch.Tensor, pos: torch.Tensor, tok: torch.Tensor) -> float:
    """Mean bits per token of the integer model (either kind) on these samples."""
    bits = 0.0
    for i in range(0, len(tok), 4096):
        c, p, t = ctx[i:i + 4096].numpy(), pos[i:i + 4096].numpy(), tok[i:i + 4096].numpy().astype(np.int64)
        if isinstance(model, context.DigitContextModel):
            bits += float(model.token_bits(c, p, t).sum())
        else:
            f = model.frequencies(c, p)
            bits += float(-np.log2(f[np.arange(len(f)), t] / TOTAL).sum())
    return bits / len(tok)


def train(args) -> None:
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    d, meta = load_tokens(args.tokens)
    names = sorted(d)
    held = set(names[::5])
    model, tok_sha = tokenizer_for(meta, args.tokenizer)
    refine = "snapshot_sha256" in meta or "refines" in meta  # a refinement stage's tokens (tokens --refine)
    if not tok_sha and Path(args.out).resolve() == SHIPPED_DIR.resolve():
        sys.exit("train_context: error: a context model for a refinement stage's tokens is shipped only bound to "
                 "its exported weights: give --tokenizer NAME (or --out elsewhere to measure it)")
    V, K = model.config.codebook_size, model.config.tokens
    tr = samples([d[n] for n in names if n not in held], args.lags, V)
    te = samples([d[n] for n in names if n in held], args.lags, V)
    val = None
    if args.val:  # photos from elsewhere (never data/eval): held-out photos of the same packages can be near twins
        val = samples(list(load_tokens(args.val)[0].values()), args.lags, V)
    if args.radix:
        digits = round(math.log(V) / math.log(args.radix))
        if args.radix ** digits != V:
            sys.exit(f"train_context: error: {V} codes are not whole digits of {args.radix}")
        net = FloatDigitContext(args.radix, digits, K, args.lags, args.dim, args.hidden, args.dropout)
        nll_of = net.loss
    else:
        net = FloatContext(V, K, args.lags, args.dim, args.hidden, args.dropout)
        nll_of = lambda c, p, t, reduction="mean": F.cross_entropy(net(c, p), t, reduction=reduction)
    opt = torch.optim.AdamW(net.parameters(), args.lr, weight_decay=0.01)
    n, steps_per_epoch = len(tr[2]), -(-len(tr[2]) // args.batch)
    total = steps_per_epoch * args.epochs
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    log = open(run / "log.jsonl", "a")
    t0, step = time.time(), 0
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(n)
        for i in range(0, n, args.batch):
            for g in opt.param_groups:
                g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            idx = perm[i:i + args.batch]
            loss = nll_of(tr[0][idx], tr[1][idx], tr[2][idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        net.eval()
        with torch.no_grad():
            nll = sum(nll_of(te[0][i:i + 8192], te[1][i:i + 8192], te[2][i:i + 8192], reduction="sum").item()
                      for i in range(0, len(te[2]), 8192))
        rec = {"epoch": epoch + 1, "step": step, "train_loss_bits": loss.item() / math.log(2),
               "heldout_bits": nll / len(te[2]) / math.log(2), "seconds": round(time.time() - t0)}
        if val is not None:
            with torch.no_grad():
                rec["val_bits"] = sum(nll_of(val[0][i:i + 8192], val[1][i:i + 8192], val[2][i:i + 8192],
                                             reduction="sum").item()
                                      for i in range(0, len(val[2]), 8192)) / len(val[2]) / math.log(2)
        print(json.dumps(rec), file=log, flush=True)
        print(json.dumps(rec), file=sys.stderr)
    if args.radix:
        tensors, meta = quantise_digits(net, args.name, tok_sha, tr[0][::8], tr[1][::8], tr[2][::8])
    else:
        tensors, meta = quantise(net, args.name, tok_sha, tr[0][::8], tr[1][::8])
    out = Path(args.out) / f"{args.name}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.numpy import save_file

    save_file(tensors, str(out), metadata=meta)
    ctx_model = (context.DigitContextModel if args.radix else context.ContextModel)(args.name, tensors, meta)
    held_tokens = np.concatenate([d[n] for n in names if n in held]).astype(np.int64)
    summary = {"name": args.name, "lags": args.lags, "dim": args.dim, "hidden": args.hidden, "radix": args.radix,
               "epochs": args.epochs,
               "dropout": args.dropout, "photos": len(names), "heldout_photos": len(held),
               "train_tokens": n, "heldout_tokens": len(te[2]),
               "heldout_bits_integer": round(integer_bits(ctx_model, *te), 4),
               "heldout_bits_position_tables": round(model.tables.bits(held_tokens) / held_tokens.size, 4),
               "bytes": out.stat().st_size, "seconds": round(time.time() - t0)}
    if refine:  # what the codec would pay without this model: the first stage's context model, fitted tables
        shipped = weights.load().entry.context
        train_tokens = np.concatenate([d[n] for n in names if n not in held]).astype(np.int64)
        fitted = min(PositionTables.from_counts(count(train_tokens, V), prior_weight=w).bits(held_tokens)
                     for w in (64, 256, 1024, 4096, 16384))
        summary.update({
                        "heldout_bits_first_stage_context": round(integer_bits(shipped, *te), 4),
                        "heldout_bits_fitted_position_tables": round(fitted / held_tokens.size, 4)})
    print(json.dumps(summary), file=log, flush=True)
    print(json.dumps(summary))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokens", help="tokenize training photos")
    t.add_argument("--data", nargs="+", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--refine", type=Path, help="a refinement stage's training config: its tokens instead")
    t.add_argument("--snapshot", type=Path, help="with --refine: the snapshot folder of its weights")
    t.add_argument("--model", help="an installed model's tokens (with --refine: an installed stage model)")
    r = sub.add_parser("train", help="fit, quantise and write the context model")
    r.add_argument("--tokens", required=True)
    r.add_argument("--run", required=True)
    r.add_argument("--name", default="ctx16-v1")
    r.add_argument("--tokenizer", help="the installed model the tokens belong to (default: the default model); "
                                       "a refinement model exported from the snapshot that made them")
    r.add_argument("--out", default=str(SHIPPED_DIR))
    r.add_argument("--val", help="tokens (from `tokens`) of other photos to report bits/token on each epoch")
    r.add_argument("--lags", type=int, default=16)
    r.add_argument("--dim", type=int, default=64)
    r.add_argument("--hidden", type=int, default=256)
    r.add_argument("--radix", type=int, default=0, help="code each token as digits of this base (DigitContextModel: "
                                                           "much faster to decode); 0: one symbol per token")
    r.add_argument("--epochs", type=int, default=3)
    r.add_argument("--dropout", type=float, default=0.3)
    r.add_argument("--batch", type=int, default=1024)
    r.add_argument("--lr", type=float, default=2e-3)
    r.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.cmd == "tokens" and args.refine:
        if (args.snapshot is None) == (args.model is None):
            sys.exit("train_context: error: with --refine give --snapshot or --model (one of them)")
        extract_refinement(args.refine, args.snapshot, args.data, Path(args.out), name=args.model)
    elif args.cmd == "tokens":
        extract(args.data, Path(args.out), args.model)
    else:
        train(args)


if __name__ == "__main__":
    main()
