"""Pillow plugin for .odp images: importing this module registers the format (or call odp.register_pillow()).

    import odp.formats.pillow
    im = Image.open("photo.odp")     # found by magic bytes; extension .odp, MIME type image/x-odp
    im.save("small.odp", tokens=32)  # any odp.EncodeOptions field: bytes=2000, quality=40, metadata=("icc",), ...

Opening reads only the header; load() runs the model, found by the weights hash in the file (a missing
one raises odp.ModelNotFound naming it). A file cut short decodes from the layers that arrived, with an
odp.OdpWarning. Set `im.odp_tokens = N` before load() to decode only the first N tokens per tile.

An unknown save option is refused (odp.OptionError), as Pillow's WebP plugin refuses bad values.
Decoding and encoding go through the public API (`odp.decode`, `odp.encode`), imported when an image
is loaded or saved: this module is the Pillow face of that API, the one part of formats/ that calls
above it (docs/architecture.md).

draft() and reduce() are left as Pillow's defaults: fewer tokens do not give a smaller image, only a
coarser one, and thumbnails measured from fewer tokens are clearly worse at every scale (docs/api.md).
"""
from __future__ import annotations

from typing import IO

from PIL import Image, ImageFile

from . import container

FORMAT = "ODP"


def _accept(prefix: bytes) -> bool:
    return container.is_odp(prefix)


class OdpImageFile(ImageFile.ImageFile):
    format = FORMAT
    format_description = "ODP learned image codec"

    def _open(self) -> None:
        head = self.fp.read(16)
        n = container.header_size(head)  # FormatError (a ValueError) if the declared size is absurd
        if n is None:
            raise SyntaxError("not an ODP file")
        h, table, _ = container.read_header(head + self.fp.read(n - len(head)))  # FormatError if corrupt or cut short
        self._size = h.display_size  # a file coded at a smaller size decodes enlarged to this
        self._mode = "L" if h.gray else "RGB"
        self.info.update(odp_model=h.model_name or h.model_id.hex(), odp_adaptive=h.adaptive,
                         odp_coded_size=(h.width, h.height),
                         odp_tokens=max(h.counts(table[-1][0] if table else 0)))  # of the fullest tile, as stored
        if h.icc:
            self.info["icc_profile"] = h.icc
        if h.exif:
            self.info["exif"] = h.exif
        self.odp_tokens: int | None = None  # set before load() to decode only the first N tokens per tile
        self.odp_device = "auto"
        self.tile = [(FORMAT, (0, 0) + self.size, 0, None)]

    def load_prepare(self) -> None:
        # the decoder reads the tokens and device when loading starts, so they can be set after open
        self.tile = [(name, box, offset, (self.odp_tokens, self.odp_device)) for name, box, offset, _ in self.tile]
        super().load_prepare()


class OdpDecoder(ImageFile.PyDecoder):
    _pulls_fd = True

    def decode(self, buffer: bytes | Image.SupportsArrayInterface) -> tuple[int, int]:
        import odp

        assert self.fd is not None
        self.fd.seek(0)
        tokens, device = self.args
        im = odp.decode(self.fd.read(), tokens=tokens, device=device)
        self.set_as_raw(im.tobytes())
        return -1, 0


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    import odp

    # the keywords of im.save() are odp.EncodeOptions fields, checked before any work; "format" and
    # "save_all" are Pillow's own (a one-frame format has nothing more to save)
    keywords = {k: v for k, v in im.encoderinfo.items() if k not in ("format", "save_all")}
    options = odp.EncodeOptions.from_keywords(keywords, what="ODP save option")
    fp.write(odp.encode(im, options=options))


def register() -> None:
    """Register ODP with Pillow: open by magic bytes, save by format name or the .odp extension."""
    Image.register_open(FORMAT, OdpImageFile, _accept)
    Image.register_decoder(FORMAT, OdpDecoder)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, ".odp")
    Image.register_mime(FORMAT, container.MIME_TYPE)


register()
