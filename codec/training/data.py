"""Training-data preparation: `python -m odp.codec.training.data prepare --out DIR`.

Fetches Debian wallpaper packages, records each image's licence from the package's
copyright file, drops what is not a useful training photo (too small, few colours,
duplicates, anything matching an evaluation photo) and writes the rest into DIR with a
SOURCES.tsv that lists every image seen, kept or dropped, and why. See docs/data.md.

The same packages (same versions) and the same --include folder give the same files.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

PACKAGES = ("mate-backgrounds", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04",
            "plasma-workspace-wallpapers", "ukui-wallpapers", "gnome-backgrounds")
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}  # SVG/XML are drawings or metadata
MIN_SHORT_SIDE = 512    # smaller images are thumbnails/previews, useless at training scales
MIN_COLOURS = 2000      # unique colours in a 256x256 nearest-neighbour thumbnail
NEAR_BITS = 10          # max differing bits (of 256) between difference hashes of one picture
REPO = Path(__file__).resolve().parents[2]  # codec/training/data.py -> the repository root
EVAL_DIR = REPO.parent / "shared" / "data" / "eval"
COLUMNS = ("file", "package", "version", "licence", "copyright", "original_path",
           "sha256", "width", "height", "status", "reason")


class DataError(Exception):
    """A failure reported to the user as one line (fetch failed, bad folder)."""


# ---------------------------------------------------------------- fetching

def fetch(packages: list[str], into: Path) -> dict[str, Path]:
    """Download each package's .deb into `into`: `apt-get download` (works as any user with
    readable apt lists), else the URL that `apt-get --print-uris download` names, checked
    against the archive's SHA256. Raises DataError naming the package that failed."""
    debs = {}
    for pkg in packages:
        before = set(into.glob("*.deb"))
        r = subprocess.run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", pkg],
                           cwd=into, capture_output=True, text=True)
        new = sorted(set(into.glob("*.deb")) - before)
        if r.returncode != 0 or len(new) != 1:
            new = [_fetch_uri(pkg, into)]
        debs[pkg] = new[0]
    return debs


def _fetch_uri(pkg: str, into: Path) -> Path:
    r = subprocess.run(["apt-get", "--print-uris", "download", pkg], capture_output=True, text=True)
    m = re.search(r"^'(\S+)' (\S+) \d+ SHA256:([0-9a-f]{64})", r.stdout, re.M)
    if not m:
        err = (r.stderr.strip().splitlines() or ["not found"])[-1]
        raise DataError(f"cannot fetch package {pkg}: {err}")
    url, name, sha = m.groups()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            blob = resp.read()
    except OSError as e:
        raise DataError(f"cannot fetch package {pkg}: {url}: {e}") from None
    if hashlib.sha256(blob).hexdigest() != sha:
        raise DataError(f"cannot fetch package {pkg}: SHA256 mismatch for {url}")
    (into / name).write_bytes(blob)
    return into / name


def extract(deb: Path, into: Path) -> str:
    """Unpack a .deb into `into`; return the package version."""
    into.mkdir(parents=True, exist_ok=True)
    for cmd in (["dpkg-deb", "-x", str(deb), str(into)], ["dpkg-deb", "-f", str(deb), "Version"]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise DataError(f"cannot unpack {deb.name}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return r.stdout.strip()


# ---------------------------------------------------------------- licences

@dataclass
class Copyright:
    """A debian/copyright file: DEP-5 stanzas (patterns, licence, holders) or, for a
    free-form file, one package-wide licence summary."""
    stanzas: list[tuple[list[str], str, str]] = field(default_factory=list)
    package_wide: str = ""

    def licence_for(self, path: str) -> tuple[str, str]:
        """(licence, copyright) for an installed path. DEP-5 patterns name paths in the
        source tree (`nature/Aqua.jpg`, `16.04/Bridge.jpg`) while we have the installed
        one (`usr/share/backgrounds/mate/nature/Aqua.jpg`, `usr/share/backgrounds/Bridge.jpg`),
        so a pattern matches when it matches a trailing part of the path, or when its
        file-name part has no wildcard and equals the file name. As in DEP-5, the last
        matching stanza wins."""
        parts = path.strip("/").split("/")
        tails = ["/".join(parts[i:]) for i in range(len(parts))]
        found = None
        for patterns, lic, holders in self.stanzas:
            for p in patterns:
                rx = _glob(p)
                base = p.rsplit("/", 1)[-1]
                if any(rx.fullmatch(t) for t in tails) or (
                        base == parts[-1] and not set(base) & set("*?")):
                    found = (lic, holders)
                    break
        if found:
            return found
        return (self.package_wide or "unknown (not itemised in copyright file)", "")


def _glob(pattern: str) -> re.Pattern:
    """DEP-5 wildcards: `*` is any string (slashes included), `?` one character."""
    return re.compile(re.escape(pattern).replace(r"\*", ".*").replace(r"\?", "."))


def parse_copyright(text: str) -> Copyright:
    """Parse a debian/copyright file. Machine-readable (DEP-5) files give per-file stanzas;
    others give the distinct licence names they mention, as one package-wide string."""
    if not text.lstrip().startswith("Format:"):
        names = re.findall(r"Licen[cs]ed under (?:the )?(.+?)\.?\s*$", text, re.M)
        if re.search(r"GNU (?:Lesser |Library )?General Public License", text):
            names.append("GNU General Public License")
        return Copyright(package_wide="package-wide: " + ("; ".join(dict.fromkeys(names)) or "unknown"))
    out = Copyright()
    for para in re.split(r"\n\s*\n", text.strip()):
        fields, key = {}, None
        for line in para.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "files" in fields and "license" in fields:
            lic = fields["license"].splitlines()[0].strip()
            holders = " / ".join(h for h in fields.get("copyright", "").splitlines() if h)
            out.stanzas.append((fields["files"].split(), lic, holders))
            if fields["files"].split() == ["*"]:
                out.package_wide = lic
    return out


# ---------------------------------------------------------------- image tests

@dataclass
class Item:
    """One candidate image and what was decided about it."""
    name: str          # file name in DIR
    package: str
    version: str
    licence: str
    holders: str
    path: Path         # where it is on disk now
    original: str      # where it came from (path inside the package / source note)
    curated: bool = False  # from --include: skip the non-photo heuristics
    sha256: str = ""
    width: int = 0
    height: int = 0
    pixels_sha: str = ""
    thumb: Image.Image | None = None  # grey, float, 512 px on the long side
    dhash: np.ndarray | None = None
    colours: int = 0
    alpha_min: int = 255
    status: str = "kept"
    reason: str = ""


def dhash(im: Image.Image) -> np.ndarray:
    """256-bit difference hash: signs of horizontal steps in a 17x16 grey thumbnail. It
    survives resizing and recompression of one picture, which is what we need to catch
    the same wallpaper shipped at several resolutions."""
    g = np.asarray(im.convert("F").resize((17, 16), Image.BOX))
    return (g[:, 1:] > g[:, :-1]).ravel()


def centre_crop(im: Image.Image, aspect: float) -> Image.Image:
    """The largest centred crop of `im` with width/height = aspect."""
    w, h = im.size
    if w / h > aspect:
        cw = max(1, round(h * aspect))
        return im.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h))
    ch = max(1, round(w / aspect))
    return im.crop((0, (h - ch) // 2, w, (h - ch) // 2 + ch))


def hash_distance(a: Item, b: Item) -> int:
    """Differing dhash bits between two images; when their shapes differ, also compare the
    narrower one with the same-shaped centre crop of the wider one (KDE ships phone-format
    crops of some wallpapers) and take the smaller distance."""
    d = int(np.count_nonzero(a.dhash != b.dhash))
    ra, rb = a.width / a.height, b.width / b.height
    if abs(ra / rb - 1) > 0.02:
        wide, narrow = (a, b) if ra > rb else (b, a)
        crop = centre_crop(wide.thumb, narrow.width / narrow.height)
        d = min(d, int(np.count_nonzero(dhash(crop) != narrow.dhash)))
    return d


def count_colours(im: Image.Image) -> int:
    """Unique RGB colours in a 256x256 nearest-neighbour thumbnail (nearest invents no
    colours by blending): vector art and gradients have few, photos have many."""
    a = np.asarray(im.convert("RGB").resize((256, 256), Image.NEAREST), dtype=np.uint32)
    return len(np.unique((a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]))


def measure(item: Item) -> None:
    """Fill in the item's hashes, size and colour count from its file."""
    blob = item.path.read_bytes()
    item.sha256 = hashlib.sha256(blob).hexdigest()
    with Image.open(io.BytesIO(blob)) as im:
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            item.alpha_min = im.convert("RGBA").getchannel("A").getextrema()[0]
        rgb = im.convert("RGB")
    item.width, item.height = rgb.size
    item.pixels_sha = hashlib.sha256(rgb.tobytes() + repr(rgb.size).encode()).hexdigest()
    s = min(1.0, 512 / max(rgb.size))  # float: rounding to 8 bits flips signs in smooth areas
    size = (max(1, round(rgb.width * s)), max(1, round(rgb.height * s)))
    item.thumb = rgb.convert("L").convert("F").resize(size, Image.BOX)
    item.dhash = dhash(item.thumb)
    item.colours = count_colours(rgb)


def eval_items(eval_dir: Path) -> list[Item]:
    """Every image under the eval folder, measured, named by its path there."""
    out = []
    for p in sorted(eval_dir.rglob("*")):
        if p.suffix.lower() in PHOTO_SUFFIXES:
            out.append(Item(p.relative_to(eval_dir).as_posix(), "", "", "", "", p, ""))
            measure(out[-1])
    return out


def decide(items: list[Item], evals: list[Item]) -> None:
    """Set status/reason on every measured item. Rules, first that applies wins:
    too small, transparent, few colours (these three skipped for curated --include
    photos), eval duplicate, then exact and near duplicates, keeping the largest
    (ties: first in input order)."""
    for it in items:
        short = min(it.width, it.height)
        if it.status != "kept":  # unreadable
            continue
        if not it.curated and short < MIN_SHORT_SIDE:
            it.status, it.reason = "dropped", f"too small (short side {short} < {MIN_SHORT_SIDE})"
        elif not it.curated and it.alpha_min < 128:
            it.status, it.reason = "dropped", f"transparent (alpha down to {it.alpha_min})"
        elif not it.curated and it.colours < MIN_COLOURS:
            it.status, it.reason = "dropped", f"few colours ({it.colours} < {MIN_COLOURS})"
        else:
            for ev in evals:
                if ev.pixels_sha == it.pixels_sha or hash_distance(ev, it) <= NEAR_BITS:
                    it.status, it.reason = "dropped", f"eval duplicate ({ev.name})"
                    break
    kept: list[Item] = []
    order = sorted(range(len(items)), key=lambda i: (-items[i].width * items[i].height, i))
    for it in (items[i] for i in order):
        if it.status != "kept":
            continue
        for k in kept:
            if k.pixels_sha == it.pixels_sha:
                it.status, it.reason = "dropped", f"exact duplicate of {k.name}"
                break
            if hash_distance(k, it) <= NEAR_BITS:
                it.status, it.reason = "dropped", f"near duplicate of {k.name}"
                break
        else:
            kept.append(it)


# ---------------------------------------------------------------- collecting

def safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)


def package_items(pkg: str, root: Path, version: str) -> list[Item]:
    """The photo-format files a package installs (symlinks skipped: they point at a file
    already listed). Names are `<pkg>__<basename>`; if basenames repeat inside the package
    (KDE's `Name/contents/images/2560x1600.jpg`), all its names are instead the path below
    the folder the images share, `/` as `_`, without KDE's `contents` and `images` parts:
    `<pkg>__Name_2560x1600.jpg`."""
    text = (root / "usr/share/doc" / pkg / "copyright").read_text(errors="replace")
    cr = parse_copyright(text)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES
                   and p.is_file() and not p.is_symlink() and "/usr/share/doc/" not in str(p))
    rels = [p.relative_to(root).as_posix() for p in files]
    names = [p.name for p in files]
    if len({Path(n).stem for n in names}) < len(names):
        common = len(Path(os.path.commonpath(rels)).parts) if len(rels) > 1 else 0
        names = ["_".join(c for c in Path(r).parts[common:] if c not in ("contents", "images"))
                 for r in rels]
    names = [safe_name(n) for n in names]
    items = []
    for p, rel, n in zip(files, rels, names):
        lic, holders = cr.licence_for(rel)
        stem = n if p.suffix.lower() in (".jpg", ".jpeg", ".png") else Path(n).stem + ".png"
        items.append(Item(f"{pkg}__{stem}", pkg, version, lic, holders, p, "/" + rel))
    return items


def include_items(folder: Path) -> list[Item]:
    """Curated photos from a folder with a SOURCES.tsv (in it or its parent) whose `file`
    column is relative to that SOURCES.tsv; every photo must have a row."""
    tsv = next((d / "SOURCES.tsv" for d in (folder, folder.parent) if (d / "SOURCES.tsv").is_file()), None)
    if tsv is None:
        raise DataError(f"no SOURCES.tsv in {folder} or its parent")
    lines = tsv.read_text().splitlines()
    head = lines[0].split("\t")
    rows = {}
    for line in lines[1:]:
        row = dict(zip(head, line.split("\t")))
        rows[(tsv.parent / row["file"]).resolve()] = row
    items = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in PHOTO_SUFFIXES:
            continue
        row = rows.get(p.resolve())
        if row is None:
            raise DataError(f"{p} has no row in {tsv}")
        rel = p.relative_to(folder.parent).as_posix()
        pkg = p.parent.relative_to(folder.parent).as_posix()
        orig = " ".join(filter(None, (row.get("source_repo"), row.get("source_path")))) or rel
        name = safe_name(rel.replace("/", "__"))
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            name = Path(name).stem + ".png"
        items.append(Item(name, pkg, "-", row.get("licence_note", "see SOURCES.tsv"), "",
                          p, orig, curated=True))
    return items


def write(items: list[Item], out: Path) -> None:
    """Write kept images (JPEG/PNG bytes copied, others converted to RGB PNG) and
    SOURCES.tsv; remove files that an earlier run kept but this one does not."""
    out.mkdir(parents=True, exist_ok=True)
    tsv = out / "SOURCES.tsv"
    keep = {it.name for it in items if it.status == "kept"}
    if tsv.is_file():
        for line in tsv.read_text().splitlines()[1:]:
            f = line.split("\t")
            if f[-2:-1] == ["kept"] and f[0] not in keep:
                (out / f[0]).unlink(missing_ok=True)
    for it in items:
        if it.status != "kept":
            continue
        if it.path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            shutil.copyfile(it.path, out / it.name)
        else:
            with Image.open(it.path) as im:
                im.convert("RGB").save(out / it.name, format="PNG")
    rows = ["\t".join(COLUMNS)]
    for it in sorted(items, key=lambda i: (i.status != "kept", i.name)):
        vals = (it.name, it.package, it.version, it.licence, it.holders, it.original,
                it.sha256, it.width, it.height, it.status, it.reason)
        rows.append("\t".join(str(v).replace("\t", " ").replace("\n", " ") for v in vals))
    tsv.write_text("\n".join(rows) + "\n")


def summary(group: str, items: list[Item]) -> str:
    kept = sum(it.status == "kept" for it in items)
    reasons: dict[str, int] = {}
    for it in items:
        if it.status != "kept":
            r = it.reason.split(" (")[0].split(" of ")[0]
            reasons[r] = reasons.get(r, 0) + 1
    why = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
    return f"{group}: found {len(items)}, kept {kept}, dropped {len(items) - kept}" + (f" ({why})" if why else "")


def prepare(out: Path, packages: list[str], include: list[Path], eval_dir: Path) -> list[Item]:
    """Fetch, extract, measure, decide, write; print one summary line per source."""
    if not eval_dir.is_dir():
        raise DataError(f"eval folder {eval_dir} not found (needed for the eval-duplicate check; "
                        "pass --eval)")
    if out.resolve() == REPO or REPO in out.resolve().parents:
        raise DataError(f"--out {out} is inside the repository; keep training data outside it")
    for folder in include:
        if not folder.is_dir():
            raise DataError(f"--include folder {folder} not found")
    with tempfile.TemporaryDirectory(prefix="odp-data-") as tmp:
        tmp = Path(tmp)
        debs = fetch(packages, tmp)
        groups: dict[str, list[Item]] = {}
        for pkg in packages:
            root = tmp / "root" / pkg
            version = extract(debs[pkg], root)
            groups[pkg] = package_items(pkg, root, version)
        for folder in include:
            groups[str(folder)] = include_items(folder)
        items = [it for g in groups.values() for it in g]
        names = [it.name for it in items]
        if len(set(names)) != len(names):
            raise DataError("two inputs map to the same output name")
        for it in items:
            try:
                measure(it)
            except (OSError, ValueError) as e:  # a broken file is reported, not fatal
                it.status, it.reason = "dropped", f"unreadable ({e})"
        decide(items, eval_items(eval_dir))
        write(items, out)
    for group, its in groups.items():
        print(summary(group, its))
    kept = [it for it in items if it.status == "kept"]
    mb = sum((out / it.name).stat().st_size for it in kept) / 1e6
    print(f"total: kept {len(kept)} of {len(items)} images, {mb:.1f} MB in {out}")
    return items


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m odp.codec.training.data", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="build a training folder from Debian wallpaper packages")
    p.add_argument("--out", type=Path, required=True, help="output folder (outside the repo)")
    p.add_argument("--packages", nargs="*", default=list(PACKAGES), help="Debian packages to use")
    p.add_argument("--include", type=Path, action="append", default=[],
                   help="a curated photo folder with a SOURCES.tsv (repeatable)")
    p.add_argument("--eval", type=Path, default=EVAL_DIR, dest="eval_dir",
                   help="evaluation images that must never be included (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        prepare(args.out, args.packages, args.include, args.eval_dir)
    except (DataError, OSError) as e:
        print(f"odp data: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
