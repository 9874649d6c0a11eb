"""The request's SERVER span without the SDK's per-span machinery, where that is safe.

The SDK's `Span` takes locks, validates every attribute and keeps limits bookkeeping
for each span: about two thirds of what one traced request costs. Our server span's
attributes are known-good strings and integers, and the SDK's Batch and Simple span
processors do nothing when a span starts, so when the provider is a plain SDK
`TracerProvider` with only those processors, no attribute-length limit and one of the
SDK's own samplers, we sample, keep the span's data in plain fields, and hand the
processors a `ReadableSpan` at the end: what the exporter receives is the same.

`LightSpan` is a full recording span for the code that runs during the request:
`add_span_attributes()`, `set_attribute()`, events, links, status and child spans all
work (values set by the service are validated as the SDK would). Any other provider
set-up gets the SDK's own spans (`light_pipeline()` returns None).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from time import time_ns
from typing import Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import (
    Event,
    ReadableSpan,
    SynchronousMultiSpanProcessor,
    TracerProvider,
)
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.types import Attributes, AttributeValue

_SERVER = SpanKind.SERVER
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_UNSET = Status(StatusCode.UNSET)
# The processors whose on_start() does nothing, so skipping it changes nothing.
_PASSIVE_PROCESSORS = (BatchSpanProcessor, SimpleSpanProcessor)


class LightPipeline:
    """What starting and ending a span needs from one provider, looked up once."""

    __slots__ = ("generate_span_id", "generate_trace_id", "on_end", "resource", "sampler", "scope")

    def __init__(
        self,
        sampler: Sampler,
        generate_trace_id: Callable[[], int],
        generate_span_id: Callable[[], int],
        resource: Any,
        scope: InstrumentationScope,
        on_end: Callable[[ReadableSpan], None],
    ) -> None:
        self.sampler = sampler
        self.generate_trace_id = generate_trace_id
        self.generate_span_id = generate_span_id
        self.resource = resource
        self.scope = scope
        self.on_end = on_end

    def start(self, name: str, parent: Context | None) -> trace.Span:
        """A server span, recording or not as the sampler decides (as Tracer.start_span)."""
        parent_context = trace.get_current_span(parent).get_span_context()
        if parent_context.is_valid:
            trace_id = parent_context.trace_id
        else:
            parent_context = None  # type: ignore[assignment]
            trace_id = self.generate_trace_id()
        result = self.sampler.should_sample(parent, trace_id, name, _SERVER)
        decision = result.decision
        flags = _SAMPLED if decision is Decision.RECORD_AND_SAMPLE else _NOT_SAMPLED
        context = SpanContext(trace_id, self.generate_span_id(), False, flags, result.trace_state)
        if decision is Decision.DROP:
            return NonRecordingSpan(context)
        return LightSpan(self, name, context, parent_context, time_ns())


def light_pipeline(provider: object, tracer: object) -> LightPipeline | None:
    """The fast pipeline for this provider, or None where only the SDK's Span is right."""
    if type(provider) is not TracerProvider:
        return None
    processor = getattr(provider, "_active_span_processor", None)
    if type(processor) is not SynchronousMultiSpanProcessor:
        return None
    processors = getattr(processor, "_span_processors", None)
    if not isinstance(processors, tuple) or not all(
        type(each) in _PASSIVE_PROCESSORS for each in processors
    ):
        return None
    limits = getattr(provider, "_span_limits", None)
    if limits is None or getattr(limits, "max_span_attribute_length", 0) is not None:
        return None
    scope = getattr(tracer, "_instrumentation_scope", None)
    is_enabled = getattr(tracer, "_is_enabled", None)
    if not isinstance(scope, InstrumentationScope) or (callable(is_enabled) and not is_enabled()):
        return None
    ids = provider.id_generator
    return LightPipeline(
        provider.sampler,
        ids.generate_trace_id,
        ids.generate_span_id,
        provider.resource,
        scope,
        processor.on_end,
    )


class LightSpan(trace.Span):
    """A recording span whose data become a `ReadableSpan` for the processors at end()."""

    def __init__(
        self,
        pipeline: LightPipeline,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        start_time: int,
    ) -> None:
        self._pipeline = pipeline
        self._name = name
        self._context = context
        self._parent = parent
        self._start_time = start_time
        self._end_time: int | None = None
        # Our own attributes, known-good; set by the middleware at the end.
        self.own_attributes: dict[str, AttributeValue] = {}
        # The service's, validated and bounded as the SDK would.
        self._attributes: BoundedAttributes | None = None
        self._events: list[Event] = []
        self._links: list[Link] = []
        self._status = _UNSET
        self._hex_ids: tuple[str, str] | None = None

    def hex_ids(self) -> tuple[str, str] | None:
        """(trace_id, span_id) in hex when sampled, formatted once however often asked
        (metrics exemplar, log lines, the access line, Sentry events)."""
        if self._hex_ids is None and self._context.trace_flags.sampled:
            self._hex_ids = (
                format(self._context.trace_id, "032x"),
                format(self._context.span_id, "016x"),
            )
        return self._hex_ids

    # --- the trace.Span API ------------------------------------------------------------

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self._end_time is not None:
            return
        if self._attributes is None:
            self._attributes = BoundedAttributes(attributes=attributes, immutable=False)
        else:
            for key, value in attributes.items():
                self._attributes[key] = value

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self.set_attributes({key: value})

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end_time is not None:
            return
        bounded = BoundedAttributes(attributes=attributes, immutable=True)
        self._events.append(Event(name, bounded, timestamp or time_ns()))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self._end_time is None and context.is_valid:
            self._links.append(Link(context, BoundedAttributes(attributes=attributes)))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # The SDK's rules: OK is final, UNSET changes nothing.
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self._status = status
        elif status is not StatusCode.UNSET:
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        recorded: dict[str, AttributeValue] = {
            "exception.type": f"{module}.{qualname}"
            if module and module != "builtins"
            else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time or time_ns()
        attributes: dict[str, AttributeValue]
        if self._attributes is None:
            attributes = self.own_attributes
        else:
            attributes = dict(self._attributes)
            attributes.update(self.own_attributes)
        self._pipeline.on_end(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=self._pipeline.resource,
                attributes=attributes,
                events=tuple(self._events),
                links=tuple(self._links),
                kind=_SERVER,
                status=self._status,
                start_time=self._start_time,
                end_time=self._end_time,
                instrumentation_scope=self._pipeline.scope,
            )
        )

    def __repr__(self) -> str:
        return f'LightSpan(name="{self._name}", context={self._context})'


__all__ = ["LightPipeline", "LightSpan", "light_pipeline"]
