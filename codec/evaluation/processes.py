"""Whole-process times of `odp` beside Pillow's WebP and AVIF, in one hyperfine run.

    python -m odp.codec.evaluation.processes tests/data/photo_768x512.png --runs 5

What a user waits for from a shell: start-up, imports, the network and the file, for encode, decode,
info (and info --verify) and truncate with default settings, and Pillow writing and reading WebP (method 6) and AVIF
(speed 0, its slowest) of the same photo, each a fresh Python process. Needs `hyperfine` on the PATH;
prints hyperfine's Markdown table (mean ± σ, min, max) and keeps its JSON beside it.
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def commands(photo: Path, work: Path) -> list[tuple[str, str]]:
    py = shlex.quote(sys.executable)
    odp = f"{py} -m odp.cli.main"
    p, o = shlex.quote(str(photo)), shlex.quote(str(work / "a.odp"))
    pil = f"{py} -c 'import sys; from PIL import Image; "
    return [
        ("odp encode", f"{odp} encode {p} -o {o} --force --quiet"),
        ("odp encode --first-stage", f"{odp} encode {p} -o {shlex.quote(str(work / 'f.odp'))} --first-stage --force --quiet"),
        ("odp decode", f"{odp} decode {o} -o {shlex.quote(str(work / 'a.png'))} --force --quiet"),
        ("odp info", f"{odp} info {o}"),
        ("odp info --verify", f"{odp} info --verify {o}"),
        ("odp truncate", f"{odp} truncate {o} -o {shlex.quote(str(work / 't.odp'))} --bytes 500 --force"),
        ("webp encode (Pillow, q50 m6)", pil + f"Image.open(sys.argv[1]).save(sys.argv[2], quality=50, method=6)' {p} "
         + shlex.quote(str(work / "a.webp"))),
        ("webp decode (Pillow)", pil + f"Image.open(sys.argv[1]).load()' {shlex.quote(str(work / 'a.webp'))}"),
        ("avif encode (Pillow, q50 speed 0)", pil + f"Image.open(sys.argv[1]).save(sys.argv[2], quality=50, speed=0)' "
         f"{p} " + shlex.quote(str(work / "a.avif"))),
        ("avif decode (Pillow)", pil + f"Image.open(sys.argv[1]).load()' {shlex.quote(str(work / 'a.avif'))}"),
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("photo", type=Path)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("processes.json"), help="hyperfine's JSON export")
    ap.add_argument("--markdown", type=Path, help="also write the table, the command and the machine here "
                                                  "(docs/results/processes.md: `odp bench --report` includes it)")
    ap.add_argument("--note", default="", help="a sentence on the conditions, appended to the markdown's first line")
    args = ap.parse_args(argv)
    if shutil.which("hyperfine") is None:
        sys.exit("needs hyperfine on the PATH (apt install hyperfine, or cargo install hyperfine)")
    with tempfile.TemporaryDirectory() as tmp:
        cmds = commands(args.photo.resolve(), Path(tmp))
        for name, cmd in cmds:  # the files the later commands read
            if "encode" in name:
                subprocess.run(cmd, shell=True, check=True)
        md = Path(tmp) / "table.md"
        hf = ["hyperfine", "--warmup", "1", "--runs", str(args.runs), "--export-markdown", str(md),
              "--export-json", str(args.out.resolve()), "--style", "basic"]
        for name, cmd in cmds:
            hf += ["--command-name", name, cmd]
        subprocess.run(hf, check=True, stdout=subprocess.DEVNULL)
        table = md.read_text()
    print(table)
    if args.markdown:
        import os
        import platform

        import onnxruntime

        note = (f"`python -m odp.codec.evaluation.processes {args.photo} --runs {args.runs}`: each command a fresh "
                f"process (hyperfine, 1 warm-up), default settings; {os.cpu_count()} CPU threads, {platform.platform()}, "
                f"onnxruntime {onnxruntime.__version__}." + (f" {args.note}" if args.note else ""))
        args.markdown.write_text(note + "\n\n" + table)


if __name__ == "__main__":
    main()
