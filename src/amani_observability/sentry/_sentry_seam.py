"""Where the library reaches beneath sentry-sdk's public API, and the version gates around it.

Every supported sentry-sdk (2.19.2 up to, not including, 3) keeps each request's scopes in
the two context variables imported here. The OpenTelemetry trace bridge differs by version:
sentry-sdk >= 2.44 takes an external trace source (`register_external_propagation_context`)
and uses it for events and outgoing requests; older releases get the same trace context on
their events from a global event processor of ours.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sentry_sdk
from sentry_sdk import scope as _scope_module
from sentry_sdk.scope import _current_scope as current_scope_var
from sentry_sdk.scope import _isolation_scope as isolation_scope_var

__all__ = [
    "NATIVE_TRACE_BRIDGE",
    "SDK_VERSION",
    "answer_recording_transport",
    "bridge_traces",
    "current_scope_var",
    "isolation_scope_var",
    "trace_bridge",
    "unbridge_traces",
]

TraceSource = Callable[[], "tuple[str, str] | None"]

SDK_VERSION: str = sentry_sdk.VERSION

_register: Callable[[TraceSource], None] | None = getattr(
    _scope_module, "register_external_propagation_context", None
)
_remove: Callable[[], None] | None = getattr(
    _scope_module, "remove_external_propagation_context", None
)
# Whether the SDK takes the OpenTelemetry trace as an external source (sentry-sdk >= 2.44).
NATIVE_TRACE_BRIDGE = _register is not None and _remove is not None


class _Bridge:
    """The trace source of the event-processor bridge (older sentry-sdk releases)."""

    source: TraceSource | None = None
    processor_added = False


_bridge = _Bridge()


def bridge_traces(source: TraceSource) -> None:
    """Give Sentry events the trace `source()` names as their trace context."""
    if _register is not None and _remove is not None:
        _register(source)
        return
    _bridge.source = source
    if not _bridge.processor_added:
        sentry_sdk.scope.add_global_event_processor(_trace_context_from_bridge)
        _bridge.processor_added = True


def unbridge_traces(source: TraceSource) -> None:
    """Stop the bridge when `source` is the one in place (not, say, the SDK's OTLP one)."""
    if trace_bridge() is not source:
        return
    if _remove is not None:
        _remove()
    else:
        _bridge.source = None


def trace_bridge() -> TraceSource | None:
    """The trace source Sentry events currently take their trace context from."""
    if NATIVE_TRACE_BRIDGE:
        source: TraceSource | None = getattr(
            _scope_module, "_external_propagation_context_fn", None
        )
        return source
    return _bridge.source


def _trace_context_from_bridge(event: Any, hint: Any) -> Any:
    """What sentry-sdk >= 2.44 does for error events with an external trace source."""
    source = _bridge.source
    if source is None or event.get("type") == "transaction":
        return event
    ids = source()
    if ids is not None:
        event.setdefault("contexts", {})["trace"] = {"trace_id": ids[0], "span_id": ids[1]}
    return event


def answer_recording_transport(answers: list[str]) -> type[Any]:
    """sentry-sdk's HTTP transport, appending to `answers` what Sentry said to each envelope.

    The SDK reports a failure only through `on_dropped_event()` and its debug log, and a
    success not at all; every supported release passes each response through
    `_update_rate_limits()` first.
    """
    from sentry_sdk.transport import HttpTransport

    class AnswerRecordingTransport(HttpTransport):
        def on_dropped_event(self, reason: str) -> None:
            answers.append(f"dropped ({reason})")

        def _update_rate_limits(self, response: Any) -> None:
            if 200 <= response.status < 300:
                answers.append(f"HTTP {response.status}")
            super()._update_rate_limits(response)

    return AnswerRecordingTransport
