"""One run of the perceptual-decoder training on a lent GPU (issue 24), sized for the device tool.

A lent H200 gives 15 minutes in all, and what travels there is the repository's tree plus carried
folders, 64 MiB together (the tree alone is about 56 MiB). So the run continues the committed
snapshot (codec/training/snapshots/odp-small-v3) with what fits in .gpu/ (git-ignored):

- the training photos, each at most 0.25 MP, as WebP (the same names, so the same held-out split);
- LPIPS-VGG's first three layers (relu1_2 .. relu3_3) with their linear heads, conv weights in int8
  per output channel (1.8 MB instead of VGG16's 59 MB): the perceptual loss of the GPU run, logged
  as lpips_vgg3 (the monitor's full LPIPS-VGG and DISTS need weights that cannot travel).

Here, once:   python -m odp.codec.training.gpu pack
Then:         device run, carry [".gpu"], command "sh codec/training/gpu.sh" (it writes the snapshot,
              its log and the GPU's name to $OUT); copy $OUT/snapshot over the committed snapshot and
              remove runs/v3, so the CPU run continues from it.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ..evaluation import perceptual
from .train import list_photos

PACK = Path(".gpu")
MAX_AREA = 0.25e6     # pixels per carried photo
LAYERS = 3            # LPIPS-VGG taps kept: relu1_2, relu2_2, relu3_3


def pack(folders: list[str], out: Path = PACK, quality: int = 85) -> int:
    """Write the compact photos and the int8 partial LPIPS-VGG to `out`; returns the bytes written."""
    photos = out / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    total = 0
    for path in list_photos(folders):
        im = Image.open(path).convert("RGB")
        s = min(1.0, math.sqrt(MAX_AREA / (im.width * im.height)))
        if s < 1:
            im = im.resize((round(im.width * s), round(im.height * s)), Image.LANCZOS)
        dst = photos / (path.stem + ".webp")
        im.save(dst, "WEBP", quality=quality, method=6)
        total += dst.stat().st_size
    vgg = perceptual._tensors(perceptual.metrics_dir(), "vgg16.safetensors")
    lins = perceptual._tensors(perceptual.metrics_dir(), "lpips_vgg.safetensors")
    last = perceptual.VGG16_TAPS[LAYERS - 1]
    tensors = {}
    for name, t in vgg.items():
        if int(name.split(".")[1]) > last:
            continue
        if name.endswith("weight"):  # symmetric int8 per output channel
            scale = t.abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / 127
            tensors[name + ".q"] = torch.round(t / scale[:, None, None, None]).to(torch.int8)
            tensors[name + ".scale"] = scale.float()
        else:
            tensors[name] = t.float()
    tensors |= {f"lin{k}": lins[f"lin{k}"].float() for k in range(LAYERS)}
    save_file(tensors, str(out / "lpips-vgg3.safetensors"), metadata={"layers": str(LAYERS)})
    return total + (out / "lpips-vgg3.safetensors").stat().st_size


class PartialLPIPS(perceptual.LPIPS):
    """LPIPS-VGG over its first taps only, from pack()'s compact file: a perceptual loss that travels."""

    def __init__(self, path: str | Path):
        torch.nn.Module.__init__(self)
        t = load_file(str(path))
        layers = sum(1 for k in t if k.startswith("lin"))
        self.net = perceptual.Backbone("vgg")
        self.net.features = self.net.features[: perceptual.VGG16_TAPS[layers - 1] + 1]
        state = {k[:-2]: (t[k].float() * t[k[:-2] + ".scale"][:, None, None, None]) for k in t if k.endswith(".q")}
        state |= {k: v for k, v in t.items() if k.startswith("features.") and k.endswith("bias")}
        self.net.load_state_dict(state)
        self.lins = torch.nn.ParameterList([torch.nn.Parameter(t[f"lin{k}"].clone()) for k in range(layers)])
        self.register_buffer("shift", torch.tensor(perceptual.LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(perceptual.LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Pack what a GPU training run carries (.gpu/).")
    ap.add_argument("command", choices=["pack"])
    ap.add_argument("--config", default="codec/training/configs/odp-small-v3.toml",
                    help="the CPU run's config: its data folders are packed")
    ap.add_argument("--out", type=Path, default=PACK)
    args = ap.parse_args(argv)
    import tomllib

    folders = tomllib.loads(Path(args.config).read_text())["train"]["data"]
    n = pack(folders, args.out)
    print(json.dumps({"packed_bytes": n, "photos": len(list((args.out / "photos").iterdir())),
                      "folder": str(args.out)}), file=sys.stderr)


if __name__ == "__main__":
    main()
