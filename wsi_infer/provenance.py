"""Where an overlay came from: software, model, slide fingerprint, parameters."""

from __future__ import annotations

import hashlib
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

FINGERPRINT_BLOCK = 1 << 20


def slide_fingerprint(path: Path) -> str:
    """sha256 of the file size and its first and last MiB: cheap on 5 GB slides, and it changes
    when a file is replaced, truncated or re-scanned.  Folders (DICOM series) hash their listing."""
    digest = hashlib.sha256()
    if path.is_dir():
        for child in sorted(path.iterdir()):
            digest.update(f"{child.name}:{child.stat().st_size};".encode())
        return "dir-sha256:" + digest.hexdigest()
    size = path.stat().st_size
    digest.update(str(size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(FINGERPRINT_BLOCK))
        handle.seek(max(0, size - FINGERPRINT_BLOCK))
        digest.update(handle.read(FINGERPRINT_BLOCK))
    return "head-tail-sha256:" + digest.hexdigest()


def software() -> dict[str, Any]:
    """Versions of wsi-infer and the libraries that shape the output."""
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("wsi-infer", "numpy", "dask", "zarr", "openslide-python", "openslide-bin",
                    "tifffile", "onnxruntime", "torch"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            continue
    return versions


def now() -> str:
    """The current UTC time in ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
