"""Where the library reaches beneath OpenTelemetry's public API: the light server span.

Every use of a private name of opentelemetry-api or opentelemetry-sdk lives here. Each
shortcut is taken only for the releases the test matrix runs (see _gates.py), is checked
against the SDK at start-up on its whole result, and steps aside on any difference or
error; start-up and requests never fail because of it.

The SDK's `Span` takes locks, validates every attribute and keeps limits bookkeeping for
each span. Our server span's attributes are known-good strings and integers, and the SDK's
Batch and Simple span processors do nothing when a span starts, so when the provider is a
plain SDK `TracerProvider` with only those processors, no attribute-length limit and one of
the SDK's own samplers, we sample, keep the span's data in plain fields, and hand the
processors a `ReadableSpan` at the end: what the exporter receives is the same.

The same checks let three more per-span steps be done once: a root span's sampling
decision is computed the way the SDK's own samplers compute it (`ParentBased` over a
ratio or a constant), the span context is built without re-validating ids the SDK's
random generator made, and a span ending goes straight into the batch processor's
queue. `LightSpan` is itself the `ReadableSpan` the processors receive, as the SDK's
own span used to be.

`LightSpan` is a full recording span for the code that runs during the request:
`add_span_attributes()`, `set_attribute()`, events, links, status and child spans all
work (values set by the service are validated as the SDK would). Any other provider
set-up gets the SDK's own spans (`light_pipeline()` returns None).
"""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from time import time_ns
from typing import Any

from opentelemetry import context as otel_context
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
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace import propagation as otel_propagation
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.types import Attributes, AttributeValue

from .._gates import installed, tested
from ._export import CountingBatchSpanProcessor

logger = logging.getLogger("amani_observability.tracing")

_SERVER = SpanKind.SERVER
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_UNSET = Status(StatusCode.UNSET)
# The processors whose on_start() does nothing, so skipping it changes nothing.
_PASSIVE_PROCESSORS = (BatchSpanProcessor, CountingBatchSpanProcessor, SimpleSpanProcessor)


# --- the current context, without the API's four calls per look -----------------------------

# OpenTelemetry keeps the current Context in one ContextVar when its runtime context is
# the default ContextVarsRuntimeContext (OTEL_PYTHON_CONTEXT unset): reading and setting
# that variable directly is what get_current(), attach() and detach() do, minus two to
# four Python calls each. Any other runtime context goes through the API.
_API_TESTED = tested("opentelemetry-api")
_runtime_context = getattr(otel_context, "_RUNTIME_CONTEXT", None)
_context_var: ContextVar[Context] | None = (
    getattr(_runtime_context, "_current_context", None)
    if _API_TESTED and type(_runtime_context).__name__ == "ContextVarsRuntimeContext"
    else None
)
if not isinstance(_context_var, ContextVar):
    _context_var = None
_SPAN_KEY: str | None = getattr(otel_propagation, "_SPAN_KEY", None) if _API_TESTED else None
if not isinstance(_SPAN_KEY, str):
    _SPAN_KEY = None


def reads_context_var() -> bool:
    """Whether the current Context is read and set through its ContextVar directly."""
    return _context_var is not None and _SPAN_KEY is not None


def current_context() -> Context:
    """The current OpenTelemetry Context."""
    if _context_var is None:
        return otel_context.get_current()
    return _context_var.get()


def span_of(context: Context) -> trace.Span:
    """The span a Context holds, or the invalid span (as trace.get_current_span())."""
    if _SPAN_KEY is None:
        return trace.get_current_span(context)
    span = context.get(_SPAN_KEY)
    if span is None or not isinstance(span, trace.Span):
        return trace.INVALID_SPAN
    return span


def attach_span(span: trace.Span, base: Context) -> object:
    """Make `base` plus `span` the current Context; a token for detach()."""
    if _context_var is None or _SPAN_KEY is None:
        return otel_context.attach(trace.set_span_in_context(span, base))
    return _context_var.set(Context({**base, _SPAN_KEY: span}))


def detach(token: object) -> None:
    """Restore the Context that was current before attach_span()."""
    if _context_var is not None and isinstance(token, Token):
        try:
            _context_var.reset(token)
            return
        except ValueError:  # made in another context: let the API report it
            pass
    otel_context.detach(token)  # type: ignore[arg-type]


# Decides a root span: True to record and sample, False to drop (see _root_decision).
RootDecision = Callable[[int], bool]


class LightPipeline:
    """What starting and ending a span needs from one provider, looked up once."""

    __slots__ = (
        "decide_root",
        "fast_context",
        "generate_span_id",
        "generate_trace_id",
        "inherited_flags",
        "on_end",
        "resource",
        "root_flags",
        "sampler",
        "scope",
    )

    def __init__(
        self,
        sampler: Sampler,
        generate_trace_id: Callable[[], int],
        generate_span_id: Callable[[], int],
        resource: Any,
        scope: InstrumentationScope,
        on_end: Callable[[ReadableSpan], None],
        decide_root: RootDecision | None = None,
        fast_context: bool = False,
        root_flags: int = 0,
        inherited_flags: int = 0,
    ) -> None:
        self.sampler = sampler
        self.generate_trace_id = generate_trace_id
        self.generate_span_id = generate_span_id
        self.resource = resource
        self.scope = scope
        # Called with sampled spans only.
        self.on_end = on_end
        self.decide_root = decide_root
        self.fast_context = fast_context
        # Flags besides "sampled" the SDK gives a new trace's spans (the W3C random trace
        # id flag with opentelemetry-sdk >= 1.42), and those it copies from a parent.
        self.root_flags = root_flags
        self.inherited_flags = inherited_flags

    def start(
        self, name: str, parent: Context | None, parent_span: trace.Span | None = None
    ) -> trace.Span:
        """A server span, recording or not as the sampler decides (as Tracer.start_span).

        `parent_span` is the span `parent` (or, when None, the current context) holds,
        when the caller has already looked it up.
        """
        if parent_span is None:
            parent_span = trace.get_current_span(parent)
        parent_context = parent_span.get_span_context()
        decide_root = self.decide_root
        if not parent_context.is_valid and decide_root is not None:
            # A new trace, decided as the sampler would, without building its result.
            trace_id = self.generate_trace_id()
            if not decide_root(trace_id):
                return NonRecordingSpan(
                    SpanContext(trace_id, self.generate_span_id(), False, self._flags(False))
                )
            if self.fast_context:
                # SpanContext.__new__ re-checks the ids' range; the SDK's generator only
                # makes valid ones. Layout checked at start-up (_span_context_layout_holds).
                context = tuple.__new__(
                    SpanContext,
                    (
                        trace_id,
                        self.generate_span_id(),
                        False,
                        self._flags(True),
                        DEFAULT_TRACE_STATE,
                        True,
                    ),
                )
            else:
                context = SpanContext(trace_id, self.generate_span_id(), False, self._flags(True))
            return LightSpan(self, name, context, None, time_ns())
        if parent_context.is_valid:
            trace_id = parent_context.trace_id
            extra = parent_context.trace_flags & self.inherited_flags
        else:
            parent_context = None  # type: ignore[assignment]
            trace_id = self.generate_trace_id()
            extra = self.root_flags
        result = self.sampler.should_sample(parent, trace_id, name, _SERVER)
        decision = result.decision
        sampled = decision is Decision.RECORD_AND_SAMPLE
        flags = TraceFlags((TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT) | extra)
        context = SpanContext(trace_id, self.generate_span_id(), False, flags, result.trace_state)
        if decision is Decision.DROP:
            return NonRecordingSpan(context)
        return LightSpan(self, name, context, parent_context, time_ns())

    def _flags(self, sampled: bool) -> TraceFlags:
        """A new trace's flags, as the SDK sets them."""
        if not self.root_flags:
            return _SAMPLED if sampled else _NOT_SAMPLED
        return TraceFlags((TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT) | self.root_flags)


def light_pipeline(provider: object, tracer: object) -> LightPipeline | None:
    """The fast pipeline for this provider, or None where only the SDK's Span is right."""
    return light_decision(provider, tracer)[0]


def light_decision(provider: object, tracer: object) -> tuple[LightPipeline | None, str]:
    """(the fast pipeline or None, why it is off); never raises.

    An SDK whose release, internals or behaviour differ from the ones checked here gets
    its own Span.
    """
    if not tested("opentelemetry-sdk"):
        return None, f"opentelemetry-sdk {installed('opentelemetry-sdk')} is not a tested release"
    try:
        pipeline = _pipeline_for(provider, tracer)
        if pipeline is None:
            return None, "provider set-up"
        differences = _differences_from_sdk(provider, tracer, pipeline)
    except Exception:
        logger.info("light server span off: could not check it against the SDK", exc_info=True)
        return None, "self-check failed"
    if differences:
        logger.info(LIGHT_SPAN_DIFFERS, ", ".join(differences))
        return None, f"differs from the SDK in {', '.join(differences)}"
    return pipeline, ""


def describe(pipeline: LightPipeline | None, reason: str) -> str:
    """The start-up line's words: `otel span on (opentelemetry-sdk 1.45.2)` or why off."""
    if pipeline is not None:
        return f"otel span on (opentelemetry-sdk {installed('opentelemetry-sdk')})"
    return f"otel span off ({reason})"


def ignores_attributes(sampler: object) -> bool:
    """Whether the sampler decides without looking at span attributes (the SDK's own)."""
    if isinstance(sampler, ParentBased):
        delegates = (
            getattr(sampler, name, None)
            for name in (
                "_root",
                "_remote_parent_sampled",
                "_remote_parent_not_sampled",
                "_local_parent_sampled",
                "_local_parent_not_sampled",
            )
        )
        return all(ignores_attributes(delegate) for delegate in delegates)
    # Exact types: a subclass may well look at the attributes.
    return type(sampler) in (StaticSampler, TraceIdRatioBased)


LIGHT_SPAN_DIFFERS = "light server span off: it differs from the SDK's span in %s"


def _pipeline_for(provider: object, tracer: object) -> LightPipeline | None:
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
    random_ids = type(ids) is RandomIdGenerator
    root_flags, inherited_flags = _sdk_flags(ids)
    return LightPipeline(
        provider.sampler,
        ids.generate_trace_id,
        ids.generate_span_id,
        provider.resource,
        scope,
        _batch_emit(processors) or processor.on_end,
        # Both shortcuts rely on ids from the SDK's generator: never zero, never too long.
        decide_root=_root_decision(provider.sampler) if random_ids else None,
        fast_context=random_ids and _span_context_layout_holds(),
        root_flags=root_flags,
        inherited_flags=inherited_flags,
    )


# A remote parent with every flag set, to see which ones the SDK copies to its child.
_ALL_FLAGS = 0xFF


def _sdk_flags(ids: Any) -> tuple[int, int]:
    """(flags besides "sampled" on a new trace, flags copied from a parent), read off
    spans the SDK itself makes with this id generator."""
    probe = TracerProvider(sampler=ALWAYS_ON, id_generator=ids, shutdown_on_exit=False)
    tracer = probe.get_tracer("amani_observability.probe")
    root = tracer.start_span("probe", Context(), _SERVER).get_span_context()
    parent = SpanContext(1, 2, True, TraceFlags(_ALL_FLAGS))
    child = tracer.start_span(
        "probe", trace.set_span_in_context(NonRecordingSpan(parent)), _SERVER
    ).get_span_context()
    return root.trace_flags & ~TraceFlags.SAMPLED, child.trace_flags & ~TraceFlags.SAMPLED


def _differences_from_sdk(provider: Any, tracer: Any, pipeline: LightPipeline) -> list[str]:
    """The fields in which a light span differs from the SDK's span for the same work.

    Both are made by an always-sampling copy of the provider (same resource, id generator
    and instrumentation scope), for a new trace and for a remote caller's.
    """
    probe = TracerProvider(
        sampler=ALWAYS_ON,
        resource=provider.resource,
        id_generator=provider.id_generator,
        shutdown_on_exit=False,
    )
    scope: InstrumentationScope = pipeline.scope
    sdk_tracer = probe.get_tracer(scope.name, scope.version, scope.schema_url)
    light = LightPipeline(
        probe.sampler,
        pipeline.generate_trace_id,
        pipeline.generate_span_id,
        provider.resource,
        scope,
        lambda span: None,
        decide_root=_root_decision(probe.sampler) if pipeline.decide_root else None,
        fast_context=pipeline.fast_context,
        root_flags=pipeline.root_flags,
        inherited_flags=pipeline.inherited_flags,
    )
    caller = SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
        True,
        TraceFlags(0x03),
        TraceState([("vendor", "x")]),
    )
    differences: list[str] = []
    for parent in (Context(), trace.set_span_in_context(NonRecordingSpan(caller))):
        ours = _probe_span(light.start("GET", parent))
        theirs = _probe_span(sdk_tracer.start_span("GET", parent, _SERVER))
        differences += [key for key in theirs if ours.get(key) != theirs[key]]
    return sorted(set(differences))


def _probe_span(span: trace.Span) -> dict[str, Any]:
    """Does a server span's work on `span` and ends it; its whole exported record."""
    own: dict[str, AttributeValue] = {
        "http.request.method": "GET",
        "url.path": "/probe/1",
        "http.route": "/probe/{id}",
        "http.response.status_code": 500,
    }
    span.set_attribute("service.values", ["a", "b"])
    span.add_event("checkpoint", {"step": 2}, timestamp=1_000)
    span.add_link(SpanContext(3, 4, True, _SAMPLED), {"link.kind": "caller"})
    try:
        raise KeyError("probe")
    except KeyError as exc:
        span.record_exception(exc, timestamp=2_000)
    span.update_name("GET /probe/{id}")
    span.set_status(Status(StatusCode.ERROR, "probe"))
    if type(span) is LightSpan:
        span.own_attributes = own
    else:
        span.set_attributes(own)
    span.end(3_000)
    return span_record(span)  # type: ignore[arg-type]


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """Everything a ReadableSpan exports: its whole `to_json()`, plus what that leaves
    out (trace flags, instrumentation scope, parent's flags), with ids and start time
    normalised."""
    record: dict[str, Any] = json.loads(span.to_json())
    context = span.get_span_context()
    record["context"].update(trace_id="<trace id>", span_id="<span id>")
    record["start_time"] = "<start>"
    record["trace_flags"] = int(context.trace_flags) if context is not None else None
    record["is_remote"] = context.is_remote if context is not None else None
    parent = span.parent
    if parent is not None:
        record["parent"] = (parent.trace_id, parent.is_remote, int(parent.trace_flags))
    scope = span.instrumentation_scope
    if scope is not None:
        record["scope"] = (
            scope.name,
            scope.version,
            scope.schema_url,
            dict(getattr(scope, "attributes", None) or {}),
        )
    record["dropped"] = (
        span.dropped_attributes,
        span.dropped_events,
        span.dropped_links,
    )
    return record


def _root_decision(sampler: Sampler) -> RootDecision | None:
    """How the SDK's own sampler decides a span without a parent, as a plain function.

    `ParentBased` hands a root span to its root sampler; `TraceIdRatioBased` samples when
    the trace id's low 64 bits are below its bound; `ALWAYS_ON`/`ALWAYS_OFF` are constant.
    Any other sampler (a subclass included) is asked for every span. The function is
    checked against the sampler itself before it is used.
    """
    root = getattr(sampler, "_root", None) if type(sampler) is ParentBased else sampler
    if type(root) is TraceIdRatioBased:
        limit, bound = TraceIdRatioBased.TRACE_ID_LIMIT, root.bound

        def by_ratio(trace_id: int) -> bool:
            return trace_id & limit < bound

        decide: RootDecision = by_ratio
    elif type(root) is StaticSampler:
        # A constant sampler: its answer for any trace.
        constant = (
            sampler.should_sample(Context(), 1, "probe", _SERVER).decision
            is Decision.RECORD_AND_SAMPLE
        )

        def always(trace_id: int) -> bool:
            return constant

        decide = always
    else:
        return None
    for trace_id in _PROBE_TRACE_IDS:
        result = sampler.should_sample(Context(), trace_id, "probe", _SERVER)
        if decide(trace_id) != (result.decision is Decision.RECORD_AND_SAMPLE) or (
            result.decision is Decision.RECORD_ONLY
        ):
            return None
    return decide


# Trace ids that fall on both sides of any ratio's bound.
_PROBE_TRACE_IDS = tuple(
    (high << 64) | low
    for high in (1, 0xFFFF_FFFF_FFFF_FFFF)
    for low in (0, 1, 1 << 32, 1 << 62, 1 << 63, (1 << 64) - 1)
)


def _span_context_layout_holds() -> bool:
    """Whether SpanContext is still the tuple the fast path builds directly."""
    try:
        made = SpanContext(1, 2, False, _SAMPLED)
        direct = tuple.__new__(SpanContext, (1, 2, False, _SAMPLED, DEFAULT_TRACE_STATE, True))
        return type(made) is SpanContext and tuple(made) == tuple(direct) and direct.is_valid
    except Exception:  # reshaped: build it through SpanContext()
        return False


def _batch_emit(processors: tuple[Any, ...]) -> Callable[[ReadableSpan], None] | None:
    """A lone BatchSpanProcessor's queue append, or None.

    Its on_end() only checks that the span is sampled (the caller does) before handing it
    to its batcher; calling the batcher directly skips two Python calls per span.
    """
    if len(processors) != 1 or type(processors[0]) not in (
        BatchSpanProcessor,
        CountingBatchSpanProcessor,
    ):
        return None
    emit = getattr(getattr(processors[0], "_batch_processor", None), "emit", None)
    if not callable(emit):
        return None
    if type(processors[0]) is BatchSpanProcessor:
        return emit  # type: ignore[no-any-return]
    entering = processors[0].watch.entering

    def counted_emit(span: ReadableSpan) -> None:
        entering()  # the fast path skips on_end(): count the queue here instead
        emit(span)

    return counted_emit


class LightSpan(trace.Span, ReadableSpan):
    """A recording span that is, once ended, the `ReadableSpan` the processors receive."""

    # ReadableSpan's fields that are the same for every server span.
    _kind = _SERVER
    _instrumentation_info = None
    _context: SpanContext  # never None here, unlike a ReadableSpan's

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
        self._resource = pipeline.resource
        self._instrumentation_scope = pipeline.scope
        # Our own attributes, known-good; set by the middleware before end().
        self.own_attributes: dict[str, AttributeValue] = {}
        # The service's, validated and bounded as the SDK would; at end(), all of them.
        self._attributes: Any = None
        # Most server spans get neither: a list is made on the first one.
        self._events: list[Event] | tuple[()] = ()
        self._links: list[Link] | tuple[()] = ()
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
        event = Event(name, bounded, timestamp or time_ns())
        if isinstance(self._events, list):
            self._events.append(event)
        else:
            self._events = [event]

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self._end_time is None and context.is_valid:
            link = Link(context, BoundedAttributes(attributes=attributes))
            if isinstance(self._links, list):
                self._links.append(link)
            else:
                self._links = [link]

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
        # Formatted for the request's own log lines and exemplar; a span waiting in the
        # batch queue keeps nothing it does not export (fewer objects for the GC to count).
        self._hex_ids = None
        if self._attributes is None:
            self._attributes = self.own_attributes
        else:
            attributes = dict(self._attributes)
            attributes.update(self.own_attributes)
            self._attributes = attributes
        if self._context.trace_flags.sampled:
            # Recorded but not sampled: the SDK's processors would drop it unexported.
            self._pipeline.on_end(self)

    def __repr__(self) -> str:
        return f'LightSpan(name="{self._name}", context={self._context})'


__all__ = [
    "LightPipeline",
    "LightSpan",
    "describe",
    "ignores_attributes",
    "light_decision",
    "light_pipeline",
    "span_record",
]
