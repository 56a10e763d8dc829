"""Long fuzz run of the .odp readers on mutated real files (version 2, and the version-1 file).

    nice -n 10 python tests/fuzz_container.py --runs 1000000           # atheris, coverage-guided, if installed
    nice -n 10 python tests/fuzz_container.py --runs 1000000 --plain   # plain mutation loop, no coverage
    nice -n 10 python tests/fuzz_container.py --runs 20000 --plain --target tokens   # + the entropy decoder

Target `container` (default) is container.read, header validation included; target `tokens` is
stream.read_tokens and verify (the range decoder and token checks behind the parser; loads the model).
Seeds are files encoded from tests/data/astronaut-320x240.png (made once, in a subprocess, into --corpus)
and tests/data/v1/astronaut-v1.odp. Half of the mutated inputs get their CRCs recomputed, so that mutations
reach the header fields and layer table behind the checksum. Any exception but FormatError (for `tokens`,
also ModelNotFound; any warning but an OdpWarning for a file cut short), a case over 5 s or RSS over 1 GiB
is a finding: atheris writes it as crash-*/timeout-*/oom-*, the plain loop into CORPUS/crashes. Not part of
CI (tests/test_fuzz.py is the short run); figures in docs/security.md.
"""
from __future__ import annotations

import argparse
import random
import resource
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

HERE = Path(__file__).parent
MAGIC = b"\x89ODP"
MAGIC_V1 = b"\x89ODP\r\n\x1a\n"


def make_seeds(corpus: Path) -> None:
    """Whole, truncated, cut-short and metadata-carrying files (imports torch: run apart from the fuzzer)."""
    from PIL import Image

    import helpers
    from odp.codec import stream, weights
    from odp.formats import container

    corpus.mkdir(parents=True, exist_ok=True)
    model = weights.load()
    astronaut = Image.open(HERE / "data" / "astronaut-320x240.png").convert("RGB")
    coffee = Image.open(HERE / "data" / "coffee-200x150.png").convert("RGB")
    adaptive = helpers.encode(astronaut, tokens=32, model=model, device="cpu")
    uniform = helpers.encode(astronaut, tokens=32, model=model, device="cpu", adaptive=False)
    small = helpers.encode(coffee.crop((60, 40, 124, 88)), model=model, device="cpu")
    meta = container.read(stream.truncate(small, tokens=5))
    meta.header.icc, meta.header.exif = bytes(range(40)), b"Exif\0\0MM"  # length-prefixed blocks to mutate
    seeds = {"two-adaptive-32": adaptive, "two-uniform-32": uniform, "two-cut": adaptive[:-7],
             "small": small, "small-13": stream.truncate(small, tokens=13), "meta-5": container.write(meta),
             "v1": (HERE / "data" / "v1" / "astronaut-v1.odp").read_bytes()}
    for name, data in seeds.items():
        (corpus / f"seed-{name}.odp").write_bytes(data)


def fix_crcs(data: bytes) -> bytes:
    """Recompute the header CRC (and a v1 file's chunk CRCs), so a mutation is judged on its fields."""
    from odp.formats import container

    try:
        end = container.header_size(data[:16])
    except container.FormatError:
        return data
    if end is None or end > len(data):
        return data
    b = bytearray(data)
    v1 = data.startswith(MAGIC_V1)
    start = len(MAGIC_V1) + 4 if v1 else len(MAGIC)  # v2: the CRC covers version, length and fields
    struct.pack_into("<I", b, end - 4, zlib.crc32(b[start:end - 4]))
    if v1:
        try:
            _, table, pos = container.read_header(bytes(b), max_pixels=None)
        except container.FormatError:
            return bytes(b)
        for _, n, _ in table:  # n includes the chunk's CRC
            if n < 4 or pos + n > len(b):
                break
            struct.pack_into("<I", b, pos + n - 4, zlib.crc32(b[pos:pos + n - 4]))
            pos += n
    return bytes(b)


def target_container(data: bytes) -> None:
    """The parser either returns a consistent container or raises FormatError; anything else is a finding."""
    from odp.formats import container

    try:
        c = container.read(data)
    except container.FormatError:
        return
    h = c.header
    h.validate()
    levels = [x.level for x in c.layers]
    assert levels == sorted(set(levels)) and all(0 < lv <= h.full_level for lv in levels)
    assert c.complete == (c.level == c.declared_level) and c.kept <= h.tokens
    assert h.width * h.height <= container.DEFAULT_MAX_PIXELS


def target_tokens(data: bytes) -> None:
    """read_tokens and verify: tokens in range or a clean error; only 'cut short' warnings."""
    from odp.codec import stream
    from odp.codec.errors import ModelNotFound, OdpWarning
    from odp.formats import container

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            c, model, toks, counts = stream.read_tokens(data)
        except (container.FormatError, ModelNotFound):
            return
        assert ((toks >= 0) & (toks < model.config.codebook_size)).all()
        assert counts.tolist() == c.header.counts(c.level)
        try:
            stream.verify(data)
        except container.FormatError:
            pass
    for w in caught:
        assert issubclass(w.category, OdpWarning) and "cut short" in str(w.message), w


TARGETS = {"container": target_container, "tokens": target_tokens}

INTERESTING = [0, 1, 2, 3, 4, 7, 8, 15, 16, 17, 127, 128, 255, 256, 4095, 4096, 4097, 16383, 16384, 65535, 65536,
               1 << 24, (8 << 20) + 1, (16 << 20) + 1, (64 << 20) + 1, (256 << 20) + 1, 0x7FFFFFFF, 0xFFFFFFFF]


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(out + bytes([n]))


def mutate(data: bytes, rng: random.Random) -> bytes:
    """1-4 blind edits (no coverage feedback): bit flips, cuts, inserts, deletes, interesting integers
    (fixed-width, as version 1 stores them, or varints, as version 2 does)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(7)
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
            at = rng.randrange(min(len(b) - 3, 160))  # the header fields and the layer table
            width = rng.choice([1, 2, 4])
            v = rng.choice(INTERESTING) & ((1 << (8 * width)) - 1)
            b[at:at + width] = v.to_bytes(width, "little")
        elif op == 5 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 6 and len(b) > 6:
            at = rng.randrange(5, min(len(b), 160))  # a varint field replaced by another, of any length
            old = 1
            while at + old - 1 < len(b) and b[at + old - 1] & 0x80 and old < 5:
                old += 1
            b[at:at + old] = varint(rng.choice(INTERESTING))
    out = bytes(b)
    return fix_crcs(out) if rng.random() < 0.5 else out


def run_plain(corpus: Path, runs: int, seed: int, target) -> int:
    from odp.formats import container  # noqa: F401  (imported before the clock starts)

    seeds = [p.read_bytes() for p in sorted(corpus.glob("seed-*.odp"))]
    rng = random.Random(seed)
    crashes = corpus / "crashes"
    findings = slowest = 0

    def expire(*_):
        raise TimeoutError("case ran over 5 s")

    signal.signal(signal.SIGALRM, expire)
    start = time.perf_counter()
    for i in range(runs):
        data = mutate(rng.choice(seeds), rng)
        t = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, 5)
        try:
            target(data)
        except Exception as e:  # a finding (a timeout included): keep the input
            findings += 1
            crashes.mkdir(exist_ok=True)
            kind = "timeout" if isinstance(e, TimeoutError) else "crash"
            (crashes / f"{kind}-{i}.odp").write_bytes(data)
            print(f"finding at run {i}: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        slowest = max(slowest, time.perf_counter() - t)
    took = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"plain: {runs} runs in {took:.0f} s ({runs / took:.0f}/s), {findings} findings, "
          f"slowest case {slowest * 1000:.1f} ms, max RSS {rss // 1024} MiB")
    return 1 if findings else 0


def run_atheris(corpus: Path, runs: int, seed: int, target) -> None:
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
    ap.add_argument("--corpus", type=Path, default=Path("/tmp/odp-fuzz-corpus-v2"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--target", choices=sorted(TARGETS), default="container")
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
        sys.exit(run_plain(args.corpus, args.runs, args.seed, TARGETS[args.target]))
    run_atheris(args.corpus, args.runs, args.seed, TARGETS[args.target])


if __name__ == "__main__":
    main()
