"""`amani-observability slo-report`: each SLO's state, read from a live Prometheus.

The report reads the series that the generated slo_rules.yml records, with the queries
of the dashboard's SLO rows, so it shows what the alerts and the panels see.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx

from ._output import write as _write
from ._runbooks import check_job
from .exceptions import ConfigurationError
from .settings import DEFAULT_BUCKETS
from .slo import (
    BURN_ALERTS,
    RATE_WINDOWS,
    SLO,
    load_slos,
    recorded_error_ratio,
    window_error_ratio_expr,
)

NO_DATA = "no data"
NO_DATA_HINT = (
    "  (no data: no traffic, or this Prometheus does not load the slo_rules.yml "
    "exported from this file)"
)


class PrometheusUnavailable(Exception):
    """Prometheus did not answer a query, or answered with an error."""


def _query(client: httpx.Client, expr: str) -> float | None:
    """The value of a one-sample instant query; None when it has no sample (no traffic)."""
    try:
        response = client.get("/api/v1/query", params={"query": expr})
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise PrometheusUnavailable(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        detail = body.get("error", response.text[:200]) if isinstance(body, dict) else body
        raise PrometheusUnavailable(f"HTTP {response.status_code}: {detail}")
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def _percent(value: float | None, decimals: int) -> str:
    return NO_DATA if value is None else f"{value * 100:.{decimals}f}%"


def _report_one(client: httpx.Client, slo: SLO, job: str) -> bool:
    """Print one SLO; True when a page-level (critical) burn is active."""
    window_ratio = _query(client, window_error_ratio_expr(slo, job))
    burn = {}
    for window in RATE_WINDOWS:
        ratio = _query(client, recorded_error_ratio(slo, job, window))
        burn[window] = None if ratio is None else ratio / slo.budget
    _write(f"SLO {slo.name} (job {job}): {slo.describe()}")
    sli = None if window_ratio is None else 1 - window_ratio
    remaining = None if window_ratio is None else 1 - window_ratio / slo.budget
    _write(f"  SLI over {slo.window}: {_percent(sli, 3)}")
    _write(f"  error budget remaining: {_percent(remaining, 1)}")
    rates = "  ".join(
        f"{window} {NO_DATA if value is None else f'{value:.2f}'}" for window, value in burn.items()
    )
    _write(f"  burn rate: {rates}")
    if window_ratio is None and all(value is None for value in burn.values()):
        _write(NO_DATA_HINT)
    paging = False
    for alert in BURN_ALERTS:
        for long, short, factor in alert.conditions:
            long_burn, short_burn = burn[long], burn[short]
            if long_burn is None or short_burn is None:
                continue
            if long_burn > factor and short_burn > factor:
                level = "PAGE" if alert.severity == "critical" else "TICKET"
                _write(
                    f"  {level} {alert.name}: burn rate {long_burn:.2f} over {long} and "
                    f"{short_burn:.2f} over {short}, above {factor:g}"
                )
                paging = paging or alert.severity == "critical"
    return paging


def slo_report(
    prometheus_url: str,
    slos_path: str | Path,
    *,
    job: str | None = None,
    timeout: float = 10.0,
    buckets: Sequence[float] = DEFAULT_BUCKETS,
) -> int:
    """Print the report; 0 when nothing pages, 1 when a page-level burn is active, 2 on errors."""
    try:
        slos = load_slos(slos_path, buckets=buckets)
        job = check_job(job if job is not None else slos.service)
    except (ConfigurationError, ValueError, OSError) as exc:
        _write(f"amani-observability: {exc}", error=True)
        return 2
    paging = False
    base = prometheus_url.rstrip("/")
    with httpx.Client(base_url=base, timeout=timeout) as client:
        for n, slo in enumerate(slos.slos):
            if n:
                _write("")
            try:
                paging = _report_one(client, slo, job) or paging
            except PrometheusUnavailable as exc:
                _write(
                    f"amani-observability: Prometheus at {base} did not answer: {exc}", error=True
                )
                return 2
    return 1 if paging else 0
