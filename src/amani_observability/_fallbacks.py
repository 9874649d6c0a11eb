"""Where a shortcut beneath an SDK failed for one request, and what was done instead.

The request itself never notices; the operator hears about it once a minute at most,
with how often it happened since the last line, because a failing shortcut usually means
an SDK release changed something it relies on.
"""

from __future__ import annotations

import logging
from time import monotonic

logger = logging.getLogger("amani_observability")

FALLBACK_TAKEN = "%s failed %d time(s) (%s): %s. Is this SDK release a supported one?"
# Seconds between two lines about the same shortcut.
LOG_INTERVAL = 60.0

# Per shortcut: (failures since the last line, when that line was written).
_failures: dict[str, tuple[int, float]] = {}


def fallback_taken(shortcut: str, exc: BaseException, instead: str) -> None:
    """Count a failure of `shortcut`; log it, with what happened `instead`, when no line
    about it was logged in the last minute."""
    count, logged_at = _failures.get(shortcut, (0, float("-inf")))
    count += 1
    now = monotonic()
    if now - logged_at < LOG_INTERVAL:
        _failures[shortcut] = (count, logged_at)
        return
    _failures[shortcut] = (0, now)
    logger.warning(FALLBACK_TAKEN, shortcut, count, f"{type(exc).__name__}: {exc}", instead)


def failures() -> dict[str, int]:
    """Failures per shortcut not yet logged (for tests)."""
    return {shortcut: count for shortcut, (count, _) in _failures.items()}


def reset() -> None:
    _failures.clear()


__all__ = ["fallback_taken"]
