"""Transcode many images on a Ray cluster: `odp encode|decode SRC... -o OUT/ --cluster ADDRESS`, odp.transcode.

The `ray` extra (`pip install "odp[ray]"`). Ray Data runs the work: the inputs become a dataset, and
an actor pool (the model loaded once per actor; one GPU per actor where the cluster has GPUs, else a
share of the CPU threads) takes them a few files at a time. Each actor reads its files, encodes them
with their tiles batched through the network (odp.encode_batch: the same files as `odp encode` makes),
writes each output atomically into OUT, and returns one row per input: done, skipped (its output is
already there and valid: a rerun continues where a stopped one ended), or failed with its one-line
error. The names and rules are the local command's: OUT/<stem>.odp (.png for decode), no overwrite
without `force`, a bad input reported and skipped.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError, OdpWarning, one_line
from .options import EncodeOptions



@dataclass
class Summary:
    """What a transcode did: counts, bytes, pixels, seconds, and each failure's one line."""

    done: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    pixels: int = 0
    seconds: float = 0.0

    def line(self, verb: str) -> str:
        mp_s = self.pixels / 1e6 / self.seconds if self.seconds > 0 else 0.0
        total = self.done + self.skipped + len(self.failed)
        return (f"{total} files: {self.done} {verb}, {self.skipped} skipped (valid output already there), "
                f"{len(self.failed)} failed; {self.bytes_in:,} bytes in, {self.bytes_out:,} bytes out; "
                f"{mp_s:.3g} MP/s over {self.seconds:.1f} s")


def output_path(src: str, out: Path, decode: bool) -> Path:
    """Where `src`'s result goes: its name in OUT with .odp (encode) or .png (decode)."""
    return out / Path(src).with_suffix(".png" if decode else ".odp").name


def connect(cluster: str, quiet: bool = True):
    """Start or join Ray: "local" starts a local instance on this machine's cores, "auto" joins the
    running cluster ($RAY_ADDRESS), anything else is a cluster address. Returns the ray module.
    `quiet`: Ray's own log lines (start-up, execution plans, progress) stay in its log files."""
    if quiet:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is the part ODP needs)
    except ImportError:
        raise ModuleNotFoundError('--cluster needs the Ray extra: pip install "odp[ray]"') from None
    if not ray.is_initialized():
        if cluster == "local":
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR if quiet else logging.INFO)
        else:
            ray.init(address=cluster, log_to_driver=False, logging_level=logging.ERROR if quiet else logging.INFO)
    if quiet:
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return ray


def _valid_output(dst: Path, decode: bool) -> bool:
    """An existing output a rerun may keep: a whole .odp file (odp info --verify's checks), or an
    image Pillow reads whole."""
    try:
        if decode:
            from PIL import Image

            with Image.open(dst) as im:
                im.load()
            return True
        from .. import verify

        verify(dst.read_bytes())
        return True
    except Exception:  # noqa: BLE001  (anything unreadable is not a valid output)
        return False


class Transcoder:
    """One Ray Data actor: loads the model once, then transcodes batches of input rows."""

    def __init__(self, out: str, options: EncodeOptions | None, decode: bool, force: bool, limit: int | None,
                 threads: int | None):
        if threads:
            os.environ["ODP_THREADS"] = str(threads)  # the network's CPU threads in this actor
        from PIL import Image

        import odp

        Image.MAX_IMAGE_PIXELS = None  # our pixel limit, checked from each header (imaging.open_image)
        self.out, self.options, self.decode, self.force, self.limit = Path(out), options, decode, force, limit
        odp.model_info()  # the model is installed and whole before the first batch

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        import odp

        rows = {k: [] for k in ("src", "dst", "status", "error", "bytes_in", "bytes_out", "pixels")}
        paths = [str(p) for p in batch["path"]]
        raws = list(batch["bytes"]) if "bytes" in batch else [None] * len(paths)
        work = []  # (src, dst, input bytes, image) of the inputs to encode, in order
        for src, raw in zip(paths, raws):
            dst = output_path(src, self.out, self.decode)
            try:
                if dst.exists() and not self.force:
                    if _valid_output(dst, self.decode):
                        self._row(rows, src, dst, "skipped")
                        continue
                    raise InputError(f"{dst}: already exists and is not a whole output (use --force to overwrite)")
                raw = bytes(raw) if raw is not None else _read(src)
                if self.decode:
                    self._decode_one(rows, src, dst, raw)
                else:
                    from .imaging import open_image

                    work.append((src, dst, len(raw), open_image(raw, src, self.limit)))
            except Exception as e:  # noqa: BLE001  (each input fails alone, in one line)
                self._row(rows, src, dst, "failed", error=_message(src, e))
        for group in odp.encode_groups((((src, dst, n_in), im) for src, dst, n_in, im in work), self.options):
            for (src, dst, n_in), im, data in group:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", OdpWarning)  # an encode warning is not a failure
                        data = data if data is not None else odp.encode(im, options=self.options)
                    _write(dst, self.force, lambda f, d=data: f.write(d))
                    self._row(rows, src, dst, "done", bytes_in=n_in, bytes_out=len(data), pixels=im.width * im.height)
                except Exception as e:  # noqa: BLE001  (each input fails alone, in one line)
                    self._row(rows, src, dst, "failed", error=_message(src, e))
        return rows

    def _row(self, rows, src, dst, status, error="", bytes_in=0, bytes_out=0, pixels=0) -> None:
        for k, v in zip(rows, (src, str(dst), status, error, bytes_in, bytes_out, pixels)):
            rows[k].append(v)

    def _decode_one(self, rows, src, dst, raw) -> None:
        import odp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OdpWarning)
            im = odp.decode(raw, max_pixels=self.limit)
        size = _write(dst, self.force, lambda f: odp.save_decoded(im, f))
        self._row(rows, src, dst, "done", bytes_in=len(raw), bytes_out=size, pixels=im.width * im.height)


def _read(src: str) -> bytes:
    from ..formats.files import read_bounded

    with open(src, "rb") as f:
        return read_bounded(f)


def _write(dst: Path, force: bool, save: Callable) -> int:
    from ..formats.files import write_atomic

    write_atomic(dst, save, overwrite=force)
    return dst.stat().st_size


def _message(src: str, e: Exception) -> str:
    """One line naming the input (InputError already does)."""
    if isinstance(e, InputError):
        return one_line(e)
    if isinstance(e, FileNotFoundError):
        return f"{src}: no such file"
    return f"{src}: {one_line(e)}"


def transcode(sources: Iterable[str | os.PathLike] | Any, out: str | os.PathLike, options: EncodeOptions | None = None,
              decode: bool = False, cluster: str = "local", force: bool = False, threads: int | None = None,
              actors: int | None = None, files_per_batch: int = 8, max_pixels: int | None = None,
              progress: bool = True, on_failure: Callable[[str], None] | None = None) -> Summary:
    """Encode (or `decode`) many files into the folder `out` on a Ray cluster; returns a Summary.

    `sources`: paths, or a Ray Dataset with a "path" column (and "bytes", as
    `ray.data.read_binary_files(..., include_paths=True)` gives, which are used instead of reading
    the file again). `cluster`: "local", "auto" or an address (see connect). `threads`: CPU threads
    per actor (default 1 on a CPU-only cluster); `actors`: how many (default: one per GPU, else the
    cluster's CPUs over `threads`). Inputs whose output exists and is valid are skipped, unless
    `force`, which also lets an output be overwritten. `on_failure` hears each failure's line as it
    comes; the Summary lists them too.
    """
    from .. import pixel_limit

    options = options or EncodeOptions()
    limit = pixel_limit(max_pixels)
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"{out}: output folder does not exist")
    ray = connect(cluster, quiet=not progress)
    import ray.data

    summary, t0 = Summary(), time.time()
    fail = on_failure or (lambda line: None)
    ds = sources if isinstance(sources, ray.data.Dataset) else None
    paths = [str(r["path"]) for r in ds.select_columns(["path"]).iter_rows()] if ds is not None else [str(s) for s in sources]
    claimed: dict[Path, str] = {}
    todo = []  # the inputs to transcode: each output name's first
    for src in paths:  # two inputs with one output name: the second fails, as in the local command
        dst = output_path(src, out, decode)
        if dst in claimed:
            line = f"{src}: its output {dst} is already the output of {claimed[dst]}"
            summary.failed.append(line)
            fail(line)
            continue
        claimed[dst] = src
        todo.append(src)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    threads = threads or (max(1, int(resources.get("CPU", 1)) // gpus) if gpus else 1)
    # a dataset reads its files in tasks of 1 CPU: actors taking every CPU would leave them none
    spare = 0 if ds is None or gpus else 1
    actors = max(1, min(len(todo), actors or (gpus or int(resources.get("CPU", 1)) // threads - spare)))
    if ds is None:  # a few blocks per actor, so that every actor gets work
        ds = ray.data.from_items([{"path": src} for src in todo], override_num_blocks=min(len(todo), 4 * actors) or 1)
    elif len(todo) < len(paths):  # drop the rows whose output name another path has (a path listed twice
        first = set(todo)           # stays: the driver reported it, and its second row finds the output made)
        ds = ds.filter(lambda row: str(row["path"]) in first)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    results = ds.map_batches(
        Transcoder, batch_size=files_per_batch, compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads,
        num_gpus=1 if gpus else 0,
        fn_constructor_kwargs={"out": str(out.resolve()), "options": options, "decode": decode, "force": force,
                               "limit": limit, "threads": threads})
    for row in results.iter_rows():
        if row["status"] == "failed":
            summary.failed.append(row["error"])
            fail(row["error"])
        elif row["status"] == "skipped":
            summary.skipped += 1
        else:
            summary.done += 1
            summary.bytes_in += int(row["bytes_in"])
            summary.bytes_out += int(row["bytes_out"])
            summary.pixels += int(row["pixels"])
    summary.seconds = time.time() - t0
    return summary
