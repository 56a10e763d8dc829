"""One training run on a lent GPU, sized for the device tool (docs/training.md, "On a lent GPU").

A lent H200 gives 15 minutes in all, and what travels there is the repository's tree plus carried
folders, 64 MiB together. The tracked tree is far larger (every shipped model, the committed training
snapshots, the results' raw points), so before a device run `slim` takes out of git's index (and ignores,
in .git/info/exclude) the heavy files the run does not need, and `restore` puts them back after; the
files themselves never move. What the run needs and the tree cannot hold goes in .gpu/ (git-ignored):

- the training photos, each at most 0.25 MP, as WebP (the same names, so the same held-out split);
- LPIPS-VGG's first three layers (relu1_2 .. relu3_3) with their linear heads, conv weights in int8
  per output channel (1.8 MB instead of VGG16's 59 MB): the perceptual loss of the GPU run, logged
  as lpips_vgg3 (the monitor's full LPIPS-VGG and DISTS need weights that cannot travel);
- the wheels of the runtime dependencies the device's Python lacks (constriction, for the throughput
  check's files).

Here:   python -m odp.codec.training.gpu pack            (once)
        python -m odp.codec.training.gpu slim            (checks that what travels fits)
Then:   device run, carry [".gpu"], command "sh codec/training/gpu.sh" (docs/training.md)
Here:   python -m odp.codec.training.gpu restore         (before any commit)
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ..evaluation import perceptual
from .train import list_photos

PACK = Path(".gpu")
TRAVEL_LIMIT = 64 * 2 ** 20  # the device tool's limit on the tree and carried folders together
# Tracked folders of heavy files, each file named by the model it belongs to (a snapshot's files by their
# folder, as snapshot/NAME): a slim tree keeps only those the run needs. Nothing else is heavy (5 MB in all).
HEAVY = ("codec/weights/", "entropy/weights/", "codec/training/snapshots/", "docs/results/")
# What gpu.sh needs: the refinement run's init and base model, and the context models that odp.encode
# (the throughput check) codes their tokens with.
KEEP = ("odp-small-v3", "odp-refine-x2-v4", "ctx16d-v1", "ctx16d-refine-v2")
WHEELS = ("constriction==0.5.0",)  # runtime dependencies the device's Python lacks (KINDS.md's list)
SLIM_MARK = "# gpu slim: out of the index until `python -m odp.codec.training.gpu restore`"
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


def download_wheels(out: Path = PACK, wheels=WHEELS) -> list[Path]:
    """The device's wheels of `wheels` (CPython 3.12, manylinux x86-64, no dependencies) in out/wheels."""
    folder = out / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [a for n in ("manylinux_2_28", "manylinux_2_17", "manylinux2014") for a in ("--platform", n + "_x86_64")]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(folder), *wheels],
                   check=True)
    return sorted(folder.glob("*.whl"))


def _git(root: Path, *args: str, stdin: str | None = None) -> str:
    """git's output; its own message, on one line, if it fails."""
    r = subprocess.run(["git", "--literal-pathspecs", "-C", str(root), *args], input=stdin, capture_output=True,
                       text=True)
    if r.returncode:
        raise SystemExit(f"git {args[0]}: {(r.stderr.strip().splitlines() or ['failed'])[0]}")
    return r.stdout


def travelling(root: Path) -> dict[str, int]:
    """Bytes of each file the device tool sends from `root`: tracked, and untracked but not ignored."""
    out = {}
    for name in _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0"):
        path = root / name
        if name and path.is_file() and not path.is_symlink():
            out[name] = path.stat().st_size
    return out


def _owner(path: str) -> str | None:
    """What a heavy file belongs to: its model (its name up to the first dot) or snapshot/NAME; None for
    a file outside HEAVY."""
    for folder in HEAVY:
        if path.startswith(folder):
            name = path[len(folder):].split("/")[0].split(".")[0]
            return "snapshot/" + name if folder.endswith("snapshots/") else name
    return None


def slim_plan(files: dict[str, int], keep=KEEP) -> list[str]:
    """The heavy files of `files` that belong to none of `keep`."""
    owners = {p: _owner(p) for p in files}
    return sorted(p for p, owner in owners.items() if owner is not None and owner not in keep)


def _exclude_file(root: Path) -> Path:
    return root / _git(root, "rev-parse", "--git-path", "info/exclude").strip()


def slim(root: Path = Path("."), keep=KEEP, carry=(PACK,)) -> tuple[int, int]:
    """Take slim_plan's files out of git's index and ignore them, so the device tool leaves them here;
    (files taken out, bytes that travel with `carry`). Refused when already slim or still too large."""
    exclude = _exclude_file(root)
    if exclude.is_file() and SLIM_MARK in exclude.read_text():
        raise SystemExit("the tree is already slim: `python -m odp.codec.training.gpu restore` first")
    files = travelling(root)
    drop = slim_plan(files, keep)
    carried = sum(f.stat().st_size for c in carry if (root / c).is_dir() for f in (root / c).rglob("*") if f.is_file())
    dropped = set(drop)
    size = sum(n for p, n in files.items() if p not in dropped) + carried
    if size > TRAVEL_LIMIT:
        raise SystemExit(f"{size / 2 ** 20:.1f} MiB would travel even slim (limit {TRAVEL_LIMIT / 2 ** 20:.0f} MiB)")
    if drop:
        _git(root, "rm", "-q", "--cached", "--pathspec-from-file=-", "--pathspec-file-nul", stdin="\0".join(drop))
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with exclude.open("a") as f:
        f.write("\n".join([SLIM_MARK] + ["/" + p for p in drop] + [SLIM_MARK, ""]))
    return len(drop), size


def restore(root: Path = Path(".")) -> int:
    """Undo slim(): its files back in the index as the last commit has them, and no longer ignored."""
    exclude = _exclude_file(root)
    lines = exclude.read_text().splitlines() if exclude.is_file() else []
    if SLIM_MARK not in lines:
        return 0
    first = lines.index(SLIM_MARK)
    last = lines.index(SLIM_MARK, first + 1)
    paths = [line[1:] for line in lines[first + 1:last]]
    if paths:  # first the index, so a failure leaves the record of what to restore
        _git(root, "reset", "-q", "--pathspec-from-file=-", "--pathspec-file-nul", stdin="\0".join(paths))
    exclude.write_text("".join(line + "\n" for line in lines[:first] + lines[last + 1:]))
    return len(paths)


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
    ap = argparse.ArgumentParser(description="Prepare a GPU training run: pack .gpu/, slim the tree, restore it.")
    ap.add_argument("command", choices=["pack", "slim", "restore"])
    ap.add_argument("--config", default="codec/training/configs/odp-refine-x2-perc.toml",
                    help="pack: the CPU run's config, whose data folders are packed")
    ap.add_argument("--out", type=Path, default=PACK)
    ap.add_argument("--keep", action="append", default=[], metavar="NAME",
                    help="slim: keep this model's or snapshot's files too (snapshot/NAME: a snapshot that "
                         "gpu.sh is to continue)")
    args = ap.parse_args(argv)
    if args.command == "slim":
        n, size = slim(keep=KEEP + tuple(args.keep), carry=(args.out,))
        print(f"{n} heavy files out of the index; {size / 2 ** 20:.1f} MiB travel with {args.out}/. "
              "Restore before any commit: python -m odp.codec.training.gpu restore", file=sys.stderr)
        return
    if args.command == "restore":
        print(f"{restore()} files back in the index", file=sys.stderr)
        return
    import tomllib

    folders = tomllib.loads(Path(args.config).read_text())["train"]["data"]
    n = pack(folders, args.out)
    wheels = download_wheels(args.out)
    print(json.dumps({"packed_bytes": n, "photos": len(list((args.out / "photos").iterdir())),
                      "wheels": [w.name for w in wheels], "folder": str(args.out)}), file=sys.stderr)


if __name__ == "__main__":
    main()
