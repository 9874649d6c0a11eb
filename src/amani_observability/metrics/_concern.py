"""The metrics concern as instrument() sets it up: buckets, endpoint, multiprocess mode."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .. import metrics as catalogue
from .._prometheus_seam import values_in_memory
from ._histograms import db_duration_histogram, http_duration_histogram
from ._middleware import MetricsEndpoint, PrometheusHooks, endpoint_cap
from ._multiproc import multiprocess_dir

if TYPE_CHECKING:
    from .._lifecycle import Lifecycle
    from ..settings import ObservabilitySettings

logger = logging.getLogger("amani_observability.metrics")

MULTIPROC_TOO_LATE = (
    "PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported, so this "
    "process keeps its metrics in memory; /metrics shows this process only. Set the "
    "variable before Python starts."
)


def use_buckets(buckets: Sequence[float]) -> None:
    """Give both histograms this bucket layout (instrument() applies METRICS_BUCKETS).

    A changed layout replaces the histogram objects, so read them from this module
    (``metrics.http_request_duration_seconds``) after instrument(), not before.
    """
    catalogue.http_request_duration_seconds = http_duration_histogram(buckets)
    catalogue.db_query_duration_seconds = db_duration_histogram(buckets)


def metrics_hooks(settings: ObservabilitySettings, lifecycle: Lifecycle) -> PrometheusHooks:
    """What instrument() runs innermost: measures the app and serves /metrics."""
    use_buckets(settings.metrics_buckets)
    # Per process: the last instrument() call's limit applies to every app in it.
    endpoint_cap.limit = settings.metrics_max_endpoints
    directory = multiprocess_dir()
    if directory is not None and values_in_memory():
        # The values of this process live in memory: aggregating the directory would
        # show other processes' numbers, or none, instead of ours.
        logger.warning(MULTIPROC_TOO_LATE)
        directory = None
    if directory is not None:

        async def forget_this_worker() -> None:
            # This worker's live gauges (in-progress, DB connections) must stop counting
            # once it is gone; its counters and histograms stay in the totals.
            catalogue.mark_process_dead(os.getpid(), directory)

        lifecycle.on_shutdown(forget_this_worker)

    endpoint = MetricsEndpoint(
        multiprocess=directory is not None,
        username=settings.metrics_username,
        password=(
            settings.metrics_password.get_secret_value() if settings.metrics_password else None
        ),
        bearer_token=(
            settings.metrics_bearer_token.get_secret_value()
            if settings.metrics_bearer_token
            else None
        ),
    )
    return catalogue.PrometheusMiddleware.hooks_for(
        metrics_path=settings.metrics_path,
        excluded_paths=[*settings.metrics_excluded_paths],
        endpoint=endpoint,
    )
