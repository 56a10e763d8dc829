"""The errors and warnings a user can meet, and their one-line wording (no torch, no model).

The API raises these; the command line and the Pillow plugin turn any of them into one line
with `one_line`, so the wording lives here alone.
"""
from __future__ import annotations

from ..formats.container import FormatError

__all__ = ["FormatError", "ModelNotFound", "OptionError", "InputError", "OdpWarning", "one_line", "printable"]


class ModelNotFound(LookupError):
    """No installed weights match a name or hash (the message names what is missing)."""


class OptionError(ValueError):
    """An encoding or decoding option out of range, or options that do not go together; `option`
    names the option (as EncodeOptions spells it) so that the CLI can name its flag."""

    def __init__(self, message: str, option: str = ""):
        super().__init__(message)
        self.option = option


class InputError(ValueError):
    """An input image that cannot be read: not an image, damaged, or over the pixel limit (the message
    names the input and says which, in one line)."""


class OdpWarning(UserWarning):
    """Something the user should hear about, but not an error (alpha dropped, file cut short)."""


def printable(text: str) -> str:
    """Text from an untrusted file, with control characters (terminal escapes) replaced."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def one_line(exc: BaseException) -> str:
    """The first line of an error's message, printable; its type's name when it has none."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return printable(text)
