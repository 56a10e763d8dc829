"""The network of an installed model: a registry entry plus its tokenizer, built from safetensors.

Finding a model and its entropy tables is torch-free (registry.py); only pixels need this module.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..entropy.models import PositionTables
from . import registry
from .errors import ModelNotFound
from .model import ModelConfig, Tokenizer
from .registry import DEFAULT_MODEL, WEIGHTS_DIR, Entry, file_sha256  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Model:
    """An installed model with its network: what encoding and decoding pixels need."""

    entry: Entry
    config: ModelConfig
    tokenizer: Tokenizer

    # the entry's fields, so that a Model goes wherever the bitstream wants an Entry
    name = property(lambda self: self.entry.name)
    sha256 = property(lambda self: self.entry.sha256)
    tables = property(lambda self: self.entry.tables)
    context = property(lambda self: self.entry.context)
    entropy_model = property(lambda self: self.entry.entropy_model)
    tile = property(lambda self: self.entry.tile)
    tokens = property(lambda self: self.entry.tokens)
    best_entropy = property(lambda self: self.entry.best_entropy)
    codebook_size = property(lambda self: self.entry.codebook_size)

    def entropy(self, id: str):
        return self.entry.entropy(id)

    def __repr__(self) -> str:
        return f"Model({self.name!r}, sha256={self.sha256.hex()[:16]})"


def save_weights(path: Path, name: str, tokenizer: Tokenizer, tables: PositionTables,
                 tokens_of: bytes | None = None, refines: bytes | None = None, extra: dict | None = None) -> bytes:
    """Write a shippable weights file (fp16 tensors) and return its sha256. `tokens_of`: the sha256
    of the weights whose encoder this one shares (a decoder-only fine-tune), so their context
    model applies. `refines`: for a refinement stage's model, the sha256 of the model whose pictures
    it refines (the encoder adds this stage to that model's files). `extra`: more metadata (strings)."""
    tensors = {f"model.{k}": v.detach().to(torch.float16).contiguous() for k, v in tokenizer.state_dict().items()}
    tensors["entropy.freqs"] = torch.from_numpy(tables.freqs.astype("int32"))
    meta = {"name": name, "config": json.dumps(tokenizer.cfg.to_dict()), "entropy_model": tables.id}
    if tokens_of is not None:
        meta["tokens_of"] = tokens_of.hex()
    if refines is not None:
        meta["refines"] = refines.hex()
    meta.update(extra or {})
    save_file(tensors, str(path), metadata=meta)
    path.chmod(0o644)
    return file_sha256(path)


@lru_cache(maxsize=4)
def load_path(path: Path) -> Model:
    """Load a safetensors weights file (never a pickle), checking a shipped name's pinned sha256 first."""
    entry = registry.entry_at(path)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k[6:]: f.get_tensor(k).float() for k in f.keys() if k.startswith("model.")}
    try:
        cfg = ModelConfig.from_dict(entry.config)
        tok = Tokenizer(cfg)
        tok.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ModelNotFound(f"weights file {path.name} does not fit this version of ODP's model code") from e
    tok.eval().requires_grad_(False)
    return Model(entry, cfg, tok)


def load(name: str = DEFAULT_MODEL) -> Model:
    """Installed model by name."""
    return load_path(registry.path_of(name))


def load_by_hash(sha256: bytes, name_hint: str = "") -> Model:
    """Installed model whose weights file's sha256 is, or starts with, these bytes (name_hint tried first)."""
    return load_path(registry.path_by_hash(sha256, name_hint))


def for_entry(entry: Entry) -> Model:
    return load_path(entry.path)
