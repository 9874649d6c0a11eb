"""Where the library reaches beneath FastAPI's public API: its native request spans.

FastAPI 0.165 and later open their own SERVER span (and operation spans under it) as soon
as a global TracerProvider exists, outside our middleware: every request would get two
server spans and pay twice. `FastAPI(telemetry={"tracing": False})` is the documented way
to switch them off (docs/tracing.md); for an app built without it, the same setting is
applied here, where the app's telemetry settings are the dict FastAPI keeps them in. Older
FastAPI releases have no native spans and nothing to switch off.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("amani_observability.tracing")


def quiet_fastapi_tracing(app: object) -> None:
    """Switch off FastAPI's native request span for an app we trace ourselves; never raises."""
    config = getattr(app, "_telemetry", None)
    if isinstance(config, dict) and config.get("tracing"):
        config["tracing"] = False
        logger.debug("switched off FastAPI's native request spans: ours replace them")


__all__ = ["quiet_fastapi_tracing"]
