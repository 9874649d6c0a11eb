"""Where the library reads beneath prometheus_client's public API.

Every use of a private name of prometheus_client lives here, and only where the public
API has no equivalent: finding a registered collector by name and its label names (the
catalogue's get-or-create), a histogram's bucket bounds (a changed layout replaces it),
a metric's label children (whether a cached child was dropped by `clear()`), and whether
values live in this process. Each returns None where the internals moved; requests and
queries record through the public methods of cached label children.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry


def children_of(metric: Any) -> dict[Any, Any] | None:
    """The metric's label children by label values, or None where they are not a dict."""
    children = getattr(metric, "_metrics", None)
    return children if type(children) is dict else None


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
    """Whether metric values live in this process (not in multiprocess files).

    prometheus_client chooses once, when its `values` module is imported, from whether
    PROMETHEUS_MULTIPROC_DIR was set then; its choice is the only record of that moment.
    """
    from prometheus_client import values

    return values.ValueClass is values.MutexValue


__all__ = [
    "children_of",
    "label_names",
    "registered",
    "upper_bounds",
    "values_in_memory",
]
