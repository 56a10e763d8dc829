"""Every command and code block in README.md and docs/api.md runs as written, on a real photo (issue 25).

Each document runs top to bottom in its own empty folder holding `photo.png` (a real test photo) and the
other inputs the README names (`a.png`, `b.jpg`, `c.webp`). Fenced ```sh / ```bash blocks run line by line
with bash (```console blocks: the lines after `$ `), with the `odp` installed beside this Python first on
PATH: each line must exit 0 and print no warning (so a --psnr or --msssim target the photo does not reach
fails). ```python blocks run in order in one namespace, with odp.OdpWarning an error. A block just after
`<!-- docs-test: skip (why) -->` does not run; keep those few.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image

import odp

ROOT = Path(__file__).parents[1]
DATA = Path(__file__).parent / "data"
DOCS = ["README.md", "docs/api.md"]
# a real 320x240 photo, 2 tiles; its whole default file reaches the docs' --psnr 17 and --msssim 0.6 (17.4 dB, 0.69)
PHOTO = DATA / "astronaut-320x240.png"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SKIP = "<!-- docs-test: skip"


def blocks(doc: str) -> list[tuple[int, str, str, bool]]:
    """(line number, language, code, skipped) of every fenced block in doc."""
    text = (ROOT / doc).read_text()
    out = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip().rsplit("\n", 1)[-1]
        out.append((text.count("\n", 0, m.start()) + 2, m.group(1), m.group(2), before.startswith(SKIP)))
    return out


def commands(lang: str, code: str) -> list[str]:
    """The shell commands of a block, backslash-continued lines joined."""
    lines = code.replace("\\\n", " ").splitlines()
    if lang == "console":
        return [line[2:] for line in lines if line.startswith("$ ")]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def setup_folder(folder: Path) -> None:
    shutil.copy(PHOTO, folder / "photo.png")
    with Image.open(PHOTO) as im:
        half = im.convert("RGB").resize((im.width // 2, im.height // 2), Image.LANCZOS)
    half.save(folder / "a.png")
    half.save(folder / "b.jpg", quality=90)
    half.save(folder / "c.webp", quality=90)


@pytest.fixture
def one_thread():
    """Torch on one thread, here and in the `odp` processes: on a 2-core machine busy with something else
    (training), two threads contend and run several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"OMP_NUM_THREADS": "1"}
    torch.set_num_threads(before)


@pytest.mark.parametrize("doc", DOCS)
def test_doc_runs_as_written(doc, tmp_path, monkeypatch, one_thread):
    setup_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ, **one_thread, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    namespace: dict = {}
    failed, ran = [], 0
    for line, lang, code, skipped in blocks(doc):
        if skipped or lang not in ("sh", "bash", "console", "python"):
            continue
        ran += 1
        if lang == "python":  # compiled at the doc's own line numbers, so that a traceback points into it
            with warnings.catch_warnings():
                warnings.simplefilter("error", odp.OdpWarning)
                exec(compile("\n" * (line - 1) + code, str(ROOT / doc), "exec"), namespace)
            continue
        for cmd in commands(lang, code):
            r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=600)
            if r.returncode or "warning" in r.stderr.lower():
                failed.append(f"{doc} line {line}+: `{cmd}` exited {r.returncode}: {r.stderr.strip()}")
    assert ran >= 2
    assert not failed, "\n".join(failed)
    if doc == "README.md":  # the token counts it states are the shipped model's on this photo
        i = odp.info((tmp_path / "photo.odp").read_bytes())
        text = (ROOT / doc).read_text()
        assert f"at most {i.tokens_max} of the {i.model_tokens}" in text
        assert f"{i.mean_tokens:.1f} of {i.model_tokens} per tile" in text


def test_few_blocks_are_skipped():
    skipped = {doc: sum(b[3] for b in blocks(doc)) for doc in DOCS}
    assert skipped == {"README.md": 3, "docs/api.md": 0}
