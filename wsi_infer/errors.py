"""Errors raised by wsi-infer.

Every error derives from :class:`WsiInferError` and carries the process exit code the CLI
returns for it.  Each also inherits the built-in exception that callers would already catch
(``FileNotFoundError``, ``ValueError``...), as zarr-python does.

Exit codes (also in ``docs/errors.md``):

====  ==========================================================
0     success
1     unexpected internal error (a bug: please report it)
2     bad slide input (cannot open, unsupported, corrupt, no mpp)
3     bad model (card invalid, checksum mismatch, unsafe file, bad output)
4     device or backend not available
5     output problem (exists, not writable, disk full)
130   interrupted (Ctrl-C / SIGTERM)
====  ==========================================================
"""

from __future__ import annotations


class WsiInferError(Exception):
    """Base class of all wsi-infer errors."""

    exit_code: int = 1


class SlideError(WsiInferError):
    """A slide cannot be used."""

    exit_code = 2


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The slide path does not exist."""


class SlideOpenError(SlideError, OSError):
    """No reader could open the file as a slide."""


class SlideReadError(SlideError, OSError):
    """A region of an opened slide failed to decode."""


class MissingMppError(SlideError, ValueError):
    """The slide has no (valid) microns-per-pixel and none was given."""


class ModelError(WsiInferError, ValueError):
    """A model card or model file is invalid, unsafe or gives bad output."""

    exit_code = 3


class ChecksumError(ModelError):
    """A model file does not match the sha256 in its card."""


class DeviceNotAvailableError(WsiInferError, RuntimeError):
    """The requested device or backend is not available here."""

    exit_code = 4


class OutputError(WsiInferError, OSError):
    """The output cannot be written."""

    exit_code = 5



class Cancelled(WsiInferError):
    """The run was cancelled by the caller (e.g. a Cancel button)."""

    exit_code = 130
