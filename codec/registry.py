"""The installed models, found by name or by the hash a file records, without loading any network.

A weights file (codec/weights/*.safetensors) holds the tokenizer's tensors ("model.*", fp16),
the per-position entropy tables ("entropy.freqs") and metadata (name, model config, entropy
model id, optionally `tokens_of`). Files record the sha256 of the whole weights file
(version-2 files its first 4 bytes). Context models (entropy/weights/*.safetensors, integer
tensors) are bound to the tokenizer whose tokens they predict by its sha256; a decoder-only
fine-tune names the tokenizer whose encoder it shares in `tokens_of` and uses its context model.

Everything here is numpy and safetensors: reading, cutting and verifying files never needs torch.
codec/weights.py builds the network for an entry when pixels are wanted.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from safetensors import safe_open

from ..entropy.context import ContextModel, DigitContextModel
from ..entropy.models import EntropyModel, PositionTables
from .errors import ModelNotFound

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_MODEL = "odp-small-v3"
# sha256 of each shipped weights file: a damaged or swapped file under a shipped name is refused
# (a new model exported into WEIGHTS_DIR loads unchecked until its hash is pinned here).
SHIPPED_SHA256 = {
    "odp-small-v1": "3c971564bc2e13374a4d58293253c36b0d64a9816ce40e96579eabefe94eddc3",
    "odp-small-v2": "004b87806af2bb815a672acfa026130569205a13266f6a8c226036bcf7f90f4a",
    "odp-small-v3": "a7d96ccf0cc1514696033c363100c82e569e17a535644d9a659a1410566542a1",
    "odp-refine-x2-v1": "306c3cc62346c608afc7d80064c1b9a47d56d7759971571d112aff6e543f37d4",  # odp-small-v3's refinement stage until v2
    "odp-refine-x2-v2": "d012b5f88313297741adf6de24e5e4005467ebee0ec4579f8b8d253f13caaf3a",  # odp-small-v3's refinement stage until v3
    # v2's encoder with a perceptual decoder (same tokens and context models): odp-small-v3's refinement stage
    "odp-refine-x2-v3": "675a3e38adbec45bfd5d547cc7139dba57a5d3bfbeb3bc9217205a38908996d8",  # until v4
    # v3 with a lighter decoder head (1.25x faster per decoder call; step 3100 of odp-refine-x2-lite-fine): the
    # refinement stage of new files
    "odp-refine-x2-v4": "1911f42993191877bbe26e75751773924a9d66e134097450a0fee679ccb9eb3d",
    # the first stage of version-4 files: tokens refining an AVIF/WebP thumbnail (step 1400 of odp-refine-classic)
    "odp-classic-x2-v1": "185c74a3b097420c6eacd6fa67773d636aa77359ed3b4265407c46d0a4ec7bdc",
    # v1's encoder with a decoder fine-tuned for few tokens (step 800 of odp-classic-x2-short): new version-4 files
    "odp-classic-x2-v2": "9c4623f055b575699f5bca5ed1a0d85c7787daf146a2532118893e082cbd965c",
    # v2 with its decoder fine-tuned at 0 tokens on 1/4-1/8 thumbnails (step 2000 of odp-classic-x2-enlarge):
    # what version-4 files holding their thumbnail alone name (the smallest budgets)
    "odp-thumbnail-x2-v1": "69756d82fbce172a67aa60382f42b2bb810209d437c08ca82ecc7df116089b9d",
}
CONTEXT_DIR = Path(__file__).parents[1] / "entropy" / "weights"
CONTEXT_SHA256 = {
    "ctx16-v1": "322f3effa82c5f1be0343253839e75ec5f74360d8fecfc7a118cd8cb1e78c721",
    "ctx16-refine-v1": "7b21716fc47b51aa4b198cff6a1143a36d44e79fba6bfbacdc6d7f02296b4fea",
    "ctx16-refine-v2": "c26560079222d011e2ab7ce2b8dd77f346abb90d9a068eb37732ef87bac83d64",
    # the digit models (a token as four base-8 digits): what new files use; the ones above still decode theirs
    "ctx16d-v1": "00270a059b96bacd23a90566bc4ed160e5944b636a6123260e6915c433cb8609",
    "ctx16d-refine-v2": "92a24b545e39589706b83757fe0b078a92bfac1fdde5e0b8d1b3c4904ce74ed9",
    "ctx16d-classic-v1": "12bb7c073341c7c339e5f42689365ae6a74423b710d550bd4942aa9f205eec36",  # odp-classic-x2-v1's (and v2's) tokens
}


@dataclass(frozen=True)
class Entry:
    """One installed model as the bitstream sees it: its identity, tile layout and entropy models."""

    name: str
    sha256: bytes
    path: Path
    config: dict                             # the network's ModelConfig as a dict (codec/model.py)
    tables: PositionTables
    entropy_model: str                       # the id of `tables` (what version-1 files record)
    contexts: tuple = ()                     # (id, file) of the context models for this tokenizer, oldest first
    allocation: dict | None = None           # the encoder's allocation predictor (codec/allocation.py), if any
    refines: bytes = b""                     # a refinement stage's model: sha256 of the model it refines
    scale: int = 1                           # ... and how many times each side of its picture it codes
    base: str = ""                           # "classic": the first stage of a version-4 file, refining its base
                                             # thumbnail (codec/thumbnail.py), coded at `scale` times the image
    thumbnail_only: bool = False             # ... trained to draw such a file that holds no token layer (its
                                             # thumbnail alone): what those files name (thumbnail_model)

    @property
    def tile(self) -> int:
        return int(self.config["tile"])

    @property
    def out_shrink(self) -> int:
        """How many times smaller per side the decoder draws a tile than it codes it (codec/model.py)."""
        return int(self.config.get("out_shrink", 1))

    @property
    def out_tile(self) -> int:
        """Pixels per side of a decoded tile."""
        return self.tile // self.out_shrink

    @property
    def tokens(self) -> int:
        """Tokens per tile the model makes (the most a file can keep)."""
        return int(self.config["tokens"])

    @property
    def codebook_size(self) -> int:
        """Distinct token ids (the product of the FSQ levels)."""
        return int(np.prod(self.config["levels"]))

    @property
    def context(self) -> ContextModel | DigitContextModel | None:
        """The newest context model for this tokenizer, if any: what new files are coded with."""
        return load_context(self.contexts[-1][1]) if self.contexts else None

    def entropy(self, id: str) -> EntropyModel:
        """The probability model a file names; ModelNotFound if this model has no such one."""
        if id == self.tables.id:
            return self.tables
        for context_id, path in self.contexts:
            if id == context_id:
                return load_context(path)
        raise ModelNotFound(f"this file needs entropy model '{id}', which model '{self.name}' does not have")

    @property
    def best_entropy(self) -> EntropyModel:
        """What new files are coded with: the context model when one is installed."""
        return self.context or self.tables


def file_sha256(path: Path) -> bytes:
    st = path.stat()
    return _sha256_cached(path, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=32)
def _sha256_cached(path: Path, size: int, mtime_ns: int) -> bytes:
    """Hashing 20 MB takes tens of ms: do it once per file version, not per decode."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def installed() -> list[Path]:
    """The models' weights files (`<name>.safetensors`; files beside them with a dotted name, such as
    `<name>.allocation.safetensors`, belong to a model and are not models)."""
    return sorted(p for p in WEIGHTS_DIR.glob("*.safetensors") if "." not in p.stem)


def use_folders(models: Path, contexts: Path) -> None:
    """Read the models and context models from these folders instead of the package's (the binary's
    unpacked copies of its packed weights, codec/packed.py)."""
    global WEIGHTS_DIR, CONTEXT_DIR
    WEIGHTS_DIR, CONTEXT_DIR = models, contexts


def check_pinned(path: Path) -> bytes:
    """The file's sha256, after checking a shipped name's pinned hash (ModelNotFound if it differs)."""
    digest = file_sha256(path)
    pinned = SHIPPED_SHA256.get(path.stem)
    if pinned is not None and digest.hex() != pinned:
        raise ModelNotFound(f"weights file {path.name} does not match its pinned sha256 {pinned[:16]} "
                            f"(damaged or altered): reinstall ODP")
    return digest


def draws_whole_patches(config: dict) -> bool:
    """Whether a network of this shape can draw smaller than it codes (`out_shrink`): only a refinement stage,
    which sees the picture so far, and only to whole output patches of at least 4 pixels. Torch-free, so that
    a weights file is judged when read; the model asserts the same rule when built."""
    shrink = int(config.get("out_shrink", 1))
    return shrink == 1 or (bool(config.get("conditioned")) and shrink in (2, 4) and int(config["patch"]) // shrink >= 4)


@lru_cache(maxsize=16)  # more than the shipped models (11)
def entry_at(path: Path) -> Entry:
    """Read a weights file's metadata and entropy models (never its network, never a pickle)."""
    digest = check_pinned(path)
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
        try:
            freqs = f.get_tensor("entropy.freqs")
        except Exception:  # safetensors raises its own error type for a missing tensor
            raise ModelNotFound(f"weights file {path.name} has no entropy tables") from None
    try:
        config = json.loads(meta["config"])
        if (not isinstance(config, dict) or int(config["tile"]) < 1 or int(config["tokens"]) < 1
                or not draws_whole_patches(config)):
            raise ValueError("bad config")
        tables = PositionTables(freqs.astype("int64"))
        name, entropy_model = meta["name"], meta["entropy_model"]
    except (KeyError, TypeError, ValueError) as e:
        raise ModelNotFound(f"weights file {path.name} does not fit this version of ODP's model code") from e
    contexts = _contexts_for(digest)
    if not contexts and meta.get("tokens_of"):  # a decoder-only fine-tune: same tokens, same context models
        try:
            contexts = _contexts_for(bytes.fromhex(meta["tokens_of"]))
        except ValueError:
            raise ModelNotFound(f"weights file {path.name} names a malformed tokens_of hash") from None
    try:
        refines, scale = bytes.fromhex(meta.get("refines", "")), int(meta.get("scale", "1"))
    except ValueError:
        raise ModelNotFound(f"weights file {path.name} names a malformed refined model or scale") from None
    base, thumbnail_only = meta.get("base", ""), meta.get("thumbnail_only", "") == "1"
    if ((refines or base) and not (config.get("conditioned") and 2 <= scale <= 4) or base not in ("", "classic")
            or thumbnail_only and base != "classic"):
        raise ModelNotFound(f"weights file {path.name} does not fit this version of ODP's model code")
    return Entry(name, digest, path, config, tables, entropy_model, contexts, _allocation_for(path), refines, scale,
                 base, thumbnail_only)


def _contexts_for(tokenizer_sha256: bytes) -> tuple[tuple[str, Path], ...]:
    """(id, file) of the installed context models bound to these tokenizer weights, oldest first: the
    pinned ones in CONTEXT_SHA256's order, then any unpinned one by name. Only their metadata is read:
    a file loads the one it names (load_context)."""
    order = list(CONTEXT_SHA256)
    found = []
    for path in sorted(CONTEXT_DIR.glob("*.safetensors"), key=lambda p: (order.index(p.stem) if p.stem in order
                                                                           else len(order), p.stem)):
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
        if meta.get("tokenizer_sha256") == tokenizer_sha256.hex():
            if "id" not in meta:
                raise ModelNotFound(f"context model {path.name} does not fit this version of ODP: it has no id")
            found.append((meta["id"], path))
    return tuple(found)


@lru_cache(maxsize=8)
def load_context(path: Path) -> ContextModel | DigitContextModel:
    """An installed context model (pinned hash checked): the one-symbol kind, or the digit kind."""
    from safetensors.numpy import load_file

    pinned = CONTEXT_SHA256.get(path.stem)
    if pinned is not None and file_sha256(path).hex() != pinned:
        raise ModelNotFound(f"context model {path.name} does not match its pinned sha256 {pinned[:16]} "
                            f"(damaged or altered): reinstall ODP")
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
    kind = DigitContextModel if "digits" in meta else ContextModel
    try:
        return kind(meta["id"], load_file(str(path)), meta)
    except (KeyError, ValueError) as e:
        raise ModelNotFound(f"context model {path.name} does not fit this version of ODP: {e}") from None


def _allocation_for(path: Path) -> dict | None:
    """The allocation predictor beside a weights file (`<name>.allocation.safetensors`): arrays `coef`
    (one row per predicted token count) and `counts`; None when there is none."""
    from safetensors.numpy import load_file

    beside = path.with_name(f"{path.stem}.allocation.safetensors")
    if not beside.is_file():
        return None
    arrays = load_file(str(beside))
    coef, counts = arrays.get("coef"), arrays.get("counts")
    if coef is None or counts is None or coef.ndim != 2 or counts.shape != coef.shape[:1]:
        raise ModelNotFound(f"{beside.name} does not fit this version of ODP: reinstall ODP")
    return arrays


def path_of(name: str = DEFAULT_MODEL) -> Path:
    """The weights file of an installed model by name."""
    path = WEIGHTS_DIR / f"{name}.safetensors"
    if path not in installed():
        known = ", ".join(p.stem for p in installed()) or "none"
        raise ModelNotFound(f"model '{name}' is not installed (installed: {known})")
    return path


def path_by_hash(sha256: bytes, name_hint: str = "") -> Path:
    """The weights file whose sha256 is, or starts with, these bytes. Shipped files whose pinned hash
    fits are tried first, then name_hint, then the others: each try hashes a 20-MB file (about 20 ms),
    and a file names only a 4-byte prefix."""
    candidates = installed()
    candidates.sort(key=lambda p: (not SHIPPED_SHA256.get(p.stem, "").startswith(sha256.hex()), p.stem != name_hint))
    for path in candidates:
        if file_sha256(path).startswith(sha256):
            return path
    known = [name for name, pinned in SHIPPED_SHA256.items() if pinned.startswith(sha256.hex())]
    name_hint = name_hint or (known[0] if len(known) == 1 else "")  # a shipped model left out (the binary)
    named = f"model '{name_hint}'" if name_hint else "a model"
    raise ModelNotFound(f"this file needs {named} with weights {sha256.hex()[:16]}, which is not installed")


def _header(path: Path) -> dict:
    """A weights file's metadata alone (no hashing, no tensors): enough to see which role a model has, so
    looking for one does not hash and load every installed model (tens of ms each)."""
    try:
        st = path.stat()
        return _header_cached(path, st.st_size, st.st_mtime_ns)
    except Exception:  # an unreadable file: entry_at says why if it is ever the one asked for
        return {}


@lru_cache(maxsize=32)
def _header_cached(path: Path, size: int, mtime_ns: int) -> dict:
    with safe_open(str(path), framework="np") as f:
        return f.metadata() or {}


def _newest(matches) -> Entry | None:
    """The newest installed model (last by name: `-v2` after `-v1`) for which `matches(path, header)`; the
    others stay installed to decode the files they made."""
    for path in reversed(installed()):
        if matches(path, _header(path)):
            return entry_at(path)
    return None


def refinement_for(entry: Entry) -> Entry | None:
    """The installed refinement stage's model for `entry`'s pictures (the encoder appends its stage
    to `entry`'s files), or None; of several, the newest."""
    return _newest(lambda path, meta: meta.get("refines", "").lower() == entry.sha256.hex())


def base_model() -> Entry | None:
    """The installed model that refines a classic base thumbnail (version-4 files), or None; of several,
    the newest by name, as refinement_for picks."""
    return _newest(lambda path, meta: meta.get("base") == "classic" and meta.get("thumbnail_only") != "1")


def thumbnail_model(base: Entry) -> Entry:
    """The model a version-4 file on `base`'s tiles names when it holds no token layer: the newest installed
    one trained for that (same tile and scale, so the header reads alike), else `base` itself."""
    def fits(path: Path, meta: dict) -> bool:
        if meta.get("thumbnail_only") != "1":
            return False
        try:
            config = json.loads(meta["config"])
            return (int(config["tile"]), int(config["tokens"]), int(meta.get("scale", "1"))) == (
                base.tile, base.tokens, base.scale)
        except (KeyError, TypeError, ValueError):  # entry_at would refuse it: not this one
            return False
    return _newest(fits) or base


def find(name: str = DEFAULT_MODEL) -> Entry:
    return entry_at(path_of(name))


def find_by_hash(sha256: bytes, name_hint: str = "") -> Entry:
    return entry_at(path_by_hash(sha256, name_hint))
