"""Exceptions raised by amani-observability.

    ObservabilityError
     └── ConfigurationError (also a ValueError): bad settings or a bad call to instrument()

Delivery problems (an unreachable collector, Sentry or webhook) never raise into the
application; they are logged and reported in results instead.
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "ObservabilityError"]


class ObservabilityError(Exception):
    """Root of every exception this library raises."""


class ConfigurationError(ObservabilityError, ValueError):
    """A setting has a value we cannot use, or instrument() was called wrongly.

    Raised at start-up, never on the request path. The message names the
    environment variable, what is wrong with the value and what is accepted.
    """
