"""Packed weights (codec/packed.py, what the standalone binary ships): unpacked byte for byte, damage refused,
and a folder of them read by the registry like the package's own."""
from __future__ import annotations

import hashlib
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


def test_a_file_packed_against_another_needs_that_one():
    """A fine-tune ships as its difference from the model it came from (odp.spec): unpacked byte for byte
    from that file, refused in one line without it or with another."""
    reference = (registry.CONTEXT_DIR / "ctx16d-v1.safetensors").read_bytes()
    data = (registry.CONTEXT_DIR / "ctx16d-classic-v1.safetensors").read_bytes()  # same tensors' layout
    delta = packed.pack(data, reference)
    assert packed.reference_of(delta[:packed.HEAD_SIZE]) == hashlib.sha256(reference).digest()
    assert packed.unpack(delta, "d", reference) == data and packed.unpacked_size(delta[:64]) == len(data)
    for wrong in (None, data, reference[:-2] + b"\0\0"):
        with pytest.raises(ModelNotFound, match="packed against") as e:
            packed.unpack(delta, "d.safetensors.packed", wrong)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError):
        packed.pack(data, CONTEXT.read_bytes())  # another layout: no difference to take


def test_a_folder_unpacks_a_difference_after_its_reference(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    reference = (registry.CONTEXT_DIR / "ctx16d-v1.safetensors").read_bytes()
    data = (registry.CONTEXT_DIR / "ctx16d-classic-v1.safetensors").read_bytes()
    (src / "a-delta.safetensors.packed").write_bytes(packed.pack(data, reference))  # sorts before its reference
    (src / "b-ref.safetensors.packed").write_bytes(packed.pack(reference))
    packed.unpack_folder(src, tmp_path / "dst")
    assert (tmp_path / "dst" / "a-delta.safetensors").read_bytes() == data
    assert (tmp_path / "dst" / "b-ref.safetensors").read_bytes() == reference
    (src / "b-ref.safetensors.packed").unlink()
    (tmp_path / "dst" / "a-delta.safetensors").unlink()
    (tmp_path / "dst" / "b-ref.safetensors").unlink()
    with pytest.raises(ModelNotFound, match="packed against"):
        packed.unpack_folder(src, tmp_path / "dst")
    assert not any((tmp_path / "dst").iterdir())  # nothing half-written


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
