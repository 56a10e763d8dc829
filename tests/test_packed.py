"""Packed weights (codec/packed.py, what the standalone binary ships): unpacked byte for byte, damage refused,
and a folder of them read by the registry like the package's own."""
from __future__ import annotations

import shutil

import pytest

import odp
from odp.codec import packed, registry
from odp.codec.errors import ModelNotFound

CONTEXT = registry.CONTEXT_DIR / "ctx16-v1.safetensors"  # a real shipped file, 2.4 MB


def test_unpack_gives_back_the_exact_file_smaller():
    data = CONTEXT.read_bytes()
    small = packed.pack(data)
    assert packed.unpack(small) == data and len(small) < 0.7 * len(data)
    assert packed.unpacked_size(small[:64]) == len(data)


@pytest.mark.parametrize("damage", ["flip", "cut", "magic", "size"])
def test_a_damaged_packed_file_is_refused_in_one_line(damage):
    small = bytearray(packed.pack(CONTEXT.read_bytes()))
    if damage == "flip":
        small[len(small) // 2] ^= 0x10
    elif damage == "cut":
        del small[-100:]
    elif damage == "magic":
        small[0] ^= 1
    else:  # a length over the bound: refused before inflating anything
        small[len(packed.MAGIC) + 32:len(packed.MAGIC) + 40] = (1 << 40).to_bytes(8, "little")
    with pytest.raises(ModelNotFound, match="damaged") as e:
        packed.unpack(bytes(small), "x.safetensors.packed")
    assert "\n" not in str(e.value)


def test_the_registry_reads_unpacked_copies_of_packed_folders(tmp_path, monkeypatch, coffee):
    """As the binary starts: the weights folders hold packed files; use_unpacked unpacks them into the
    cache once and the models load from there, giving the same file as the package's own weights."""
    models, contexts = tmp_path / "pkg" / "models", tmp_path / "pkg" / "contexts"
    for src, dst in ((registry.WEIGHTS_DIR, models), (registry.CONTEXT_DIR, contexts)):
        dst.mkdir(parents=True)
        for path in src.iterdir():
            if path.name.startswith(("odp-small-v3.", "ctx16d-v1.")):
                if path.suffix == ".safetensors" and "." not in path.stem:
                    (dst / (path.name + packed.SUFFIX)).write_bytes(packed.pack(path.read_bytes()))
                else:
                    shutil.copyfile(path, dst / path.name)
    expected = odp.encode(coffee, tokens=16, device="cpu")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", models)
    monkeypatch.setattr(registry, "CONTEXT_DIR", contexts)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    packed.use_unpacked()
    assert registry.WEIGHTS_DIR.is_relative_to(tmp_path / "cache")
    assert [p.name for p in registry.installed()] == ["odp-small-v3.safetensors"]
    unpacked = registry.WEIGHTS_DIR / "odp-small-v3.safetensors"
    assert registry.file_sha256(unpacked).hex() == registry.SHIPPED_SHA256["odp-small-v3"]
    assert odp.encode(coffee, tokens=16, device="cpu") == expected
    # a second start finds them there and writes nothing
    before = unpacked.stat().st_mtime_ns
    monkeypatch.setattr(registry, "WEIGHTS_DIR", models)
    monkeypatch.setattr(registry, "CONTEXT_DIR", contexts)
    packed.use_unpacked()
    assert unpacked.stat().st_mtime_ns == before


def test_without_a_writable_cache_a_temporary_folder_serves(tmp_path, monkeypatch):
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "ctx16-v1.safetensors.packed").write_bytes(packed.pack(CONTEXT.read_bytes()))
    blocker = tmp_path / "not-a-folder"
    blocker.write_bytes(b"")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "none")
    monkeypatch.setattr(registry, "CONTEXT_DIR", src)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file: no folder can be made under it
    packed.use_unpacked()
    assert registry.CONTEXT_DIR.parent.name.startswith("odp-weights-")
    assert (registry.CONTEXT_DIR / "ctx16-v1.safetensors").read_bytes() == CONTEXT.read_bytes()


def test_the_package_ships_plain_weights():
    """use_unpacked is a no-op for the Python package: its folders hold no packed file."""
    folder = registry.WEIGHTS_DIR
    packed.use_unpacked()
    assert registry.WEIGHTS_DIR == folder
