"""Where the library reaches beneath prometheus_client's public API.

Every use of a private name of prometheus_client lives here. A request increments a
counter and observes a histogram; `Counter.inc()` and `Histogram.observe()` check their
arguments and loop over the buckets on every call. For the releases the test matrix runs
(see _gates.py) the children's values are incremented directly and a bisection finds the
bucket. At first use the shortcut does the same work as the public calls on a probe
registry and the two `collect()` results are compared whole; on any difference, any error
or another release, the public calls do the work.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ._gates import installed, tested

logger = logging.getLogger("amani_observability.metrics")

PACKAGE = "prometheus-client"

Increment = Callable[[float], None]
# A histogram child's sum increment, bucket upper bounds and bucket increments.
HistogramParts = tuple[Increment, tuple[float, ...], tuple[Increment, ...]]


class _Decision:
    """Whether the shortcuts are on, decided at first use, and why not."""

    made = False
    on = False
    reason = ""


_decision = _Decision()


def enabled() -> bool:
    """Whether the shortcuts are on for the installed prometheus-client."""
    if not _decision.made:
        _decision.on, _decision.reason = _check()
        _decision.made = True
        if not _decision.on:
            logger.info("prometheus fast path off: %s", _decision.reason)
    return _decision.on


def describe() -> str:
    """The start-up line's words: `prometheus on` or `prometheus off (why)`."""
    if enabled():
        return f"prometheus on ({PACKAGE} {installed(PACKAGE)})"
    return f"prometheus off ({_decision.reason})"


def _check() -> tuple[bool, str]:
    if not tested(PACKAGE):
        return False, f"{PACKAGE} {installed(PACKAGE)} is not a tested release"
    try:
        public, fast = _probe(fast=False), _probe(fast=True)
    except Exception as exc:
        return False, f"self-check failed: {type(exc).__name__}"
    if public != fast:
        return False, "differs from the public API's samples"
    return True, ""


def _probe(*, fast: bool) -> list[tuple[str, dict[str, str], float]]:
    """The same increments and observations, public or fast: every sample collected."""
    registry = CollectorRegistry()
    counter = Counter("probe_total", "probe", ["code"], registry=registry)
    gauge = Gauge("probe_in_progress", "probe", registry=registry)
    histogram = Histogram(
        "probe_seconds", "probe", ["code"], buckets=(0.1, 0.5, 1.0), registry=registry
    )
    counter_child, histogram_child = counter.labels("200"), histogram.labels("200")
    if fast:
        count, move = _value_inc(counter_child), _value_inc(gauge)
        observe = _bisecting_observe(_histogram_parts(histogram_child))
    else:
        count, move, observe = counter_child.inc, gauge.inc, histogram_child.observe
    for amount in (0.0, 0.1, 0.3, 0.5, 0.7, 1.0, 2.5, float("inf")):
        count(1)
        move(1)
        observe(amount)
    move(-3)
    return [
        (sample.name, sample.labels, sample.value)
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    ]


def _value_inc(child: Any) -> Increment:
    inc: Increment = child._value.inc
    return inc


def _histogram_parts(child: Any) -> HistogramParts:
    return child._sum.inc, tuple(child._upper_bounds), tuple(b.inc for b in child._buckets)


def _bisecting_observe(parts: HistogramParts) -> Increment:
    observe_sum, upper_bounds, bucket_incs = parts

    def observe(amount: float) -> None:
        observe_sum(amount)
        bucket_incs[bisect_left(upper_bounds, amount)](1)

    return observe


# --- the shortcuts, each with its public fallback ---------------------------------------------


def inc_of(child: Any) -> Increment:
    """The child's increment: `Counter.inc()`/`Gauge.inc()` minus their per-call checks."""
    if enabled():
        try:
            return _value_inc(child)
        except Exception:  # a child of another shape: the public call
            pass
    inc: Increment = child.inc
    return inc


def histogram_parts(child: Any) -> HistogramParts | None:
    """What `Histogram.observe()` updates, looked up once; None where the shortcut is off."""
    if enabled():
        try:
            return _histogram_parts(child)
        except Exception:
            pass
    return None


def bucket_exemplar_setters(child: Any) -> tuple[Callable[[Any], None], ...] | None:
    """Each bucket's `set_exemplar`, where the shortcut is on and the values hold them."""
    if not enabled():
        return None
    buckets = getattr(child, "_buckets", None)
    if buckets is None or not all(callable(getattr(b, "set_exemplar", None)) for b in buckets):
        return None
    return tuple(bucket.set_exemplar for bucket in buckets)


def observe_of(child: Any) -> Increment:
    """The histogram child's observe(): minus its checks and bucket loop where on."""
    parts = histogram_parts(child)
    if parts is None:
        observe: Increment = child.observe
        return observe
    return _bisecting_observe(parts)


def children_of(metric: Any) -> dict[Any, Any] | None:
    """The metric's label children by label values, or None where they are not a dict."""
    children = getattr(metric, "_metrics", None)
    return children if type(children) is dict else None


# --- registration helpers (no public equivalent; None where the internals moved) ----------


def registered(registry: CollectorRegistry, name: str) -> Any | None:
    """The collector registered under `name`, or None (also where it cannot be known)."""
    collectors = getattr(registry, "_names_to_collectors", None)
    return collectors.get(name) if isinstance(collectors, dict) else None


def label_names(metric: Any) -> tuple[str, ...] | None:
    names = getattr(metric, "_labelnames", None)
    return tuple(names) if names is not None else None


def upper_bounds(histogram: Any) -> tuple[float, ...] | None:
    """The histogram's bucket bounds, +Inf included."""
    bounds = getattr(histogram, "_upper_bounds", None)
    return tuple(bounds) if bounds is not None else None


def values_in_memory() -> bool:
    """Whether metric values live in this process (not in multiprocess files)."""
    from prometheus_client import values

    return values.ValueClass is values.MutexValue


__all__ = [
    "bucket_exemplar_setters",
    "children_of",
    "describe",
    "enabled",
    "histogram_parts",
    "inc_of",
    "label_names",
    "observe_of",
    "registered",
    "upper_bounds",
    "values_in_memory",
]
