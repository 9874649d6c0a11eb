"""SLOs as code: one YAML file gives multiwindow, multi-burn-rate alerts and budget panels.

    service: payments
    slos:
      - name: availability        # [a-z0-9_]+, unique
        objective: 99.9           # percent, 0 < objective < 100
        window: 30d               # 7d, 28d or 30d
        sli: availability         # share of requests without a 5xx status
      - name: latency
        objective: 99
        window: 30d
        sli: latency              # share of requests faster than threshold_seconds
        threshold_seconds: 0.5    # one of the duration histogram's buckets
        endpoints: ["/api/v1/transactions"]   # optional: only these route templates

`load_slos()` validates such a file; `slo_rules()` renders the Prometheus recording and
alerting rules (`amani-observability export-assets DIR --slos FILE` writes them to
`config/slo_rules.yml`), `slo_dashboard_panels()` the Grafana rows, and
`error_ratio_expr()` is the one PromQL definition of each SLI that the rules, the panels
and `amani-observability slo-report` share. The method is the Google SRE workbook's
("Alerting on SLOs"); docs/slo.md explains windows, factors and the runbook.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from prometheus_client.utils import floatToGoString
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ._runbooks import check_job, runbook_url
from .exceptions import ConfigurationError
from .settings import DEFAULT_BUCKETS

__all__ = [
    "BURN_ALERTS",
    "RATE_WINDOWS",
    "RUNBOOK_PAGE",
    "SLO",
    "SLO_RULES_FILE",
    "BurnAlert",
    "SLOFile",
    "error_ratio_expr",
    "error_ratio_record",
    "load_slos",
    "parse_slos",
    "recorded_error_ratio",
    "slo_dashboard_panels",
    "slo_rules",
    "window_error_ratio_expr",
]

SLO_RULES_FILE = "slo_rules.yml"
# The runbook page of docs/runbooks/ the alerts link to (through assets.runbook_url()).
RUNBOOK_PAGE = "error_budget_burn.md"
# The error ratio is recorded over each of these; the alerts pair them long/short.
RATE_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
_RECORD = "slo:sli_error:ratio_rate{}"
# Rates of bad and of all requests over 5m, summed over the window for its error ratio.
_ERRORS_RECORD = "slo:sli_errors:rate5m"
_REQUESTS_RECORD = "slo:sli_requests:rate5m"
_ROUTE_TEMPLATE = re.compile(r'/[^"\\\x00-\x1f\x7f]*')
_REGEX_SPECIAL = re.compile(r"([.+*?()|\[\]{}^$])")


@dataclass(frozen=True)
class BurnAlert:
    """One alert: fires when any (long window, short window, factor) condition holds."""

    name: str
    severity: Literal["critical", "warning"]
    conditions: tuple[tuple[str, str, float], ...]


# The SRE workbook's factors for a 30-day window: 14.4 spends 2% of the budget in an hour,
# 6 spends 5% in 6 hours, 3 spends 10% in a day, 1 spends 10% in 3 days.
BURN_ALERTS = (
    BurnAlert("ErrorBudgetBurnPage", "critical", (("1h", "5m", 14.4), ("6h", "30m", 6.0))),
    BurnAlert("ErrorBudgetBurnTicket", "warning", (("1d", "2h", 3.0), ("3d", "6h", 1.0))),
)


def _route_template(value: str) -> str:
    # Quotes and backslashes would end the PromQL string; "{{" would open a template
    # action in the alert's description.
    if not _ROUTE_TEMPLATE.fullmatch(value) or "{{" in value or "}}" in value:
        raise ValueError(
            "must be a route template starting with / without quotes, backslashes, "
            "control characters, {{ or }}"
        )
    return value


def _job(value: str) -> str:
    check_job(value)
    return value


class SLO(BaseModel):
    """One objective: `objective` percent of requests good over `window`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=r"^[a-z0-9_]+$", max_length=64)]
    objective: float = Field(gt=0, lt=100)
    window: Literal["7d", "28d", "30d"]
    sli: Literal["availability", "latency"]
    threshold_seconds: float | None = Field(default=None, validate_default=True)
    endpoints: tuple[Annotated[str, AfterValidator(_route_template)], ...] | None = None

    @field_validator("endpoints")
    @classmethod
    def _some_endpoints(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        # Here rather than min_length, which pydantic also reports when an item is invalid.
        if value is not None and not value:
            raise ValueError("must list at least one route template, or be left out")
        return value

    @field_validator("threshold_seconds")
    @classmethod
    def _threshold_is_a_bucket(cls, value: float | None, info: ValidationInfo) -> float | None:
        sli = info.data.get("sli")
        if sli == "availability" and value is not None:
            raise ValueError("only a latency SLO has a threshold; remove it")
        if sli != "latency":
            return value
        buckets: Sequence[float] = (info.context or {}).get("buckets", DEFAULT_BUCKETS)
        listed = ", ".join(f"{bound:g}" for bound in buckets)
        if value is None:
            raise ValueError(
                f"required when sli is latency: one of the buckets of "
                f"http_request_duration_seconds ({listed})"
            )
        # The SLI reads the bucket `le="<threshold>"`: any other value matches no series.
        if value not in buckets:
            raise ValueError(
                f"{value:g} is not a bucket of http_request_duration_seconds ({listed}); "
                "pick one, or add it with METRICS_BUCKETS"
            )
        return value

    @property
    def budget(self) -> float:
        """The error budget as a ratio: 0.001 for 99.9 (exact, without float residue)."""
        return float((Decimal(100) - Decimal(repr(self.objective))) / 100)

    def describe(self) -> str:
        """One line saying what the SLO promises."""
        where = f" on {', '.join(self.endpoints)}" if self.endpoints else ""
        if self.sli == "latency":
            good = f"faster than {self.threshold_seconds:g} s"
        else:
            good = "without a 5xx status"
        return f"{self.objective:g}% of requests{where} {good} over {self.window}"


class SLOFile(BaseModel):
    """A service and its objectives, as read from an SLO file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    service: Annotated[str, AfterValidator(_job)]
    slos: tuple[SLO, ...]

    @field_validator("slos")
    @classmethod
    def _unique_names(cls, value: tuple[SLO, ...]) -> tuple[SLO, ...]:
        # Here rather than min_length, which pydantic also reports when an SLO is invalid.
        if not value:
            raise ValueError("must list at least one SLO")
        first: dict[str, int] = {}
        for index, slo in enumerate(value):
            if slo.name in first:
                raise ValueError(
                    f"names must be unique: {slo.name!r} is slos[{first[slo.name]}] "
                    f"and slos[{index}]"
                )
            first[slo.name] = index
        return value


def parse_slos(
    data: Any, *, buckets: Sequence[float] = DEFAULT_BUCKETS, source: str = ""
) -> SLOFile:
    """Validate a parsed SLO document; ConfigurationError names each bad field.

    `buckets` are the bounds of http_request_duration_seconds (METRICS_BUCKETS): a latency
    threshold must be one of them.
    """
    try:
        return SLOFile.model_validate(data, context={"buckets": tuple(buckets)})
    except ValidationError as exc:
        problems = [f"{_location(e['loc'])}: {_message(e)}" for e in exc.errors()]
        prefix = f"{source}: " if source else ""
        raise ConfigurationError(f"{prefix}invalid SLO file: " + "; ".join(problems)) from None


def load_slos(path: str | Path, *, buckets: Sequence[float] = DEFAULT_BUCKETS) -> SLOFile:
    """Read and validate an SLO file (YAML); ConfigurationError when it is wrong."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: not valid YAML ({exc})") from None
    return parse_slos(data, buckets=buckets, source=str(path))


def _location(loc: Iterable[int | str]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "file"


def _message(error: Mapping[str, Any]) -> str:
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


# --- PromQL ------------------------------------------------------------------------------


def _regex_literal(text: str) -> str:
    """`text` as an RE2 pattern matching itself, inside a double-quoted PromQL string."""
    return _REGEX_SPECIAL.sub(r"\\\\\1", text)


def _selector(slo: SLO, job: str, *extra: str) -> str:
    matchers = [f'job="{job}"']
    if slo.endpoints:
        matchers.append('endpoint=~"' + "|".join(_regex_literal(e) for e in slo.endpoints) + '"')
    return "{" + ", ".join([*matchers, *extra]) + "}"


def _rates(slo: SLO, job: str, window: str) -> tuple[str, str]:
    """PromQL for the rate of `slo`'s bad requests and of all its requests over `window`."""
    if slo.sli == "availability":
        status = 'status=~"5.."'
        total = f"sum(rate(http_requests_total{_selector(slo, job)}[{window}]))"
        bad = f"sum(rate(http_requests_total{_selector(slo, job, status)}[{window}]))"
        # No 5xx series yet while requests succeed is a ratio of 0, not "no data".
        return f"({bad} or vector(0))", total
    assert slo.threshold_seconds is not None  # the model requires it for latency
    # prometheus_client writes `le` with floatToGoString ("0.5", "1.0"): match it exactly.
    le = floatToGoString(slo.threshold_seconds)  # type: ignore[no-untyped-call]
    bound = f'le="{le}"'
    total = f"sum(rate(http_request_duration_seconds_count{_selector(slo, job)}[{window}]))"
    fast = f"sum(rate(http_request_duration_seconds_bucket{_selector(slo, job, bound)}[{window}]))"
    # Without `or vector(0)`: a missing bucket must show as no data, never as 100%.
    return f"({total} - {fast})", total


def error_ratio_expr(slo: SLO, job: str, window: str) -> str:
    """PromQL for the share of `slo`'s requests that were bad over `window`, from the counters.

    No traffic gives no sample (not 0/0 = NaN): a quiet service is not burning budget.
    """
    errors, total = _rates(slo, job, window)
    return f"{errors}\n/\n({total} > 0)"


def window_error_ratio_expr(slo: SLO, job: str) -> str:
    """PromQL for the share of bad requests over the SLO's whole window, from the recorded
    5-minute rates: a month of raw counters is more samples than a query may load."""
    errors = f"sum_over_time({_recorded(slo, job, _ERRORS_RECORD)}[{slo.window}])"
    total = f"sum_over_time({_recorded(slo, job, _REQUESTS_RECORD)}[{slo.window}])"
    return f"{errors}\n/\n({total} > 0)"


def error_ratio_record(window: str) -> str:
    """The name of the recorded error ratio over `window` (sloth's naming)."""
    return _RECORD.format(window)


def _recorded(slo: SLO, job: str, name: str) -> str:
    return f'{name}{{job="{job}", slo="{slo.name}"}}'


def recorded_error_ratio(slo: SLO, job: str, window: str) -> str:
    """PromQL selecting the recorded error ratio of `slo` over one of RATE_WINDOWS."""
    return _recorded(slo, job, error_ratio_record(window))


def _burn_expr(slo: SLO, job: str, alert: BurnAlert) -> str:
    budget = _number(slo.budget)
    branches = []
    for long, short, factor in alert.conditions:
        branches.append(
            f"(\n  {recorded_error_ratio(slo, job, long)} / {budget} > {_number(factor)}\n"
            f"and\n  {recorded_error_ratio(slo, job, short)} / {budget} > "
            f"{_number(factor)}\n)"
        )
    return "\nor\n".join(branches)


def _number(value: float) -> str:
    return f"{value:.10g}"


def _alert(slo: SLO, job: str, alert: BurnAlert, runbook_base_url: str | None) -> dict[str, Any]:
    pairs = " or ".join(
        f"over {long} and {short} above {_number(factor)}"
        for long, short, factor in alert.conditions
    )
    return {
        "alert": alert.name,
        "expr": _burn_expr(slo, job, alert),
        "labels": {"severity": alert.severity, "slo": slo.name},
        "annotations": {
            "summary": f"{{{{ $labels.job }}}}: SLO {slo.name} burns its error budget "
            f'{{{{ printf "%.1f" $value }}}} times too fast',
            "description": f"The SLO {slo.name} of {{{{ $labels.job }}}} ({slo.describe()}) "
            f'is spending its error budget at {{{{ printf "%.1f" $value }}}} times the rate '
            f"that would use it up in exactly {slo.window} (burn rate {pairs}).",
            "objective": f"{slo.objective:g}%",
            "burn_rate": '{{ printf "%.1f" $value }}',
            "runbook_url": runbook_url(RUNBOOK_PAGE, alert.name.lower(), base_url=runbook_base_url),
        },
    }


def _group(slo: SLO, job: str, runbook_base_url: str | None) -> dict[str, Any]:
    labels = {"job": job, "slo": slo.name}
    errors, total = _rates(slo, job, "5m")
    records = [
        {
            "record": error_ratio_record(window),
            "expr": error_ratio_expr(slo, job, window),
            "labels": labels,
        }
        for window in RATE_WINDOWS
    ]
    records += [
        {"record": _ERRORS_RECORD, "expr": errors, "labels": labels},
        {"record": _REQUESTS_RECORD, "expr": total, "labels": labels},
    ]
    # Rules of a group run in order: the alerts read this evaluation's ratios.
    alerts = [_alert(slo, job, alert, runbook_base_url) for alert in BURN_ALERTS]
    return {"name": f"slo:{job}:{slo.name}", "rules": [*records, *alerts]}


class _BlockDumper(yaml.SafeDumper):
    """Multi-line expressions as `|` blocks, so the rules file reads like a hand-written one."""


def _block_strings(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _block_strings)


def slo_rules(slos: SLOFile, *, job: str | None = None, runbook_base_url: str | None = None) -> str:
    """The Prometheus rules file for `slos`: error-ratio recordings and burn-rate alerts.

    `job` is the Prometheus job of the service, by default the file's `service`; the
    alerts' `runbook_url`s are absolute, under `runbook_base_url` (see assets.runbook_url).
    """
    job = check_job(job if job is not None else slos.service)
    document = {"groups": [_group(slo, job, runbook_base_url) for slo in slos.slos]}
    header = (
        "# SLO rules generated by amani-observability from an SLO file (docs/slo.md).\n"
        f"# Service {slos.service}, Prometheus job {job}. Regenerate rather than edit:\n"
        "#   amani-observability export-assets DIR --slos FILE\n"
    )
    body = yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, width=1000)
    return header + body


# --- Grafana -----------------------------------------------------------------------------

_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def _target(expr: str, ref: str, legend: str = "") -> dict[str, Any]:
    return {"datasource": _DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def _stat(
    title: str, description: str, expr: str, grid: dict[str, int], steps: list[Any]
) -> dict[str, Any]:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": _DATASOURCE,
        "gridPos": grid,
        "fieldConfig": {
            "defaults": {
                "unit": "percent",
                "decimals": 3,
                "thresholds": {"mode": "absolute", "steps": steps},
            },
            "overrides": [],
        },
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"},
        "targets": [_target(expr, "A")],
    }


def slo_dashboard_panels(
    slos: SLOFile, *, job: str | None = None, first_id: int = 1, top: int = 0
) -> list[dict[str, Any]]:
    """Grafana panels: per SLO a row with its SLI and budget over the window and burn rates.

    Panel ids start at `first_id`, the first row at grid line `top`.
    """
    job = check_job(job if job is not None else slos.service)
    panels: list[dict[str, Any]] = []
    next_id, y = first_id, top
    for slo in slos.slos:
        ratio = window_error_ratio_expr(slo, job).replace("\n", " ")
        budget = _number(slo.budget)
        row = {
            "type": "row",
            "title": f"SLO {slo.name}: {slo.describe()}",
            "collapsed": False,
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "panels": [],
        }
        sli = _stat(
            f"{slo.name}: SLI over {slo.window}",
            f"Share of good requests over the last {slo.window}; the objective is "
            f"{slo.objective:g}%.",
            f"100 * (1 - ({ratio}))",
            {"h": 8, "w": 6, "x": 0, "y": y + 1},
            [{"color": "red", "value": None}, {"color": "green", "value": slo.objective}],
        )
        remaining = _stat(
            f"{slo.name}: error budget remaining",
            f"Share of the {slo.window} error budget ({_number(slo.budget * 100)}% of "
            "requests) not yet spent; negative when overspent.",
            f"100 * (1 - ({ratio}) / {budget})",
            {"h": 8, "w": 6, "x": 6, "y": y + 1},
            [
                {"color": "red", "value": None},
                {"color": "orange", "value": 0},
                {"color": "green", "value": 25},
            ],
        )
        burn = {
            "type": "timeseries",
            "title": f"{slo.name}: burn rate per window",
            "description": "Error ratio divided by the budget: 1 spends the budget in exactly "
            f"{slo.window}. Pages above 14.4 (1h and 5m) or 6 (6h and 30m); tickets above 3 "
            "(1d and 2h) or 1 (3d and 6h).",
            "datasource": _DATASOURCE,
            "gridPos": {"h": 8, "w": 12, "x": 12, "y": y + 1},
            "fieldConfig": {
                "defaults": {"unit": "none", "custom": {"showPoints": "never"}},
                "overrides": [],
            },
            "options": {
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            },
            "targets": [
                _target(
                    f"{recorded_error_ratio(slo, job, window)} / {budget}",
                    chr(ord("A") + n),
                    window,
                )
                for n, window in enumerate(RATE_WINDOWS)
            ],
        }
        group: tuple[dict[str, Any], ...] = (row, sli, remaining, burn)
        for panel in group:
            panel["id"] = next_id
            next_id += 1
            panels.append(panel)
        y += 9
    return panels
