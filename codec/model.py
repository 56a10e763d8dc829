"""The ODP tokenizer: one 256x256 tile <-> an ordered sequence of discrete tokens.

A TiTok / One-D-Piece style 1D tokenizer. The encoder is a transformer over
[image patches + K learned latent tokens]; the latent outputs are quantised with
FSQ into ids of a 4096-code alphabet. The decoder is a transformer over
[one learned query per patch + the first k tokens] followed by a convolutional
upsampling head. Training drops a random tail of the tokens (`keep` below), so
every prefix of the sequence decodes to a sensible tile.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .registry import draws_whole_patches


@dataclass(frozen=True)
class ModelConfig:
    tile: int = 256            # pixels per tile side
    patch: int = 16            # pixels per patch side (tile/patch = grid side)
    tokens: int = 256          # K, tokens per tile
    width: int = 256           # transformer width
    enc_layers: int = 4
    dec_layers: int = 4
    heads: int = 4
    levels: tuple[int, ...] = (8, 8, 8, 8)       # FSQ levels -> 8**4 = 4096 codes
    head_channels: tuple[int, ...] = (128, 64, 32, 16)  # conv head, one stage per 2x
    conditioned: bool = False  # a refinement stage: both halves also see the picture so far (below)
    out_shrink: int = 1        # the decoder draws the tile this many times smaller per side (below)

    @property
    def grid(self) -> int:
        return self.tile // self.patch

    @property
    def out_tile(self) -> int:
        """Pixels per side of a decoded tile: a refinement stage coded at 2x with `out_shrink = 2`
        draws its tiles at the display size itself, skipping the head's costliest stage and the
        reduction a picture coded larger needs."""
        return self.tile // self.out_shrink

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["levels"] = tuple(d["levels"])
        d["head_channels"] = tuple(d["head_channels"])
        return cls(**d)


class FSQ(nn.Module):
    """Finite scalar quantisation: each of len(levels) dims is rounded to one of L values.

    Chosen over a learned VQ codebook because it has no codebook to collapse, needs no
    commitment loss or dead-code re-seeding, and trains stably from the first step,
    which matters for short CPU training runs.
    """

    def __init__(self, levels: tuple[int, ...]):
        super().__init__()
        lv = torch.tensor(levels, dtype=torch.long)
        basis = torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), lv[:-1]]), 0)
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (..., D) -> (values in [-1, 1] with straight-through gradient, ids (...))."""
        lv = self.levels.to(torch.float32)
        x = torch.sigmoid(z.float()) * lv - 0.5                 # in [-0.5, L-0.5]
        digits = torch.minimum(torch.round(x).clamp_min(0), lv - 1)  # sigmoid can round to 0 or 1 exactly
        q = x + (digits - x).detach()                           # straight-through rounding
        ids = (digits.long() * self.basis).sum(-1)
        return self.digits_to_values(q), ids

    def digits_to_values(self, digits: torch.Tensor) -> torch.Tensor:
        return digits / (self.levels - 1) * 2 - 1

    def ids_to_values(self, ids: torch.Tensor) -> torch.Tensor:
        digits = (ids.unsqueeze(-1) // self.basis) % self.levels
        return self.digits_to_values(digits.float())


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, rows: slice | None = None) -> torch.Tensor:
        """`rows`: only these rows' outputs are wanted (the last block of a stack whose other rows are
        dropped): the rest still give keys and values, but skip the projection and MLP after attention."""
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if rows is not None:
            q, x = q[:, :, rows], x[:, rows]
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(a.transpose(1, 2).reshape(b, x.shape[1], c))
        return x + self.mlp(self.norm2(x))


class ResBlock(nn.Module):
    """Pre-norm residual conv block: keeps signal and gradient scale through the deep head."""

    def __init__(self, ch: int):
        super().__init__()
        self.net = nn.Sequential(nn.GroupNorm(min(8, ch // 4), ch), nn.GELU(), nn.Conv2d(ch, ch, 3, padding=1),
                                 nn.GroupNorm(min(8, ch // 4), ch), nn.GELU(), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class UpHead(nn.Module):
    """Convolutional upsampling head: (B, width, g, g) -> (B, 3, tile, tile).

    A coarse path (1x1 conv to a 4x-per-side RGB image, bilinearly upsampled) carries
    the low frequencies straight from the transformer, so the codes are useful from the
    first steps; residual conv stages at 2x, 4x, ... add the detail on top.
    """

    def __init__(self, width: int, channels: tuple[int, ...], patch: int):
        super().__init__()
        assert 2 ** len(channels) == patch >= 4, "one 2x stage per factor of two in the (output) patch size"
        self.patch = patch
        self.coarse = nn.Conv2d(width, 3 * 16, 1)
        layers: list[nn.Module] = [nn.Conv2d(width, channels[0], 3, padding=1)]
        prev = channels[0]
        for ch in channels:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(prev, ch, 3, padding=1), ResBlock(ch)]
            prev = ch
        layers += [nn.GroupNorm(min(8, prev // 4), prev), nn.GELU(), nn.Conv2d(prev, 3, 3, padding=1)]
        self.detail = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coarse = F.interpolate(F.pixel_shuffle(self.coarse(x), 4), scale_factor=self.patch // 4,
                               mode="bilinear", align_corners=False)
        return coarse + self.detail(x)


def coarse_to_fine_order(grid: int) -> torch.Tensor:
    """Patch index anchoring each token: bit-reversed Z-order over the patch grid.

    The first 4 anchors fall in the 4 quadrants, the first 16 in 16 different
    quarter-quadrants, and so on: any prefix is an even sampling of the tile.
    """
    bits = int(math.log2(grid))
    assert 2 ** bits == grid, "grid side must be a power of two"

    def z(r: int, c: int) -> int:
        return sum((((r >> b) & 1) << (2 * b + 1)) | (((c >> b) & 1) << (2 * b)) for b in range(bits))

    def rev(v: int) -> int:
        return int(format(v, f"0{2 * bits}b")[::-1], 2)

    cells = sorted(((r, c) for r in range(grid) for c in range(grid)), key=lambda rc: rev(z(*rc)))
    return torch.tensor([r * grid + c for r, c in cells])


class Tokenizer(nn.Module):
    """Tiles in [-1, 1] (B, 3, T, T) <-> token ids (B, K) in [0, codebook_size).

    Each latent token is anchored to one patch (coarse_to_fine_order): the encoder adds
    that patch's embedding to the token's input and the decoder adds the token's code
    to that patch's query. Attention still lets every token carry information about the
    whole tile; the anchors give the model a spatial start that a short CPU training
    run can learn from, and make every prefix an even sampling of the tile.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        w, n, k = cfg.width, cfg.grid ** 2, cfg.tokens
        dim = len(cfg.levels)
        assert k <= n, "each token needs its own anchor patch"
        self.register_buffer("anchor", coarse_to_fine_order(cfg.grid)[:k], persistent=False)
        # encoder
        self.patch_embed = nn.Conv2d(3, w, cfg.patch, stride=cfg.patch)
        self.enc_patch_pos = nn.Parameter(torch.randn(1, n, w) * 0.02)
        self.enc_latents = nn.Parameter(torch.randn(1, k, w) * 0.02)
        self.enc_blocks = nn.ModuleList(Block(w, cfg.heads) for _ in range(cfg.enc_layers))
        self.enc_norm = nn.LayerNorm(w)
        self.to_code = nn.Linear(w, dim)
        self.fsq = FSQ(cfg.levels)
        # decoder
        self.from_code = nn.Linear(dim, w)
        self.dec_latent_pos = nn.Parameter(torch.randn(1, k, w) * 0.02)
        self.dec_queries = nn.Parameter(torch.randn(1, n, w) * 0.02)
        self.dec_blocks = nn.ModuleList(Block(w, cfg.heads) for _ in range(cfg.dec_layers))
        self.dec_norm = nn.LayerNorm(w)
        out_patch = cfg.patch // cfg.out_shrink
        assert draws_whole_patches(cfg.to_dict()), "out_shrink needs a conditioned model and a whole output patch"
        self.head = UpHead(w, cfg.head_channels, out_patch)
        if cfg.conditioned:  # the picture so far, patch-embedded into the encoder's patches and the decoder's queries
            self.enc_cond = nn.Conv2d(3, w, cfg.patch, stride=cfg.patch)
            # the decoder's is at the output size; a smaller output's sees a 2-pixel border too, as the
            # coded size's picture (enlarged bicubically) carried its neighbours into each patch, and
            # repeats the tile's edge beyond it, as bicubic enlarging does
            edge = 2 if cfg.out_shrink > 1 else 0
            self.dec_cond = nn.Conv2d(3, w, out_patch + 2 * edge, stride=out_patch, padding=edge,
                                      padding_mode="replicate" if edge else "zeros")

    def start_as_identity(self) -> None:
        """A refinement stage made from a trained tokenizer starts by returning the picture so far:
        its conditioning paths and its head's last layers at zero, so every token can only add."""
        for m in (self.enc_cond, self.dec_cond, self.head.coarse, self.head.detail[-1]):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # -- encoder ---------------------------------------------------------
    def encode_values(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tiles -> (quantised code values (B, K, D), ids (B, K)); `cond`: the picture so far (refinement)."""
        b, n = x.shape[0], self.cfg.grid ** 2
        p = self.patch_embed(x).flatten(2).transpose(1, 2) + self.enc_patch_pos
        if self.cfg.conditioned:
            p = p + self.enc_cond(cond).flatten(2).transpose(1, 2)
        h = torch.cat([p, self.enc_latents + p[:, self.anchor]], 1)
        for i, blk in enumerate(self.enc_blocks):
            h = blk(h, rows=slice(n, None) if i == len(self.enc_blocks) - 1 else None)
        z = self.to_code(self.enc_norm(h))
        return self.fsq(z)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.encode_values(x, cond)[1]

    # -- decoder ---------------------------------------------------------
    def decode_values(self, values: torch.Tensor, keep: torch.Tensor | None = None,
                      cond: torch.Tensor | None = None) -> torch.Tensor:
        """Code values (B, k, D) of positions 0..k-1 -> tiles (B, 3, T, T).

        keep (B,) optionally keeps only the first keep[i] tokens of row i (tail drop);
        dropped tokens are masked out of attention, equivalent to passing fewer tokens.
        A refinement stage adds what it decodes to `cond`, the picture so far, at the output size
        (cfg.out_tile: the coded tile's size unless `out_shrink`).
        """
        b, k = values.shape[:2]
        n, g = self.cfg.grid ** 2, self.cfg.grid
        code = self.from_code(values)
        mask = None
        if keep is not None:
            kept = torch.arange(k, device=values.device)[None] < keep[:, None]
            code = code * kept[..., None].to(code.dtype)
            mask = torch.cat([torch.ones_like(kept[:, :1]).expand(b, n), kept], 1)[:, None, None, :]
        queries = self.dec_queries.expand(b, -1, -1).to(code.dtype).index_add(1, self.anchor[:k], code)
        if self.cfg.conditioned:
            queries = queries + self.dec_cond(cond).flatten(2).transpose(1, 2).to(code.dtype)
        h = torch.cat([queries, code + self.dec_latent_pos[:, :k]], 1)
        for i, blk in enumerate(self.dec_blocks):
            h = blk(h, mask, rows=slice(0, n) if i == len(self.dec_blocks) - 1 else None)
        h = self.dec_norm(h).transpose(1, 2).reshape(b, -1, g, g)
        return self.head(h) + cond if self.cfg.conditioned else self.head(h)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, k) with 1 <= k <= K (0 <= k for a refinement stage) -> tiles in [-1, 1]."""
        return self.decode_values(self.fsq.ids_to_values(ids), cond=cond).clamp(-1, 1)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                out_cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`out_cond`: the picture so far at the output size, where it is not the coded size (`out_shrink`)."""
        values, ids = self.encode_values(x, cond)
        return self.decode_values(values, keep, cond if out_cond is None else out_cond), ids
