"""The import rules of docs/architecture.md, checked on the source (every import, also inside functions)
and on a running `odp info` / `truncate` / `info --verify` (no torch in sys.modules).

Layers, lowest first: formats/ and entropy/ (no torch, nothing above them); the codec that ships
(codec/, never training, evaluation, the CLI or the TUI); the public API (odp/__init__.py); and its
faces: cli/, tui/ and the Pillow plugin, which call the public API, the evaluation package where they
compare codecs, the one module of user-facing errors, and the atomic file writers (and the CLI
starts the TUI).
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["codec", "entropy", "formats", "cli", "tui"]

# codec modules that encoding, decoding, reading, cutting and verifying files go through: they must
# never need torch (the network runs on ONNX Runtime by default; network.py opens torch only for CUDA,
# for a torch network in hand, or where a model has no ONNX graphs)
TORCH_FREE_CODEC = {"odp.codec.errors", "odp.codec.imaging", "odp.codec.options", "odp.codec.registry",
                    "odp.codec.stream", "odp.codec.evaluation.settings", "odp.codec.tiling", "odp.codec.quality",
                    "odp.codec.network", "odp.codec.net_onnx", "odp.codec.engine", "odp.codec.allocation",
                    "odp.codec.ratecontrol", "odp.codec.coding", "odp.codec.distributed", "odp.codec.refinement",
                    "odp.codec.thumbnail", "odp.codec.packed", "odp.codec.workers"}
# network.py's lazy imports: torch itself (is CUDA there?) and the torch backend
TORCH_DOORS = {("odp.codec.network", "odp.codec.net_torch"), ("odp.codec.network", "torch")}
# what the faces (cli/, tui/, the Pillow plugin) may import from odp besides themselves
FACE_MAY_USE = ("odp", "odp.codec.evaluation", "odp.codec.errors", "odp.formats.files")
HEAVY = ("torch", "torchvision", "pytorch_msssim")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["odp", *parts])


def source_modules() -> dict[str, Path]:
    files = [ROOT / "__init__.py"] + [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return {module_name(p): p for p in files}


def imports_of(name: str, path: Path) -> set[str]:
    """Absolute names of everything a module imports, anywhere in it (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            out.add(stem)
            out |= {f"{stem}.{a.name}" for a in node.names}  # `from pkg import module` names a module
    return out


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(modules: dict[str, Path]) -> list[str]:
    """Every import that breaks a rule, as 'module imports name (rule)'."""
    known = set(modules) | set(source_modules())
    bad = []
    for name, path in sorted(modules.items()):
        ours = {i for i in imports_of(name, path) if within(i, "odp") and (i in known or i == "odp")}
        heavy = {i for i in imports_of(name, path) if i.split(".")[0] in HEAVY}
        if within(name, "odp.formats") and name != "odp.formats.pillow":
            bad += [f"{name} imports {i} (formats/ imports only formats/)" for i in ours
                    if not within(i, "odp.formats")]
        if within(name, "odp.entropy"):
            bad += [f"{name} imports {i} (entropy/ imports only entropy/)" for i in ours
                    if not within(i, "odp.entropy")]
        if within(name, "odp.formats") or within(name, "odp.entropy") or name in TORCH_FREE_CODEC:
            bad += [f"{name} imports {i} (must not need torch)" for i in heavy if (name, i) not in TORCH_DOORS]
        if name in TORCH_FREE_CODEC:
            bad += [f"{name} imports {i} (a torch-free module imports only torch-free ones)" for i in ours
                    if within(i, "odp.codec") and i not in TORCH_FREE_CODEC | {"odp.codec"}
                    and (name, i) not in TORCH_DOORS]
        shipped = within(name, "odp.codec") and not any(
            within(name, f"odp.codec.{p}") for p in ("training", "evaluation"))
        if shipped or within(name, "odp.formats") or within(name, "odp.entropy"):
            bad += [f"{name} imports {i} (the shipped codec never imports the lab or the faces)" for i in ours
                    if any(within(i, p) for p in ("odp.codec.training", "odp.codec.evaluation", "odp.cli",
                                                  "odp.tui"))]
        if within(name, "odp.codec.training") or within(name, "odp.codec.evaluation"):
            bad += [f"{name} imports {i} (the lab never imports the faces)" for i in ours
                    if within(i, "odp.cli") or within(i, "odp.tui")]
        if name == "odp":
            bad += [f"odp imports {i} (the public API never imports the lab or the faces)" for i in ours
                    if any(within(i, p) for p in ("odp.codec.training", "odp.codec.evaluation", "odp.cli", "odp.tui"))]
        face = within(name, "odp.cli") or within(name, "odp.tui") or name == "odp.formats.pillow"
        if within(name, "odp.cli"):
            ours = {i for i in ours if not within(i, "odp.tui")}  # `odp tui` starts the terminal UI
        if face:
            own = name.split(".")[:2] if name != "odp.formats.pillow" else ["odp", "formats"]
            bad += [f"{name} imports {i} (faces call the public API)" for i in ours
                    if not within(i, ".".join(own)) and i not in FACE_MAY_USE
                    and not any(within(i, p) for p in FACE_MAY_USE[1:])]
    return bad


def test_imports_follow_the_layers():
    modules = source_modules()
    assert {"odp.codec.stream", "odp.formats.container", "odp.cli.main"} <= set(modules)
    assert violations(modules) == []


def test_a_violating_import_is_caught(tmp_path, monkeypatch):
    """The checker itself: a formats/ module importing torch and the codec, a codec module importing
    the bench, a torch-free module importing the engine, the CLI reaching into the stream layer."""
    cases = {
        "formats/container.py": ("import torch\nfrom ..codec import stream\n",
                                 ["must not need torch", "formats/ imports only formats/"]),
        "codec/stream.py": ("from . import engine\nfrom .evaluation import bench\n",
                            ["torch-free module imports only torch-free", "never imports the lab"]),
        "cli/main.py": ("from ..codec import stream\n", ["faces call the public API"]),
    }
    for rel, (extra, expected) in cases.items():
        fake = tmp_path / rel
        fake.parent.mkdir(parents=True, exist_ok=True)
        fake.write_text(extra)
        found = violations({module_name(ROOT / rel): fake})
        assert all(any(e in v for v in found) for e in expected), (rel, found)


@pytest.mark.parametrize("args", [["info", "{f}"], ["info", "{f}", "--verify"], ["info", "{f}", "--json"],
                                  ["truncate", "{f}", "-o", "{out}", "--tokens", "8"],
                                  ["decode", "{f}", "-o", "{out}.png"],
                                  ["encode", "{png}", "-o", "{out}", "--bytes", "300"],
                                  ["encode", "{png}", "-o", "{out}", "--msssim", "0.7"]])
def test_commands_never_import_torch(tmp_path, small_odp, args, monkeypatch):
    """On a CPU the network runs on ONNX Runtime: encoding and decoding start without torch too."""
    monkeypatch.setenv("ODP_BACKEND", "auto")
    src, out = tmp_path / "s.odp", tmp_path / "cut.odp"
    src.write_bytes(small_odp)
    argv = [a.format(f=src, out=out, png=ROOT / "tests" / "data" / "astronaut-320x240.png") for a in args]
    code = ("import sys\nfrom odp.cli.main import main\n"
            f"try:\n    main({json.dumps(argv)})\nexcept SystemExit as e:\n    code = e.code\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision'))\n"
            "print('HEAVY', heavy, 'EXIT', code, file=sys.stderr)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "HEAVY [] EXIT 0" in r.stderr, r.stderr


def test_public_api_reads_files_without_torch(small_odp, tmp_path):
    (tmp_path / "s.odp").write_bytes(small_odp)
    code = ("import sys, odp\nd = open(sys.argv[1], 'rb').read()\n"
            "odp.info(d); odp.verify(d); odp.model_of(d); odp.truncate(d, tokens=4); odp.model_info()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s.odp")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
