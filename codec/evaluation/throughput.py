"""Encoding throughput in MP/s on a device, for one photo and for a batch of photos, and whether the files
equal the CPU path's.

    python -m odp.codec.evaluation.throughput ../shared/data/eval/photos --device cuda --out throughput.json

Four measures per device, each after a warm-up, medians of `--repeats`: the default encoder on the
first photo (`odp.encode`, allocation and all), the default encoder over every photo one after another,
`odp.encode_batch` over every photo (the same files, tiles of all photos batched through the network:
what `odp encode a.png b.png ... -o out/` runs), and `encode_batch(adaptive=False)` (uniform files: no
allocation, the fastest path). With `--check-cpu` the batch's files are also made on the CPU and
compared byte for byte (the CPU's ONNX graphs multiply in 8 bits, so a few tokens in a hundred differ
by one FSQ level; the count of differing files is reported, and every file is checked to decode). The script for a lent GPU
(docs/training.md): it needs torch with CUDA, and prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from PIL import Image

import odp

from ..imaging import IMAGE_SUFFIXES


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: sessions, CUDA kernels, caches
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def measure(folder: Path, device: str, repeats: int, limit: int, check_cpu: bool) -> dict:
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    images = [Image.open(p).convert("RGB") for p in paths]
    mp = [im.width * im.height / 1e6 for im in images]
    one = timed(lambda: odp.encode(images[0], device=device), repeats)
    each = timed(lambda: [odp.encode(im, device=device) for im in images], repeats)
    batch = timed(lambda: odp.encode_batch(images, device=device), repeats)
    uniform = timed(lambda: odp.encode_batch(images, device=device, adaptive=False), repeats)
    out = {"device": device, "photos": len(images), "megapixels": round(sum(mp), 3),
           "one_photo_mp_per_s": mp[0] / one, "default_encoder_mp_per_s": sum(mp) / each,
           "encode_batch_mp_per_s": sum(mp) / batch, "uniform_batch_mp_per_s": sum(mp) / uniform}
    if check_cpu:
        files = odp.encode_batch(images, device=device)
        cpu = odp.encode_batch(images, device="cpu")
        out["files_differing_from_cpu"] = sum(a != b for a, b in zip(files, cpu))
        out["files_decoding"] = sum(odp.decode(f, device="cpu").size == im.size for f, im in zip(files, images))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=1000, help="at most this many photos")
    ap.add_argument("--check-cpu", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    doc = measure(args.folder, args.device, args.repeats, args.limit, args.check_cpu)
    text = json.dumps(doc, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
