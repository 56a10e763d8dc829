"""Shipped models: safetensors files in package data, named and identified by content hash.

A weights file holds the tokenizer's tensors ("model.*", fp16), the entropy model's
integer tables ("entropy.freqs") and metadata (name, model config, entropy model id).
Files record the sha256 of the whole weights file (version-2 files its first 4 bytes);
decoding looks the model up by it. Context models (entropy/weights/*.safetensors, integer
tensors) are bound to the tokenizer whose tokens they predict by its sha256; a decoder-only
fine-tune names the tokenizer whose encoder it shares in its `tokens_of` metadata and uses its
context model.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..entropy.context import ContextModel
from ..entropy.models import PositionTables
from .model import ModelConfig, Tokenizer

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "odp-small-v2"
# sha256 of each shipped weights file: a damaged or swapped file under a shipped name is refused
# (a new model exported into WEIGHTS_DIR loads unchecked until its hash is pinned here).
SHIPPED_SHA256 = {
    "odp-small-v1": "3c971564bc2e13374a4d58293253c36b0d64a9816ce40e96579eabefe94eddc3",
    "odp-small-v2": "004b87806af2bb815a672acfa026130569205a13266f6a8c226036bcf7f90f4a",
}
CONTEXT_DIR = Path(__file__).parents[1] / "entropy" / "weights"
CONTEXT_SHA256 = {
    "ctx16-v1": "322f3effa82c5f1be0343253839e75ec5f74360d8fecfc7a118cd8cb1e78c721",
}


class ModelNotFound(LookupError):
    """No shipped weights match a name or hash (one-line, user-facing message)."""


@dataclass
class Model:
    name: str
    sha256: bytes
    config: ModelConfig
    tokenizer: Tokenizer
    tables: PositionTables
    entropy_model: str                       # the id of `tables` (what version-1 files record)
    context: ContextModel | None = None      # the shipped context model for this tokenizer, if any

    def entropy(self, id: str):
        """The probability model a file names; ModelNotFound if this model has no such one."""
        if id == self.tables.id:
            return self.tables
        if self.context is not None and id == self.context.id:
            return self.context
        raise ModelNotFound(f"this file needs entropy model '{id}', which model '{self.name}' does not have")

    @property
    def best_entropy(self):
        """What new files are coded with: the context model when one is installed."""
        return self.context or self.tables


def file_sha256(path: Path) -> bytes:
    st = path.stat()
    return _sha256_cached(path, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=16)
def _sha256_cached(path: Path, size: int, mtime_ns: int) -> bytes:
    """Hashing 20 MB takes tens of ms: do it once per file version, not per decode."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def save_weights(path: Path, name: str, tokenizer: Tokenizer, tables: PositionTables,
                 tokens_of: bytes | None = None) -> bytes:
    """Write a shippable weights file (fp16 tensors) and return its sha256. `tokens_of`: the sha256
    of the weights whose encoder this one shares (a decoder-only fine-tune), so their context
    model applies."""
    tensors = {f"model.{k}": v.detach().to(torch.float16).contiguous() for k, v in tokenizer.state_dict().items()}
    tensors["entropy.freqs"] = torch.from_numpy(tables.freqs.astype("int32"))
    meta = {"name": name, "config": json.dumps(tokenizer.cfg.to_dict()), "entropy_model": tables.id}
    if tokens_of is not None:
        meta["tokens_of"] = tokens_of.hex()
    save_file(tensors, str(path), metadata=meta)
    path.chmod(0o644)
    return file_sha256(path)


def _available() -> list[Path]:
    return sorted(WEIGHTS_DIR.glob("*.safetensors"))


@lru_cache(maxsize=4)
def load_path(path: Path) -> Model:
    """Load a safetensors weights file (never a pickle), checking a shipped name's pinned sha256 first."""
    digest = file_sha256(path)
    pinned = SHIPPED_SHA256.get(path.stem)
    if pinned is not None and digest.hex() != pinned:
        raise ModelNotFound(f"weights file {path.name} does not match its pinned sha256 {pinned[:16]} "
                            f"(damaged or altered): reinstall ODP")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    try:
        cfg = ModelConfig.from_dict(json.loads(meta["config"]))
        tok = Tokenizer(cfg)
        tok.load_state_dict({k[6:]: v.float() for k, v in tensors.items() if k.startswith("model.")})
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ModelNotFound(f"weights file {path.name} does not fit this version of ODP's model code") from e
    tok.eval().requires_grad_(False)
    tables = PositionTables(tensors["entropy.freqs"].numpy().astype("int64"))
    context = _context_for(digest)
    if context is None and meta.get("tokens_of"):  # a decoder-only fine-tune: same tokens, same context model
        try:
            context = _context_for(bytes.fromhex(meta["tokens_of"]))
        except ValueError:
            raise ModelNotFound(f"weights file {path.name} names a malformed tokens_of hash") from None
    return Model(meta["name"], digest, cfg, tok, tables, meta["entropy_model"], context)


def _context_for(tokenizer_sha256: bytes) -> ContextModel | None:
    """The installed context model bound to these tokenizer weights (pinned hash checked), or None."""
    from safetensors.numpy import load_file

    for path in sorted(CONTEXT_DIR.glob("*.safetensors")):
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
        if meta.get("tokenizer_sha256") != tokenizer_sha256.hex():
            continue
        pinned = CONTEXT_SHA256.get(path.stem)
        if pinned is not None and file_sha256(path).hex() != pinned:
            raise ModelNotFound(f"context model {path.name} does not match its pinned sha256 {pinned[:16]} "
                                f"(damaged or altered): reinstall ODP")
        try:
            return ContextModel(meta["id"], load_file(str(path)), meta)
        except (KeyError, ValueError) as e:
            raise ModelNotFound(f"context model {path.name} does not fit this version of ODP: {e}") from None
    return None


def load(name: str = DEFAULT_MODEL) -> Model:
    """Shipped model by name."""
    path = WEIGHTS_DIR / f"{name}.safetensors"
    if not path.is_file():
        known = ", ".join(p.stem for p in _available()) or "none"
        raise ModelNotFound(f"model '{name}' is not installed (installed: {known})")
    return load_path(path)


def load_by_hash(sha256: bytes, name_hint: str = "") -> Model:
    """Shipped model whose weights file's sha256 is, or starts with, these bytes (name_hint is tried first)."""
    candidates = _available()
    candidates.sort(key=lambda p: p.stem != name_hint)
    for path in candidates:
        if file_sha256(path).startswith(sha256):
            return load_path(path)
    named = f"model '{name_hint}'" if name_hint else "a model"
    raise ModelNotFound(f"this file needs {named} with weights {sha256.hex()[:16]}, which is not installed")
