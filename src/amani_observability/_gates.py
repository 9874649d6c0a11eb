"""Which releases of each SDK the test matrix runs, and whether the installed one is one.

A shortcut beneath an SDK's public API (the `*_seam.py` modules) is taken only for releases
from the oldest `make test-floors` installs to the newest `make test` installs: for any
other, the public API does the work.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

# package: (oldest, newest) release the test matrix runs.
TESTED_RELEASES: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "opentelemetry-api": ((1, 29, 0), (1, 45, 2)),
    "opentelemetry-sdk": ((1, 29, 0), (1, 45, 2)),
    "sentry-sdk": ((2, 19, 2), (2, 76, 0)),
}


def installed(package: str) -> str:
    """The installed release of `package`, or "not installed"."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def release_tuple(text: str) -> tuple[int, ...] | None:
    """(1, 45, 2) for "1.45.2"; None for a pre-release, a local build or anything else."""
    parts = text.split(".")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        return None
    return tuple(int(part) for part in parts)


def tested(package: str) -> bool:
    """Whether the installed release of `package` is one the test matrix runs."""
    release = release_tuple(installed(package))
    oldest, newest = TESTED_RELEASES[package]
    return release is not None and oldest <= release <= newest


__all__ = ["TESTED_RELEASES", "installed", "tested"]
