"""What every concern may read about the current request: its ID and its trace.

Tracing installs a getter when it is enabled; until then (and when tracing is off)
`current_trace_ids()` returns None at the cost of one function call.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

# The ID of the request this context is handling (set by the request ID hooks, read by logs).
request_id_var: ContextVar[str | None] = ContextVar("amani_request_id", default=None)

# (trace_id as 32 hex digits, span_id as 16 hex digits) of the current sampled span.
TraceIds = tuple[str, str]


def _no_trace() -> TraceIds | None:
    return None


_getter: Callable[[], TraceIds | None] = _no_trace


def set_trace_ids_getter(getter: Callable[[], TraceIds | None] | None) -> None:
    """Install (or with None, remove) the function that reads the current trace."""
    global _getter
    _getter = getter or _no_trace


def current_trace_ids() -> TraceIds | None:
    """The current request's sampled trace and span IDs, or None."""
    return _getter()
