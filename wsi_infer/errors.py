"""Every error wsi-infer raises, with the exit code the CLI returns and the HTTP status the
service answers for it.

Every error derives from :class:`WsiInferError`.  Each also inherits the built-in exception
that callers would already catch (``FileNotFoundError``, ``ValueError``...), as zarr-python
does.  ``docs/errors.md`` holds the table :func:`error_table` makes; a test keeps the two equal.

Exit codes:

====  ==========================================================
0     success
1     unexpected internal error (a bug: please report it)
2     bad input (slide: cannot open, unsupported, corrupt, no mpp; batch list or manifest)
3     bad model (card invalid, checksum mismatch, unsafe file, bad output)
4     device or backend not available
5     output problem (exists, in use by another run, not writable, disk full)
6     a batch finished but some slides failed (``wsi-infer batch`` only)
130   interrupted (Ctrl-C / SIGTERM)
====  ==========================================================
"""

from __future__ import annotations


class WsiInferError(Exception):
    """Base class of all wsi-infer errors."""

    exit_code: int = 1
    http_status: int = 500


class SlideError(WsiInferError):
    """A slide cannot be used."""

    exit_code = 2
    http_status = 422


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The slide path does not exist."""

    http_status = 404


class SlideOpenError(SlideError, OSError):
    """No reader could open (or parse) the file as a slide."""


class SlideReadError(SlideError, OSError):
    """A region of an opened slide failed to decode."""


class MissingMppError(SlideError, ValueError):
    """The slide has no (valid) microns-per-pixel and none was given."""


class SlideForbiddenError(SlideError, PermissionError):
    """A slide path points outside the service's slides root."""

    http_status = 403


class InputListError(WsiInferError, ValueError):
    """A batch input (slide list, CSV manifest) is malformed."""

    exit_code = 2
    http_status = 400


class RegionError(WsiInferError, ValueError):
    """A requested region lies outside the slide."""

    exit_code = 2
    http_status = 400


class RegionTooLargeError(RegionError):
    """A region needs more output pixels than the service allows."""

    http_status = 413


class ModelError(WsiInferError, ValueError):
    """A model card or model file is invalid, unsafe or gives bad output."""

    exit_code = 3


class ChecksumError(ModelError):
    """A model file does not match the sha256 in its card."""


class UnknownModelError(ModelError, KeyError):
    """A request names a model the service has not loaded."""

    http_status = 404

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DeviceNotAvailableError(WsiInferError, RuntimeError):
    """The requested device or backend is not available here."""

    exit_code = 4
    http_status = 503


class QueueFullError(WsiInferError, RuntimeError):
    """The service's inference queue cannot take the tiles now; retry after
    ``retry_after_s`` seconds."""

    http_status = 503

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OutputError(WsiInferError, OSError):
    """The output cannot be written."""

    exit_code = 5


class OutputInUseError(OutputError, BlockingIOError):
    """Another run owns the output."""

    http_status = 409


class OverlayError(WsiInferError, ValueError):
    """A folder is not a wsi-infer overlay, or not one that may be used."""

    exit_code = 2
    http_status = 422


class IncompleteOverlayError(OverlayError):
    """The overlay's run has not finished (status ``running``) or failed."""


class ServeSetupError(WsiInferError):
    """The service cannot start (missing extra, bad option)."""

    exit_code = 2


class Cancelled(WsiInferError):
    """The run was cancelled by the caller (a Cancel button, a client that went away)."""

    exit_code = 130
    http_status = 499


def all_errors() -> list[type[WsiInferError]]:
    """Every error class, depth first in definition order."""
    found: list[type[WsiInferError]] = []

    def visit(cls: type[WsiInferError]) -> None:
        found.append(cls)
        for sub in cls.__subclasses__():
            if sub.__module__ == __name__ and sub not in found:
                visit(sub)

    visit(WsiInferError)
    return found


def error_table() -> str:
    """The Markdown table of ``docs/errors.md``: class, parent, exit code, HTTP status, meaning."""
    rows = ["| error | is a | exit | HTTP | meaning |", "|---|---|---:|---:|---|"]
    for cls in all_errors():
        parents = ", ".join(b.__name__ for b in cls.__bases__)
        doc = " ".join((cls.__doc__ or "").split())
        rows.append(f"| `{cls.__name__}` | {parents} | {cls.exit_code} | {cls.http_status} | {doc} |")
    return "\n".join(rows)

