"""amani-observability: request IDs, metrics, tracing, Sentry and alerts for ASGI apps.

    from amani_observability import ObservabilitySettings, instrument

    app = instrument(FastAPI(), ObservabilitySettings())

Importing the package has no side effects: nothing is registered, initialised or
configured until instrument() (or configure_logging()) is called.
"""

from __future__ import annotations

from ._instrument import instrument
from ._version import __version__
from .exceptions import ConfigurationError, ObservabilityError
from .logs import configure_logging
from .request_id import get_request_id
from .settings import ObservabilitySettings

__all__ = [
    "ConfigurationError",
    "ObservabilityError",
    "ObservabilitySettings",
    "__version__",
    "configure_logging",
    "get_request_id",
    "instrument",
]
