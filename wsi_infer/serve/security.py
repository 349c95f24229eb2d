"""What a request may reach: slides under the root folder only; the bearer token."""

from __future__ import annotations

import hmac
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import SlideForbiddenError, SlideNotFoundError


def resolve_slide(root: Path, name: str) -> Path:
    """The real path of slide ``name`` (relative, ``/``-separated) under ``root``.

    Refused with :class:`~wsi_infer.errors.SlideForbiddenError`: absolute paths (POSIX or Windows style), ``..``
    components, backslashes, NUL bytes, and anything whose real path (after following
    symlinks) is not inside the real ``root``.  :class:`~wsi_infer.errors.SlideNotFoundError` when nothing is there.
    ``root`` must already be resolved.
    """
    if not name or "\x00" in name or "\\" in name:
        raise SlideForbiddenError(f"invalid slide path {name!r}: use a relative path with '/' separators")
    posix = PurePosixPath(name)
    if posix.is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        raise SlideForbiddenError(f"slide path {name!r} is absolute; give it relative to the slides root")
    if ".." in posix.parts:
        raise SlideForbiddenError(f"slide path {name!r} contains '..'; it must stay inside the slides root")
    candidate = root.joinpath(*posix.parts)
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError as exc:
        raise SlideNotFoundError(f"no slide {name!r} under the slides root") from exc
    except (OSError, RuntimeError) as exc:  # symlink loops, permissions
        raise SlideForbiddenError(f"slide path {name!r} cannot be resolved: {exc.__class__.__name__}") from exc
    if real != root and root not in real.parents:
        raise SlideForbiddenError(f"slide path {name!r} leads outside the slides root")
    if not (real.is_file() or real.is_dir()):  # DICOM slides are folders
        raise SlideNotFoundError(f"{name!r} is not a slide file")
    return real


def token_matches(expected: str | None, given: str | None) -> bool:
    """Whether the bearer token a request gave is the service's (always, without one)."""
    if not expected:
        return True
    if not given:
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def scrub(message: str, root: Path) -> str:
    """An error message without the server's absolute slides-root path."""
    return message.replace(str(root) + os.sep, "").replace(str(root), "<slides-root>")
