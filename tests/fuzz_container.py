"""Long fuzz run of the .odp parser (container.read, header validation included) on mutated real files.

    nice -n 10 python tests/fuzz_container.py --runs 1000000           # atheris, coverage-guided, if installed
    nice -n 10 python tests/fuzz_container.py --runs 1000000 --plain   # plain mutation loop, no coverage

Seeds are .odp files encoded from tests/data photos (made once, in a subprocess, into --corpus). Half of
the mutated inputs get their CRCs recomputed, so that mutations reach the header fields and chunk framing
behind the checksums. Any exception but FormatError, a case over 5 s or RSS over 1 GiB is a finding:
atheris writes it as crash-*/timeout-*/oom-*, the plain loop into CORPUS/crashes. Not part of CI
(tests/test_fuzz.py is the short run); figures in docs/security.md.
"""
from __future__ import annotations

import argparse
import random
import resource
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

HERE = Path(__file__).parent
MAGIC_LEN = 8


def make_seeds(corpus: Path) -> None:
    """Whole, truncated and cut-short encodings of the test photos (imports torch: run apart from the fuzzer)."""
    from PIL import Image

    from odp.codec import pipeline
    from odp.formats import container

    corpus.mkdir(parents=True, exist_ok=True)
    coffee = Image.open(HERE / "data" / "coffee-200x150.png").convert("RGB")
    astronaut = Image.open(HERE / "data" / "astronaut-320x240.png").convert("RGB")
    small = pipeline.encode(coffee.crop((60, 40, 124, 88)), device="cpu")
    two = pipeline.encode(astronaut, tokens=24, device="cpu")
    meta = container.read(pipeline.truncate(small, tokens=5))
    meta.header.icc, meta.header.exif = bytes(range(40)), b"Exif\0\0MM"  # length-prefixed blocks to mutate
    meta = container.write(meta)
    seeds = {"small": small, "small-13": pipeline.truncate(small, tokens=13), "two-24": two,
             "two-cut": two[: len(two) - 7], "meta-5": meta}
    for name, data in seeds.items():
        (corpus / f"seed-{name}.odp").write_bytes(data)


def fix_crcs(data: bytes) -> bytes:
    """Recompute the header CRC and every whole chunk's CRC, so a mutation is judged on its fields."""
    from odp.formats import container

    if len(data) < MAGIC_LEN + 4:
        return data
    n = struct.unpack_from("<I", data, MAGIC_LEN)[0]
    end = MAGIC_LEN + 4 + n
    if end + 4 > len(data):
        return data
    b = bytearray(data)
    struct.pack_into("<I", b, end, zlib.crc32(b[MAGIC_LEN + 4:end]))
    try:
        _, lengths, pos = container.read_header(bytes(b), max_pixels=None)
    except container.FormatError:
        return bytes(b)
    for length in lengths:
        if pos + length + 4 > len(b):
            break
        struct.pack_into("<I", b, pos + length, zlib.crc32(b[pos:pos + length]))
        pos += length + 4
    return bytes(b)


def target(data: bytes) -> None:
    """The parser either returns a consistent container or raises FormatError; anything else is a finding."""
    from odp.formats import container

    try:
        c = container.read(data)
    except container.FormatError:
        return
    h = c.header
    assert len(c.chunks) <= h.chunk_count and c.kept <= h.kept <= h.tokens
    assert h.width * h.height <= container.DEFAULT_MAX_PIXELS


INTERESTING = [0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 255, 256, 4095, 4096, 4097, 65535, 65536, 1 << 24,
               (8 << 20) + 1, (16 << 20) + 1, (256 << 20) + 1, 0x7FFFFFFF, 0xFFFFFFFF]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """1-4 blind edits (no coverage feedback): bit flips, cuts, inserts, deletes, interesting integers."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1:
            del b[rng.randint(0, len(b)):]
        elif op == 2:
            at = rng.randint(0, len(b))
            b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and b:
            at = rng.randrange(len(b))
            del b[at:at + rng.randint(1, 8)]
        elif op == 4 and len(b) >= 4:
            at = rng.randrange(min(len(b) - 3, 120))  # the fixed fields and the start of the lengths
            width = rng.choice([1, 2, 4])
            v = rng.choice(INTERESTING) & ((1 << (8 * width)) - 1)
            b[at:at + width] = v.to_bytes(width, "little")
        elif op == 5 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
    out = bytes(b)
    return fix_crcs(out) if rng.random() < 0.5 else out


def run_plain(corpus: Path, runs: int, seed: int) -> int:
    from odp.formats import container  # noqa: F401  (imported before the clock starts)

    seeds = [p.read_bytes() for p in sorted(corpus.glob("seed-*.odp"))]
    rng = random.Random(seed)
    crashes = corpus / "crashes"
    findings = slowest = 0
    start = time.perf_counter()
    for i in range(runs):
        data = mutate(rng.choice(seeds), rng)
        t = time.perf_counter()
        try:
            target(data)
        except Exception as e:  # a finding: keep the input
            findings += 1
            crashes.mkdir(exist_ok=True)
            (crashes / f"crash-{i}.odp").write_bytes(data)
            print(f"finding at run {i}: {type(e).__name__}: {e}", file=sys.stderr)
        slowest = max(slowest, time.perf_counter() - t)
    took = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"plain: {runs} runs in {took:.0f} s ({runs / took:.0f}/s), {findings} findings, "
          f"slowest case {slowest * 1000:.1f} ms, max RSS {rss // 1024} MiB")
    return 1 if findings else 0


def run_atheris(corpus: Path, runs: int, seed: int) -> None:
    import atheris

    with atheris.instrument_imports():
        from odp.formats import container  # noqa: F401

    def custom_mutator(data: bytes, max_size: int, s: int) -> bytes:
        out = atheris.Mutate(data, max_size)
        return fix_crcs(out) if s % 2 else out

    atheris.Setup([sys.argv[0], str(corpus), f"-runs={runs}", f"-seed={seed}", "-timeout=5",
                   "-rss_limit_mb=1024", "-max_len=4096", f"-artifact_prefix={corpus}/",
                   "-print_final_stats=1"], target, custom_mutator=custom_mutator)
    atheris.Fuzz()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1_000_000)
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/odp-fuzz-corpus"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--plain", action="store_true", help="plain mutation loop even if atheris is installed")
    ap.add_argument("--make-seeds", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make_seeds:
        return make_seeds(args.corpus)
    if not list(args.corpus.glob("seed-*.odp")):
        subprocess.run([sys.executable, __file__, "--make-seeds", "--corpus", str(args.corpus)], check=True)
    try:
        import atheris  # noqa: F401
    except ImportError:
        args.plain = True
    if args.plain:
        sys.exit(run_plain(args.corpus, args.runs, args.seed))
    run_atheris(args.corpus, args.runs, args.seed)


if __name__ == "__main__":
    main()
