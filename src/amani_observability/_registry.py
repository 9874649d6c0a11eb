"""Get-or-create for metrics in the default registry, shared by the catalogue and alerts.

prometheus_client registers a metric when it is created, so creating it again (a second
app, a re-imported module, a test) raises "Duplicated timeseries"; we reuse it instead.
"""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from ._prometheus_seam import label_names, registered

M = TypeVar("M", bound=MetricWrapperBase)


def get_or_create(kind: type[M], name: str, documentation: str, **options: Any) -> M:
    """The metric registered under `name` in the default registry, created on first use."""
    existing = registered(REGISTRY, name)
    if existing is None:
        return kind(name, documentation, registry=REGISTRY, **options)
    labelnames = tuple(options.get("labelnames", ()))
    if type(existing) is not kind or label_names(existing) != labelnames:
        raise ValueError(
            f"A metric named {name!r} is already registered with a different type or labels; "
            f"amani_observability needs it as a {kind.__name__} with labels {list(labelnames)}."
        )
    return existing
