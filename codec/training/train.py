"""Train the ODP tokenizer: config-driven, resumable, logs JSON lines.

    python -m odp.codec.training.train --config codec/training/configs/odp-small.toml --run runs/small

Reads photos from the folders the config names (never from data/eval), takes random
256x256 crops at several scales with flips, and trains with MSE and tail-token drop
(each row keeps k ~ U{1..K} tokens). Checkpoints are safetensors plus a JSON state,
written atomically every `ckpt_every` steps; rerunning the same command resumes.

Optional stage-2 terms (config `[loss]`, in the One-D-Piece/TiTok spirit): LPIPS-VGG on a
random crop of each tile (offline weights, `odp fetch-metrics`), and a hinge patch
discriminator switched on at `adv_start` with a small weight; `freeze_encoder = true`
fine-tunes only the decoder, so the tokens of existing files keep their meaning.
`init = "odp-small-v1"` starts a new run from shipped weights; with `init_lighter = true`, a config that
makes the decoder lighter (fewer head channels) starts it from them where the shapes agree (lighter_start).

A refinement stage (config `[refine]`, `conditioned = true` in `[model]`): a second tokenizer that
codes the image enlarged `scale` times, each tile seeing the frozen `base` model's picture of it
(decoded from a random number of its tokens, enlarged the same way); it starts from `init` as the
identity (Tokenizer.start_as_identity) and learns what to add, tail drop reaching 0 tokens.

The same command runs under `torchrun --nproc-per-node N` (and across machines with torchrun's
--nnodes/--rdzv options): DistributedDataParallel over gloo on CPUs or NCCL on GPUs, each rank
drawing its crops from its own share of the photos, `batch` split evenly between the ranks (so the
recipe is the same whatever the world size), rank 0 alone logging, monitoring and checkpointing. A
checkpoint holds no trace of the world size: a run resumes with any number of processes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from ..imaging import IMAGE_SUFFIXES
from ..model import ModelConfig, Tokenizer

DECODER_PREFIXES = ("from_code", "dec_", "head")  # the parameters stage 2 trains
JUDGE_KEYS = {"alex": "lpips_alex", "vgg": "lpips_vgg"}  # log names of the monitor-only metrics


def list_photos(folders: list[str]) -> list[Path]:
    files = []
    for folder in folders:
        files += [p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files)


def pyramid(path: Path, areas_mp: list[float], tile: int) -> list[np.ndarray]:
    """The photo at each target area (never upscaled), as uint8 HxWx3 arrays."""
    im = Image.open(path)
    im.draft("RGB", (im.width // 2, im.height // 2)) if max(im.size) > 8000 else None
    im = im.convert("RGB")
    w, h = im.size
    levels = []
    for area in areas_mp:
        s = min(1.0, math.sqrt(area * 1e6 / (w * h)))
        size = (max(tile, round(w * s)), max(tile, round(h * s)))
        if size[0] > w or size[1] > h:
            size = (w, h)
        levels.append(np.asarray(im.resize(size, Image.LANCZOS) if size != (w, h) else im))
    return [lv for lv in levels if lv.shape[0] >= tile and lv.shape[1] >= tile]


class CropSampler:
    """Random tile-sized crops with flips from an in-memory multi-scale pyramid."""

    def __init__(self, files: list[Path], areas_mp: list[float], tile: int, seed: int):
        self.tile = tile
        self.rng = np.random.default_rng(seed)
        self.images = [lv for f in files for lv in [pyramid(f, areas_mp, tile)] if lv]

    def batch(self, n: int) -> torch.Tensor:
        out = np.empty((n, self.tile, self.tile, 3), np.uint8)
        for i in range(n):
            levels = self.images[self.rng.integers(len(self.images))]
            a = levels[self.rng.integers(len(levels))]
            y = self.rng.integers(a.shape[0] - self.tile + 1)
            x = self.rng.integers(a.shape[1] - self.tile + 1)
            c = a[y:y + self.tile, x:x + self.tile]
            out[i] = c[:, ::-1] if self.rng.random() < 0.5 else c
        return to_model_range(torch.from_numpy(out))


def to_model_range(tiles_u8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    return tiles_u8.permute(0, 3, 1, 2).float() / 127.5 - 1


class PatchDiscriminator(torch.nn.Module):
    """A small PatchGAN: one real/fake logit per ~30 px patch, GroupNorm (batch sizes are small on CPU)."""

    def __init__(self, width: int = 64, layers: int = 3):
        super().__init__()
        mods, c = [torch.nn.Conv2d(3, width, 4, 2, 1), torch.nn.LeakyReLU(0.2)], width
        for i in range(1, layers):
            nc = min(width * 2 ** i, 512)
            mods += [torch.nn.Conv2d(c, nc, 4, 2, 1), torch.nn.GroupNorm(8, nc), torch.nn.LeakyReLU(0.2)]
            c = nc
        mods.append(torch.nn.Conv2d(c, 1, 4, 1, 1))
        self.net = torch.nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def random_crop_pair(x: torch.Tensor, y: torch.Tensor, size: int, rng: np.random.Generator):
    """The same random size x size window of two batches (LPIPS on a crop costs a fraction)."""
    if size >= x.shape[-1]:
        return x, y
    i, j = (int(rng.integers(x.shape[-1] - size + 1)) for _ in range(2))
    return x[..., i:i + size, j:j + size], y[..., i:i + size, j:j + size]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two batches in [-1, 1], over 8-bit-rounded pixels."""
    qa = torch.round((a.clamp(-1, 1) + 1) * 127.5)
    qb = torch.round((b.clamp(-1, 1) + 1) * 127.5)
    mse = F.mse_loss(qa, qb).item()
    return 10 * math.log10(255 ** 2 / max(mse, 1e-10))


def split_photos(tc: dict) -> tuple[list[Path], list[Path]]:
    """(training photos, held-out photos): every `holdout_every`-th photo monitors training."""
    files = list_photos(tc["data"])
    held = files[:: tc["holdout_every"]]
    return [f for f in files if f not in held], held


def lr_at(step: int, tc: dict) -> float:
    warm, total = tc["warmup_steps"], tc["steps"]
    if step < warm:
        return tc["lr"] * (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    return tc["lr"] * (tc["final_lr_frac"] + (1 - tc["final_lr_frac"]) * 0.5 * (1 + math.cos(math.pi * t)))


def flatten_opt(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """An optimiser's per-parameter state as flat tensors for safetensors (no pickle)."""
    out = {}
    for i, st in opt.state_dict()["state"].items():
        out |= {f"opt.{i}.{k}": (v.reshape(-1) if v.dim() == 0 else v).detach().contiguous().clone()
                for k, v in st.items()}
    return out


def unflatten_opt(tensors: dict[str, torch.Tensor], opt: torch.optim.Optimizer) -> dict:
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v.reshape(()) if name == "step" else v
    return {"state": state, "param_groups": opt.state_dict()["param_groups"]}


def save_checkpoint(run: Path, model: Tokenizer, ema: Tokenizer, opt: torch.optim.Optimizer, step: int, cfg: dict):
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()} | flatten_opt(opt)
    tmp = run / "ckpt.safetensors.tmp"
    save_file(tensors, str(tmp))
    os.replace(tmp, run / "ckpt.safetensors")
    state = {"step": step, "config": cfg, "param_groups": opt.state_dict()["param_groups"]}
    (run / "state.json.tmp").write_text(json.dumps(state))
    os.replace(run / "state.json.tmp", run / "state.json")


def load_checkpoint(run: Path, model: Tokenizer, ema: Tokenizer, opt: torch.optim.Optimizer) -> int:
    state = json.loads((run / "state.json").read_text())
    t = load_file(str(run / "ckpt.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ema.")})
    opt.load_state_dict(unflatten_opt(t, opt) | {"param_groups": state["param_groups"]})
    return state["step"]


def save_snapshot(folder: Path, ema: Tokenizer, disc: torch.nn.Module | None, step: int, cfg: dict, log: Path,
                  prefixes: tuple[str, ...] = ()):
    """A compact copy of a run to commit, so a later checkout continues it: the EMA weights (only
    those starting with `prefixes` when given: a decoder-only run need not store the frozen encoder,
    which its `init` weights hold) and the discriminator in fp16, the step and config, and the log.
    The optimiser's moments are left out (they are 4x the weights); a resumed run rebuilds them
    during a short learning-rate re-warm-up (`resume_warmup` steps)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"ema.{k}": v.detach().half().contiguous().clone() for k, v in ema.state_dict().items()
               if not prefixes or k.startswith(prefixes)}
    if disc is not None:
        tensors |= {f"disc.{k}": v.detach().half().contiguous().clone() for k, v in disc.state_dict().items()}
    save_file(tensors, str(folder / "snapshot.safetensors.tmp"))
    os.replace(folder / "snapshot.safetensors.tmp", folder / "snapshot.safetensors")
    (folder / "state.json.tmp").write_text(json.dumps({"step": step, "config": cfg}, indent=1))
    os.replace(folder / "state.json.tmp", folder / "state.json")
    (folder / "log.jsonl.tmp").write_bytes(log.read_bytes())
    os.replace(folder / "log.jsonl.tmp", folder / "log.jsonl")


def lighter_start(model: Tokenizer, state: dict) -> tuple[dict, list[str]]:
    """(the `init` weights that fit `model`, the names of those that do not): for a decoder made lighter
    than its init's (fewer head channels), trained with the encoder frozen so that the tokens keep their
    meaning. Only decoder weights may change shape; the head's last layer starts at zero, so a refinement
    stage starts from the picture so far plus the init's coarse path."""
    own = model.state_dict()
    fresh = sorted(k for k in own if k not in state or state[k].shape != own[k].shape)
    dropped = [k for k in state if k not in own]  # e.g. the init's later decoder blocks
    changed = [k for k in fresh + dropped if not k.startswith(DECODER_PREFIXES)]
    if changed:
        raise SystemExit(f"init_lighter: {changed[0]} changes shape, but only the decoder may")
    last = model.head.detail[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    at_zero = {f"head.detail.{len(model.head.detail) - 1}.{p}" for p in ("weight", "bias")}
    return {k: v for k, v in state.items() if k in own and k not in fresh and k not in at_zero}, fresh


@torch.no_grad()
def shrunk_cond_start(model: Tokenizer, start: Tokenizer, samples: int = 64) -> float:
    """Start a decoder that sees the picture so far at the display size (`out_shrink`) from one that saw
    it enlarged to the coded size: its patch embedding, fitted by least squares to the init's embedding
    of the same pictures enlarged (bicubic, as the codec enlarges them: a linear map, exact up to
    rounding). Returns the fit's relative error."""
    s = model.cfg.out_shrink // start.cfg.out_shrink
    new, old = model.dec_cond, start.dec_cond
    g = torch.Generator().manual_seed(0)
    small = torch.rand(samples, 3, model.cfg.out_tile, model.cfg.out_tile, generator=g) - 0.5
    want = old(F.interpolate(small, scale_factor=s, mode="bicubic", align_corners=False)) - old.bias[:, None, None]
    pad = new.padding[0]
    cols = F.unfold(F.pad(small, (pad,) * 4, mode="replicate"), new.kernel_size, stride=new.stride)  # (N, 3*k*k, cells)
    a = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    b = want.flatten(2).transpose(1, 2).reshape(-1, want.shape[1])
    w = torch.linalg.lstsq(a, b).solution  # (3*k*k, width)
    new.weight.copy_(w.T.reshape(new.weight.shape))
    new.bias.copy_(old.bias)
    return float((a @ w - b).norm() / b.norm())


def load_snapshot(folder: Path, model: Tokenizer, ema: Tokenizer, disc: torch.nn.Module | None, run: Path) -> int:
    """Continue from a committed snapshot: model and EMA both start from its EMA weights (laid over the
    `init` weights they were loaded with, for a snapshot that holds only the decoder)."""
    t = load_file(str(folder / "snapshot.safetensors"))
    weights = {k[4:]: v.float() for k, v in t.items() if k.startswith("ema.")}
    full = model.state_dict() | weights
    model.load_state_dict(full)
    ema.load_state_dict(full)
    if disc is not None and any(k.startswith("disc.") for k in t):
        disc.load_state_dict({k[5:]: v.float() for k, v in t.items() if k.startswith("disc.")})
    if not (run / "log.jsonl").exists():
        (run / "log.jsonl").write_bytes((folder / "log.jsonl").read_bytes())
    return json.loads((folder / "state.json").read_text())["step"]


def snapshot_over_init(folder: Path, model: Tokenizer, init: dict) -> Tokenizer:
    """`model` holding a committed snapshot's EMA weights laid over its `init` weights, to read a decoder-only
    run outside training (export, held-out checks): the init gives the frozen encoder, of which a lighter
    decoder (`init_lighter`) takes only the weights it has."""
    own = model.state_dict()
    t = load_file(str(folder / "snapshot.safetensors"))
    model.load_state_dict({k: v for k, v in init.items() if k in own}
                          | {k[4:]: v.float() for k, v in t.items() if k.startswith("ema.")})
    return model


def init_distributed(device_type: str) -> tuple[int, int, str]:
    """(rank, world size, device): under torchrun (which sets RANK, WORLD_SIZE and LOCAL_RANK) one
    process per GPU over NCCL, or per share of the CPU over gloo; a plain process is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device_type
    device = device_type
    if device_type == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters and buffers: equal on every rank while DDP keeps them in step."""
    h = hashlib.sha256()
    for v in module.state_dict().values():
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def adaptive_weight(rec: torch.Tensor, adv: torch.Tensor, layer: torch.Tensor) -> float:
    """VQGAN's balance: the adversarial term's gradient at the last layer scaled to the
    reconstruction term's, so its weight means the same whatever the losses' scales."""
    g_rec = torch.autograd.grad(rec, layer, retain_graph=True)[0].norm()
    g_adv = torch.autograd.grad(adv, layer, retain_graph=True)[0].norm()
    return float((g_rec / (g_adv + 1e-4)).clamp(0, 1e4))


def draw_keep(n: int, lo: int, hi: int, short: list | None, device) -> torch.Tensor:
    """Tail-token drop: each row keeps k ~ U{lo..hi} tokens; with `short = [p, m]` a share p of the rows
    keeps k ~ U{lo..m} instead, for a model whose files mostly hold few tokens per tile (a small byte
    budget), so that the decoder's capacity goes where the files are."""
    keep = torch.randint(lo, hi + 1, (n,), device=device)
    if short:
        p, m = float(short[0]), int(short[1])
        few = torch.randint(lo, m + 1, (n,), device=device)
        keep = torch.where(torch.rand(n, device=device) < p, few, keep)
    return keep


class Refinement:
    """The inputs of a refinement stage: each source tile's picture so far, enlarged `scale` times
    with the tile, then one of the scale x scale tiles of both (the grid the stage's tiles fall on
    when the whole image is enlarged). The picture so far is the frozen `base` model's (decoded from
    a random number of its tokens), or with `base = "classic"` a classic codec's thumbnail: the tile
    shrunk by one of `shrink`, coded by one of the codecs `quality` names (Pillow) at a random quality in its range,
    decoded and enlarged back (Lanczos), as a file whose first layer is that thumbnail would show."""

    def __init__(self, rc: dict, tile: int, device, out_shrink: int = 1):
        self.scale, self.tile, self.out_shrink = int(rc["scale"]), tile, out_shrink
        if out_shrink not in (1, self.scale):
            raise SystemExit(f"out_shrink {out_shrink}: a stage draws at its coded size (1) or the display size "
                             f"({self.scale})")
        if rc["base"] == "classic":
            self.base = None
            self.shrink, self.quality = rc["shrink"], rc["quality"]  # quality: {codec: [lo, hi]}
            self.codecs = sorted(self.quality)
        else:
            from ..weights import load as load_shipped

            self.base = load_shipped(rc["base"]).tokenizer.to(device).eval().requires_grad_(False)
            self.lo, self.hi = rc["base_keep"]

    def classic_picture(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Each tile (in [-1, 1]) as a classic codec's thumbnail of it shows it, enlarged back."""
        from ..evaluation.classic import THUMBNAIL_CODECS, decode, shrink

        out = []
        for a in ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy():
            small = shrink(a, int(rng.choice(self.shrink)))
            codec = str(rng.choice(self.codecs))
            q = int(rng.integers(self.quality[codec][0], self.quality[codec][1] + 1))
            back = decode(THUMBNAIL_CODECS[codec].encode(small, q), a.shape[1], a.shape[0])
            out.append(torch.from_numpy(back.copy()).permute(2, 0, 1))
        return torch.stack(out).to(x.device).float() / 127.5 - 1

    @torch.no_grad()
    def pairs(self, x: torch.Tensor, rng: np.random.Generator | None, full: bool = False) -> tuple[torch.Tensor, ...]:
        """Source tiles (B, 3, T, T) -> (target tiles, picture-so-far tiles), both (B, 3, T, T), then the
        same two at the output size (the same tensors unless the model draws smaller: `out_shrink`, then
        the source's own cells, T / scale a side); `full`: the base keeps all its tokens (a classic base:
        a fixed draw) and the cells go round in order (the monitor)."""
        b = x.shape[0]
        if self.base is None:
            so_far = self.classic_picture(x, np.random.default_rng(0) if full else rng)
        else:
            k = self.base.cfg.tokens
            keep = torch.full((b,), k) if full else torch.from_numpy(rng.integers(self.lo, self.hi + 1, b))
            values, _ = self.base.encode_values(x)
            so_far = self.base.decode_values(values, keep.to(x.device)).clamp(-1, 1)
        cells = np.arange(b) % self.scale ** 2 if full else rng.integers(0, self.scale ** 2, b)
        out = []
        for a in (x, so_far):
            big = F.interpolate(a, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(-1, 1)
            out.append(self.cells_of(big, cells, self.tile))
        if self.out_shrink == 1:
            return out[0], out[1], out[0], out[1]
        return out[0], out[1], self.cells_of(x, cells, self.tile // self.scale), self.cells_of(so_far, cells, self.tile // self.scale)

    def cells_of(self, a: torch.Tensor, cells: np.ndarray, size: int) -> torch.Tensor:
        """Cell cells[i] (row-major on a scale x scale grid) of size x size pixels of each a[i]."""
        return torch.stack([a[i, :, (c // self.scale) * size:(c // self.scale + 1) * size,
                              (c % self.scale) * size:(c % self.scale + 1) * size] for i, c in enumerate(cells)])


@torch.no_grad()
def evaluate(model: Tokenizer, tiles: torch.Tensor, ks: list[int], lpips_vgg=None, judges: dict | None = None,
             perc_key: str = "lpips_vgg", cond: torch.Tensor | None = None, target: torch.Tensor | None = None,
             out_cond: torch.Tensor | None = None) -> dict:
    """PSNR (and LPIPS-VGG when a perceptual loss is on, and each judge metric, e.g. DISTS, that is
    only ever measured) at several prefix lengths, and how much of the codebook the held-out tiles
    use (FSQ has no codebook vectors to die, but a collapsed code distribution shows here).
    `target`, `out_cond`: the tiles and the picture so far at the display size, for a config whose
    model draws there (`out_shrink`); a model drawing at the coded size is then reduced to it
    (antialiased bicubic, near the codec's Lanczos), so both are judged on the same pixels."""
    model.eval()
    values, ids = model.encode_values(tiles, cond)
    target = tiles if target is None else target
    dec_cond = cond if model.cfg.out_shrink == 1 else out_cond
    out = {}
    for k in ks:
        y = model.decode_values(values[:, :k], cond=dec_cond)
        if y.shape[-1] != target.shape[-1]:
            y = F.interpolate(y, size=target.shape[-2:], mode="bicubic", align_corners=False, antialias=True)
        out[f"psnr@{k}"] = round(psnr(y, target), 3)
        a, b = (y.clamp(-1, 1) + 1) / 2, (target + 1) / 2
        if lpips_vgg is not None:
            out[f"{perc_key}@{k}"] = round(lpips_vgg(a, b).mean().item(), 4)
        for name, metric in (judges or {}).items():
            out[f"{JUDGE_KEYS.get(name, name)}@{k}"] = round(metric(a, b).mean().item(), 4)
    counts = torch.bincount(ids.flatten(), minlength=model.cfg.codebook_size).float()
    p = counts[counts > 0] / counts.sum()
    out["codes_used"] = int((counts > 0).sum())
    out["code_perplexity"] = round(float(torch.exp(-(p * p.log()).sum())), 1)
    model.train()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--run", "--run-dir", dest="run", required=True,
                    help="run folder: checkpoints and log.jsonl (--run-dir under torchrun, whose own "
                         "parser would take --run for its --run-path)")
    ap.add_argument("--snapshot", help="a committed folder the run continues from when --run is new, "
                                       "and where it writes a compact copy at every checkpoint")
    ap.add_argument("--threads", type=int, help="CPU threads per process (default: the cores shared "
                                                 "among torchrun's local processes)")
    ap.add_argument("--stop-after", type=float, help="stop at the first checkpoint after this many seconds")
    ap.add_argument("--monitor-only", metavar="MODEL",
                    help="print the monitor's figures for these shipped weights (e.g. the run's `init`) and exit")
    args = ap.parse_args(argv)

    cfg = tomllib.loads(Path(args.config).read_text())
    mc, tc = ModelConfig.from_dict(cfg["model"]), cfg["train"]
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    rank, world, device = init_distributed(device_type)
    lead = rank == 0  # logs, monitors and writes checkpoints
    if tc["batch"] % world:
        raise SystemExit(f"batch {tc['batch']} does not split evenly over {world} processes")
    batch = tc["batch"] // world
    torch.manual_seed(tc["seed"] + rank)  # every rank starts from rank 0's weights (broadcast below)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // local))
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    snapshot = Path(args.snapshot) if args.snapshot else None

    def rank_seed(*parts: int):  # one process keeps the seeds of the single-process recipe
        return sum(parts) if world == 1 else [*parts, rank]

    train_files, held = split_photos(tc)
    shard = train_files[rank::world]
    if not shard:
        raise SystemExit(f"{len(train_files)} training photos cannot feed {world} processes")
    if lead:
        print(f"{len(train_files)} training photos, {len(held)} held out for monitoring"
              + (f"; {world} processes, batch {batch} each" if world > 1 else ""), file=sys.stderr)
    sampler = CropSampler(shard, tc["areas_mp"], mc.tile, rank_seed(tc["seed"]))
    monitor = CropSampler(held, tc["areas_mp"], mc.tile, seed=1234).batch(tc["monitor_tiles"]).to(device) if lead else None

    lc = {"perceptual": 0.0, "perceptual_crop": 128, "adversarial": 0.0, "adv_start": 0, "disc_start": None,
          "disc_lr": 1e-4, "adaptive_adv": False, "adapt_every": 10, "freeze_encoder": False, "judges": [],
          "resume_warmup": 50, **cfg.get("loss", {})}
    model = Tokenizer(mc).to(device)
    resumable = (run / "state.json").exists()
    from_snapshot = not resumable and snapshot is not None and (snapshot / "state.json").exists()
    if tc.get("init") and not resumable:
        from ..weights import load as load_shipped

        start = load_shipped(tc["init"]).tokenizer
        new_stage = mc.conditioned and not start.cfg.conditioned  # a first-stage model made a refinement stage
        state, fresh = start.state_dict(), []
        if tc.get("init_lighter"):  # a lighter decoder: what this config resizes starts fresh
            state, fresh = lighter_start(model, state)
            if lead:
                print(f"started fresh (a new shape): {', '.join(fresh)}", file=sys.stderr)
        model.load_state_dict(state, strict=not (new_stage or fresh))
        if mc.out_shrink > start.cfg.out_shrink:
            shrunk_cond_start(model, start)
        if new_stage:  # a trained refinement stage (e.g. for a decoder fine-tune) keeps its conditioning
            model.start_as_identity()
        if lead:
            print(f"initialised from shipped weights {tc['init']}", file=sys.stderr)
    ema = Tokenizer(mc).to(device).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    disc = disc_opt = None
    if lc["adversarial"] > 0:
        disc = PatchDiscriminator().to(device)
        disc_opt = torch.optim.AdamW(disc.parameters(), lr=lc["disc_lr"], betas=(0.5, 0.9))
    rewarm_from = -1
    if from_snapshot:
        step = rewarm_from = load_snapshot(snapshot, model, ema, disc, run)
        if lead:
            print(f"continued from snapshot {snapshot} at step {step} (optimiser moments rebuilt)", file=sys.stderr)
    if lc["freeze_encoder"]:  # stage 2: the decoder learns, the tokens keep their meaning
        for name, prm in model.named_parameters():
            if not name.startswith(DECODER_PREFIXES):
                prm.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc["lr"], betas=(0.9, 0.99), weight_decay=tc["weight_decay"])
    if resumable:
        step = load_checkpoint(run, model, ema, opt)
        if lead:
            print(f"resumed at step {step}", file=sys.stderr)
        if disc is not None and (run / "disc.safetensors").exists():
            t = load_file(str(run / "disc.safetensors"))
            disc.load_state_dict({k: v for k, v in t.items() if not k.startswith("opt.")})
            if any(k.startswith("opt.") for k in t):
                disc_opt.load_state_dict(unflatten_opt(t, disc_opt))
    elif not from_snapshot:
        step = 0
    if step:
        sampler.rng = np.random.default_rng(rank_seed(tc["seed"], step))
    net, critic = model, disc  # what the steps call: wrapped in DDP when there are several processes
    if world > 1:  # DDP broadcasts rank 0's model and discriminator; the EMA follows by hand
        for v in ema.state_dict().values():
            dist.broadcast(v, 0)
        net = torch.nn.parallel.DistributedDataParallel(model)
        critic = torch.nn.parallel.DistributedDataParallel(disc) if disc is not None else None
    lpips_vgg, perc_key = None, "lpips_vgg"
    if lc["perceptual"] > 0 and lc.get("perceptual_weights"):  # the compact partial LPIPS a GPU run carries
        from .gpu import PartialLPIPS

        lpips_vgg, perc_key = PartialLPIPS(lc["perceptual_weights"]).to(device), "lpips_vgg3"
    elif lc["perceptual"] > 0:
        from ..evaluation.perceptual import get as get_metric

        lpips_vgg = get_metric("vgg", device)
    judges = {}
    if lc["judges"]:  # measured on the monitor only, never a loss (DISTS judges the codec)
        from ..evaluation.perceptual import get as get_metric

        judges = {name: get_metric(name, device) for name in lc["judges"]}
    refine = Refinement(cfg["refine"], mc.tile, device, mc.out_shrink) if mc.conditioned else None
    monitor_cond = monitor_target = monitor_out_cond = None
    if refine is not None and lead:
        monitor, monitor_cond, monitor_target, monitor_out_cond = refine.pairs(monitor, None, full=True)
    watch = dict(cond=monitor_cond, target=monitor_target, out_cond=monitor_out_cond)
    if args.monitor_only:  # the same crops and metrics as the run's monitor, for a step-0 reference
        from ..weights import load as load_shipped

        if lead:
            ref = load_shipped(args.monitor_only).tokenizer.to(device)
            print(json.dumps({"model": args.monitor_only, "eval": "held-out train crops",
                              **evaluate(ref, monitor, tc["monitor_ks"], lpips_vgg, judges, perc_key, **watch)}))
        return
    disc_start = lc["adv_start"] if lc["disc_start"] is None else lc["disc_start"]
    last_layer = model.head.detail[-1].weight
    adv_scale = 1.0
    crop_rng = np.random.default_rng(rank_seed(tc["seed"] + 7, step))

    log = (run / "log.jsonl").open("a") if lead else None
    t0, seen = time.time(), 0
    while step < tc["steps"]:
        lr = lr_at(step, tc)
        if rewarm_from >= 0 and step < rewarm_from + lc["resume_warmup"]:
            lr *= (step - rewarm_from + 1) / lc["resume_warmup"]
        for g in opt.param_groups:
            g["lr"] = lr
        x, cond = sampler.batch(batch).to(device), None
        out_cond = None
        if refine is not None:
            x, cond, target, out_cond = refine.pairs(x, crop_rng)
        keep = draw_keep(x.shape[0], 0 if refine else 1, mc.tokens, tc.get("short_keep"), device)
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=tc["bf16"]):
            y, _ = net(x, keep, cond, out_cond)
        y = y.float()
        if refine is not None:  # the loss and the critic judge the output size's pixels
            x = target
        loss = mse = F.mse_loss(y, x)
        rec = {}
        if lpips_vgg is not None:
            a, b = random_crop_pair((y.clamp(-1, 1) + 1) / 2, (x + 1) / 2, lc["perceptual_crop"], crop_rng)
            perc = lpips_vgg(a, b).mean()
            loss = loss + lc["perceptual"] * perc
            rec[perc_key] = round(perc.item(), 4)
        adv_on = disc is not None and step >= lc["adv_start"]
        if adv_on:
            disc.requires_grad_(False)  # the generator's step leaves the critic's gradients alone
            g_adv = -disc(y).mean()  # hinge generator loss
            if lc["adaptive_adv"] and (step - lc["adv_start"]) % lc["adapt_every"] == 0:
                adv_scale = adaptive_weight(loss, g_adv, last_layer)
                if world > 1:  # one scale for all ranks: the mean of theirs
                    s = torch.tensor([adv_scale], dtype=torch.float64, device=device)
                    dist.all_reduce(s)
                    adv_scale = float(s.item()) / world
            loss = loss + lc["adversarial"] * adv_scale * g_adv
            rec["g_adv"] = round(g_adv.item(), 4)
            rec["adv_scale"] = round(adv_scale, 4)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, tc["clip"])
        opt.step()
        if disc is not None and step >= disc_start:
            disc.requires_grad_(True)
            real, fake = critic(torch.cat([x, y.detach()])).split(x.shape[0])  # one pass: one DDP sync
            d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
            disc_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            disc_opt.step()
            rec["d_loss"] = round(d_loss.item(), 4)
            rec["d_real"], rec["d_fake"] = round(real.mean().item(), 3), round(fake.mean().item(), 3)
        with torch.no_grad():
            d = tc["ema"] if step > tc["warmup_steps"] else 0.0
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
        step += 1
        seen += x.shape[0] * world
        if step % tc["log_every"] == 0 and lead:
            rec = {"step": step, "loss": round(loss.item(), 5), "mse": round(mse.item(), 5), **rec,
                   "grad_norm": round(gn.item(), 3), "lr": lr, "tiles_per_s": round(seen / (time.time() - t0), 2)}
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if step % tc["ckpt_every"] == 0 or step == tc["steps"]:
            agree = {}
            if world > 1:  # DDP keeps every rank's weights equal: check it where it matters
                digests = [None] * world
                dist.all_gather_object(digests, weights_digest(model) + weights_digest(ema))
                agree = {"world": world, "ranks_agree": len(set(digests)) == 1}
            stop = bool(args.stop_after and time.time() - t0 > args.stop_after)
            if world > 1:  # rank 0's clock decides for all
                flag = torch.tensor([float(stop)], device=device)
                dist.broadcast(flag, 0)
                stop = bool(flag.item())
            if not lead:
                if stop:
                    break
                continue
            rec = {"step": step, "eval": "held-out train crops",
                   **evaluate(ema, monitor, tc["monitor_ks"], lpips_vgg, judges, perc_key, **watch),
                   "wall_s": round(time.time() - t0, 1), **agree}
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), file=sys.stderr)
            save_checkpoint(run, model, ema, opt, step, cfg)
            if disc is not None:
                t = {k: v.contiguous() for k, v in disc.state_dict().items()} | flatten_opt(disc_opt)
                save_file(t, str(run / "disc.safetensors.tmp"))
                os.replace(run / "disc.safetensors.tmp", run / "disc.safetensors")
            if snapshot is not None:
                save_snapshot(snapshot, ema, disc, step, cfg, run / "log.jsonl",
                              DECODER_PREFIXES if lc["freeze_encoder"] else ())
            if stop:
                break
    if log is not None:
        log.close()
    if world > 1:
        dist.barrier()  # no rank leaves while rank 0 still writes the last checkpoint
        dist.destroy_process_group()
        # gloo's worker threads can still hold tensors when the interpreter tears down, which aborts
        # (SIGABRT, "terminate called without an active exception") now and then: all is written, so
        # leave without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
