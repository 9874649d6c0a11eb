"""SLO files, the rules and panels generated from them, run in promtool's rule engine."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from amani_observability.assets import (
    ALERT_RULES_FILE,
    DOCS_RUNBOOKS_URL,
    GRAFANA_DASHBOARD_FILE,
    KUBERNETES_FILES,
    alert_rules,
    export_assets,
    grafana_dashboard,
)
from amani_observability.cli import main
from amani_observability.exceptions import ConfigurationError
from amani_observability.slo import (
    RATE_WINDOWS,
    SLO_RULES_FILE,
    SLOFile,
    error_ratio_expr,
    load_slos,
    parse_slos,
    slo_dashboard_panels,
    slo_rules,
    window_error_ratio_expr,
)
from tests.conftest import free_port, require_binary
from tests.http_standin import Reply, StandIn
from tests.test_assets import LIBRARY_METRICS, assert_panels_do_not_overlap, metric_names

AVAILABILITY = {"name": "availability", "objective": 99.9, "window": "30d", "sli": "availability"}
LATENCY = {
    "name": "latency",
    "objective": 99,
    "window": "30d",
    "sli": "latency",
    "threshold_seconds": 0.5,
    "endpoints": ["/api/v1/payments/{id}"],
}
EXAMPLE = {"service": "payments", "slos": [AVAILABILITY, LATENCY]}
JOB = "payments"


def example() -> SLOFile:
    return parse_slos(EXAMPLE)


def rule_groups(text: str) -> list[dict[str, Any]]:
    return yaml.safe_load(text)["groups"]  # type: ignore[no-any-return]


# --- the file ------------------------------------------------------------------------------


def test_a_valid_file_loads_with_its_budgets(tmp_path: Path) -> None:
    path = tmp_path / "slos.yml"
    path.write_text(yaml.safe_dump(EXAMPLE))
    slos = load_slos(path)
    assert slos == example()
    assert [slo.name for slo in slos.slos] == ["availability", "latency"]
    assert [slo.budget for slo in slos.slos] == [0.001, 0.01]
    assert slos.slos[1].endpoints == ("/api/v1/payments/{id}",)
    assert [slo.describe() for slo in slos.slos] == [
        "99.9% of requests without a 5xx status over 30d",
        "99% of requests on /api/v1/payments/{id} faster than 0.5 s over 30d",
    ]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            {"threshold_seconds": 0.3},
            "slos[1].threshold_seconds: 0.3 is not a bucket of http_request_duration_seconds "
            "(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2, 2.5, 5, 7.5, 10); "
            "pick one, or add it with METRICS_BUCKETS",
        ),
        (
            {"threshold_seconds": None},
            "slos[1].threshold_seconds: required when sli is latency: one of the buckets of "
            "http_request_duration_seconds (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, "
            "0.75, 1, 2, 2.5, 5, 7.5, 10)",
        ),
        ({"name": "Latency-1"}, "slos[1].name: String should match pattern '^[a-z0-9_]+$'"),
        (
            {"name": "availability"},
            "slos: names must be unique: 'availability' is slos[0] and slos[1]",
        ),
        ({"objective": 100}, "slos[1].objective: Input should be less than 100"),
        ({"objective": 0}, "slos[1].objective: Input should be greater than 0"),
        ({"window": "14d"}, "slos[1].window: Input should be '7d', '28d' or '30d'"),
        ({"sli": "errors"}, "slos[1].sli: Input should be 'availability' or 'latency'"),
        (
            {"endpoints": ["/ok", 'x"} or vector(1)']},
            "slos[1].endpoints[1]: must be a route template starting with / without quotes, "
            "backslashes, control characters, {{ or }}",
        ),
        (
            {"endpoints": ["/{{ $value }}"]},
            "slos[1].endpoints[0]: must be a route template starting with / without quotes, "
            "backslashes, control characters, {{ or }}",
        ),
        (
            {"endpoints": []},
            "slos[1].endpoints: must list at least one route template, or be left out",
        ),
        ({"objetcive": 99}, "slos[1].objetcive: Extra inputs are not permitted"),
    ],
)
def test_invalid_fields_are_named_in_the_error(change: dict[str, Any], error: str) -> None:
    latency = {**LATENCY, **change}
    with pytest.raises(ConfigurationError) as raised:
        parse_slos({"service": "payments", "slos": [AVAILABILITY, latency]}, source="slos.yml")
    assert str(raised.value) == f"slos.yml: invalid SLO file: {error}"


def test_an_availability_slo_refuses_a_threshold_and_the_file_needs_service_and_slos() -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_slos({"service": 'pay"ments', "slos": [{**AVAILABILITY, "threshold_seconds": 1}]})
    assert str(raised.value) == (
        "invalid SLO file: service: job 'pay\"ments' must be 1-128 characters of "
        "letters, digits and _ . : / -; slos[0].threshold_seconds: only a latency SLO has a "
        "threshold; remove it"
    )
    with pytest.raises(ConfigurationError) as raised:
        parse_slos({"slos": []})
    assert str(raised.value) == (
        "invalid SLO file: service: Field required; slos: must list at least one SLO"
    )
    with pytest.raises(ConfigurationError) as raised:
        parse_slos(["not", "a", "mapping"])
    assert str(raised.value) == (
        "invalid SLO file: file: Input should be a valid dictionary or instance of SLOFile"
    )


def test_custom_buckets_decide_which_thresholds_are_accepted() -> None:
    """A service with METRICS_BUCKETS=0.3,1 may use 0.3 s, and no longer 0.5 s."""
    custom = {"service": "payments", "slos": [{**LATENCY, "threshold_seconds": 0.3}]}
    assert parse_slos(custom, buckets=(0.3, 1.0)).slos[0].threshold_seconds == 0.3
    with pytest.raises(ConfigurationError, match=r"0\.5 is not a bucket .* \(0\.3, 1\)"):
        parse_slos(EXAMPLE, buckets=(0.3, 1.0))


def test_a_file_that_is_not_yaml_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "slos.yml"
    path.write_text("service: [unclosed\n")
    with pytest.raises(ConfigurationError, match=rf"^{path}: not valid YAML \("):
        load_slos(path)


# --- the rules ----------------------------------------------------------------------------


def test_each_slo_gets_one_group_of_seven_ratios_two_rates_and_two_alerts() -> None:
    groups = rule_groups(slo_rules(example()))
    assert [group["name"] for group in groups] == [
        "slo:payments:availability",
        "slo:payments:latency",
    ]
    for group, name in zip(groups, ("availability", "latency"), strict=True):
        records = [rule for rule in group["rules"] if "record" in rule]
        assert [rule["record"] for rule in records] == [
            *(f"slo:sli_error:ratio_rate{window}" for window in RATE_WINDOWS),
            "slo:sli_errors:rate5m",
            "slo:sli_requests:rate5m",
        ]
        assert all(rule["labels"] == {"job": JOB, "slo": name} for rule in records)
        alerts = [rule for rule in group["rules"] if "alert" in rule]
        assert [(a["alert"], a["labels"]) for a in alerts] == [
            ("ErrorBudgetBurnPage", {"severity": "critical", "slo": name}),
            ("ErrorBudgetBurnTicket", {"severity": "warning", "slo": name}),
        ]
        for rule in group["rules"]:
            assert metric_names(rule["expr"]) <= LIBRARY_METRICS | {
                "http_request_duration_seconds_count",
                "vector",
                *(f"slo:sli_error:ratio_rate{window}" for window in RATE_WINDOWS),
            }
            assert "sum_over_time" not in rule["expr"]


def test_the_availability_ratio_and_page_alert_read_exactly_so() -> None:
    [availability, _] = rule_groups(slo_rules(example()))
    assert availability["rules"][0]["expr"] == (
        '(sum(rate(http_requests_total{job="payments", status=~"5.."}[5m])) or vector(0))\n'
        "/\n"
        '(sum(rate(http_requests_total{job="payments"}[5m])) > 0)'
    )
    assert availability["rules"][7:9] == [
        {
            "record": "slo:sli_errors:rate5m",
            "expr": '(sum(rate(http_requests_total{job="payments", status=~"5.."}[5m])) '
            "or vector(0))",
            "labels": {"job": "payments", "slo": "availability"},
        },
        {
            "record": "slo:sli_requests:rate5m",
            "expr": 'sum(rate(http_requests_total{job="payments"}[5m]))',
            "labels": {"job": "payments", "slo": "availability"},
        },
    ]
    assert window_error_ratio_expr(example().slos[0], JOB) == (
        'sum_over_time(slo:sli_errors:rate5m{job="payments", slo="availability"}[30d])\n'
        "/\n"
        '(sum_over_time(slo:sli_requests:rate5m{job="payments", slo="availability"}[30d]) > 0)'
    )
    page = availability["rules"][9]
    assert page["expr"] == (
        "(\n"
        '  slo:sli_error:ratio_rate1h{job="payments", slo="availability"} / 0.001 > 14.4\n'
        "and\n"
        '  slo:sli_error:ratio_rate5m{job="payments", slo="availability"} / 0.001 > 14.4\n'
        ")\n"
        "or\n"
        "(\n"
        '  slo:sli_error:ratio_rate6h{job="payments", slo="availability"} / 0.001 > 6\n'
        "and\n"
        '  slo:sli_error:ratio_rate30m{job="payments", slo="availability"} / 0.001 > 6\n'
        ")"
    )
    assert page["annotations"]["runbook_url"] == (
        f"{DOCS_RUNBOOKS_URL}/error_budget_burn.md#errorbudgetburnpage"
    )
    moved = rule_groups(slo_rules(example(), runbook_base_url="https://wiki.example/runbooks/"))
    assert moved[0]["rules"][9]["annotations"]["runbook_url"] == (
        "https://wiki.example/runbooks/error_budget_burn.md#errorbudgetburnpage"
    )


@pytest.mark.parametrize(
    ("threshold", "le"),
    [(0.005, "0.005"), (0.5, "0.5"), (1, "1.0"), (2.0, "2.0"), (10, "10.0")],
)
def test_the_latency_threshold_is_written_as_prometheus_client_writes_le(
    threshold: float, le: str
) -> None:
    """prometheus_client exposes `le="1.0"`, never `le="1"`: the selector must say the same."""
    [slo] = parse_slos({"service": "s", "slos": [{**LATENCY, "threshold_seconds": threshold}]}).slos
    # The route template's braces are escaped for RE2, the backslashes for the PromQL string.
    where = 'job="s", endpoint=~"/api/v1/payments/\\\\{id\\\\}"'
    total = f"sum(rate(http_request_duration_seconds_count{{{where}}}[5m]))"
    fast = f'sum(rate(http_request_duration_seconds_bucket{{{where}, le="{le}"}}[5m]))'
    assert error_ratio_expr(slo, "s", "5m") == f"({total} - {fast})\n/\n({total} > 0)"


def test_job_comes_from_the_option_else_the_files_service() -> None:
    assert 'job="payments"' in slo_rules(example())
    moved = slo_rules(example(), job="payments-eu")
    assert 'job="payments"' not in moved
    assert rule_groups(moved)[0]["rules"][0]["labels"] == {
        "job": "payments-eu",
        "slo": "availability",
    }
    with pytest.raises(ValueError, match="must be 1-128 characters"):
        slo_rules(example(), job='x"}')


def test_promtool_check_rules_accepts_the_slo_rules(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    path = tmp_path / SLO_RULES_FILE
    path.write_text(slo_rules(example()))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 22 rules found" in result.stdout


# --- the rules in promtool's engine -------------------------------------------------------

PAGE, TICKET = "ErrorBudgetBurnPage", "ErrorBudgetBurnTicket"


def annotations(slo: str, alert: str, burn: str) -> dict[str, str]:
    """What an alert of the example file says when burning at `burn`."""
    what = {
        "availability": "99.9% of requests without a 5xx status over 30d",
        "latency": "99% of requests on /api/v1/payments/{id} faster than 0.5 s over 30d",
    }[slo]
    pairs = {
        PAGE: "over 1h and 5m above 14.4 or over 6h and 30m above 6",
        TICKET: "over 1d and 2h above 3 or over 3d and 6h above 1",
    }[alert]
    return {
        "summary": f"payments: SLO {slo} burns its error budget {burn} times too fast",
        "description": f"The SLO {slo} of payments ({what}) is spending its error budget at "
        f"{burn} times the rate that would use it up in exactly 30d (burn rate {pairs}).",
        "objective": {"availability": "99.9%", "latency": "99%"}[slo],
        "burn_rate": burn,
        "runbook_url": f"{DOCS_RUNBOOKS_URL}/error_budget_burn.md#{alert.lower()}",
    }


def fired(slo: str, alert: str, burn: str) -> list[dict[str, Any]]:
    severity = "critical" if alert == PAGE else "warning"
    return [
        {
            "exp_labels": {"severity": severity, "slo": slo, "job": JOB},
            "exp_annotations": annotations(slo, alert, burn),
        }
    ]


def requests(
    job: str, status: str, values: str, endpoint: str = "/api/v1/payments/{id}"
) -> dict[str, str]:
    labels = f'job="{job}",method="GET",endpoint="{endpoint}",status="{status}"'
    return {"series": f"http_requests_total{{{labels}}}", "values": values}


def durations(
    suffix: str, values: str, endpoint: str = "/api/v1/payments/{id}", le: str = ""
) -> dict[str, str]:
    labels = f'job="{JOB}",method="GET",endpoint="{endpoint}"' + (f',le="{le}"' if le else "")
    return {"series": f"http_request_duration_seconds_{suffix}{{{labels}}}", "values": values}


def expect(
    expr: str, at: str, slo: str | None = None, value: float | None = None
) -> dict[str, Any]:
    """A promql_expr_test: one sample of `slo` with `value`, or no sample when slo is None."""
    samples = [] if slo is None else [{"labels": f'{{job="{JOB}",slo="{slo}"}}', "value": value}]
    return {"expr": expr, "eval_time": at, "exp_samples": samples}


def run_promtool_tests(
    tmp_path: Path, evaluation_interval: str, tests: list[dict[str, Any]]
) -> None:
    promtool = require_binary("promtool")
    (tmp_path / SLO_RULES_FILE).write_text(slo_rules(example()))
    document = {
        "rule_files": [SLO_RULES_FILE],
        "evaluation_interval": evaluation_interval,
        "tests": tests,
    }
    test_file = tmp_path / "slo_rules_test.yml"
    test_file.write_text(yaml.safe_dump(document, sort_keys=False))
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def silent(*at: str) -> list[dict[str, Any]]:
    return [
        {"alertname": name, "eval_time": t, "exp_alerts": []} for t in at for name in (PAGE, TICKET)
    ]


def test_fast_burns_page_within_the_hour_and_quiet_services_fire_nothing(tmp_path: Path) -> None:
    """50x the availability budget and 20x the latency budget page; no traffic is no alert."""
    availability_burn = {
        "name": "a 50x availability burn (5% of requests fail) pages and opens a ticket",
        "interval": "1m",
        "input_series": [
            requests(JOB, "200", "0+950x90"),
            requests(JOB, "500", "0+50x90"),
            # Another service failing completely counts for its own job only.
            requests("other", "500", "0+100x90"),
        ],
        "alert_rule_test": [
            {"alertname": PAGE, "eval_time": "0m", "exp_alerts": []},  # one sample: no rate yet
            {
                "alertname": PAGE,
                "eval_time": "10m",
                "exp_alerts": fired("availability", PAGE, "50.0"),
            },
            {
                "alertname": PAGE,
                "eval_time": "1h",
                "exp_alerts": fired("availability", PAGE, "50.0"),
            },
            {
                "alertname": TICKET,
                "eval_time": "1h",
                "exp_alerts": fired("availability", TICKET, "50.0"),
            },
        ],
        # Burn rates in tenths, rounded: floating-point division is not exact.
        "promql_expr_test": [
            expect(
                'round(10 * slo:sli_error:ratio_rate1h{slo="availability"} / 0.001)',
                "1h",
                "availability",
                500,
            )
        ],
    }
    latency_burn = {
        "name": "a 20x latency burn (20% slower than 0.5 s on the SLO's route) pages",
        "interval": "1m",
        "input_series": [
            durations("count", "0+100x90"),
            durations("bucket", "0+80x90", le="0.5"),
            durations("bucket", "0+100x90", le="+Inf"),
            # Slow requests on a route outside the SLO's endpoints do not count.
            durations("count", "0+100x90", endpoint="/reports"),
            durations("bucket", "0x90", endpoint="/reports", le="0.5"),
        ],
        "alert_rule_test": [
            {"alertname": PAGE, "eval_time": "1h", "exp_alerts": fired("latency", PAGE, "20.0")},
        ],
        "promql_expr_test": [
            expect(
                'round(10 * slo:sli_error:ratio_rate5m{slo="latency"} / 0.01)',
                "30m",
                "latency",
                200,
            )
        ],
    }
    idle = {
        "name": "series without traffic give no ratio and no alert",
        "interval": "1m",
        "input_series": [
            requests(JOB, "200", "0x90"),
            requests(JOB, "500", "5x90"),
            durations("count", "7x90"),
            durations("bucket", "3x90", le="0.5"),
        ],
        "alert_rule_test": silent("10m", "1h"),
        "promql_expr_test": [
            expect("slo:sli_error:ratio_rate5m", "1h"),
            expect("slo:sli_error:ratio_rate3d", "1h"),
        ],
    }
    absent = {
        "name": "no series at all give no ratio and no alert",
        "interval": "1m",
        "input_series": [],
        "alert_rule_test": silent("10m", "1h"),
        "promql_expr_test": [
            expect("slo:sli_error:ratio_rate1h", "1h"),
        ],
    }
    healthy = {
        "name": "traffic without a single 5xx series is an error ratio of 0",
        "interval": "1m",
        "input_series": [requests(JOB, "200", "0+100x90")],
        "alert_rule_test": silent("1h"),
        "promql_expr_test": [
            expect('1000 * slo:sli_error:ratio_rate5m{slo="availability"}', "1h", "availability", 0)
        ],
    }
    run_promtool_tests(tmp_path, "1m", [availability_burn, latency_burn, idle, absent, healthy])


def test_slow_burns_open_a_ticket_and_an_even_half_budget_fires_nothing(tmp_path: Path) -> None:
    """Over whole days, sampled every 2 minutes and evaluated hourly to keep promtool quick."""
    half_budget = {
        "name": "half the 30d budget spent evenly (burn rate 0.5) fires nothing",
        "interval": "2m",
        "input_series": [
            requests(JOB, "200", "0+1999x21600"),
            requests(JOB, "500", "0+1x21600"),
        ],
        "alert_rule_test": silent("1h", "1d", "3d", "15d", "30d"),
        # The dashboard's and slo-report's "error budget remaining" at the window's end.
        "promql_expr_test": [
            expect(
                f"round(1000 * (1 - ({window_error_ratio_expr(example().slos[0], JOB)}) / 0.001))",
                "30d",
                "availability",
                500,
            )
        ],
    }
    two_x_for_a_day = {
        "name": "a 2x burn for a day opens a ticket (3d and 6h above 1) but does not page",
        "interval": "2m",
        "input_series": [
            requests(JOB, "200", "0+998x720"),
            requests(JOB, "500", "0+2x720"),
        ],
        "alert_rule_test": [
            {
                "alertname": TICKET,
                "eval_time": "1d",
                "exp_alerts": fired("availability", TICKET, "2.0"),
            },
            {"alertname": PAGE, "eval_time": "1d", "exp_alerts": []},
            {"alertname": PAGE, "eval_time": "12h", "exp_alerts": []},
        ],
    }
    run_promtool_tests(tmp_path, "1h", [half_budget, two_x_for_a_day])


# --- the dashboard and the export ---------------------------------------------------------


def test_the_dashboard_gains_one_row_per_slo_after_the_packaged_panels() -> None:
    packaged = json.loads(grafana_dashboard())["panels"]
    board = json.loads(grafana_dashboard(example()))
    panels = board["panels"]
    assert panels[: len(packaged)] == packaged
    added = panels[len(packaged) :]
    assert [(p["type"], p["title"]) for p in added] == [
        ("row", "SLO availability: 99.9% of requests without a 5xx status over 30d"),
        ("stat", "availability: SLI over 30d"),
        ("stat", "availability: error budget remaining"),
        ("timeseries", "availability: burn rate per window"),
        ("row", "SLO latency: 99% of requests on /api/v1/payments/{id} faster than 0.5 s over 30d"),
        ("stat", "latency: SLI over 30d"),
        ("stat", "latency: error budget remaining"),
        ("timeseries", "latency: burn rate per window"),
    ]
    assert [p["id"] for p in panels] == list(range(1, len(panels) + 1))
    assert_panels_do_not_overlap(panels)
    ratio = window_error_ratio_expr(example().slos[0], JOB).replace("\n", " ")
    assert [t["expr"] for t in added[1]["targets"]] == [f"100 * (1 - ({ratio}))"]
    assert [t["expr"] for t in added[2]["targets"]] == [f"100 * (1 - ({ratio}) / 0.001)"]
    assert [(t["legendFormat"], t["expr"]) for t in added[3]["targets"]] == [
        (w, f'slo:sli_error:ratio_rate{w}{{job="payments", slo="availability"}} / 0.001')
        for w in RATE_WINDOWS
    ]
    assert added[7]["targets"][0]["expr"] == (
        'slo:sli_error:ratio_rate5m{job="payments", slo="latency"} / 0.01'
    )
    assert slo_dashboard_panels(example(), first_id=10, top=32)[0]["gridPos"] == {
        "h": 1,
        "w": 24,
        "x": 0,
        "y": 32,
    }


def test_export_with_slos_writes_slo_rules_next_to_alert_rules(tmp_path: Path) -> None:
    written = export_assets(tmp_path, slos=example())
    config = tmp_path / "config"
    assert written == [
        config / ALERT_RULES_FILE,
        config / GRAFANA_DASHBOARD_FILE,
        config / SLO_RULES_FILE,
    ]
    assert written[0].read_text() == alert_rules(job="payments")
    assert written[1].read_text() == grafana_dashboard(example())
    assert written[2].read_text() == slo_rules(example())
    # Without --force nothing is overwritten, the SLO rules included.
    written[2].write_text("mine")
    with pytest.raises(FileExistsError):
        export_assets(tmp_path, slos=example(), force=False)
    assert written[2].read_text() == "mine"


def test_kubernetes_export_puts_the_slo_groups_into_the_prometheus_rule(tmp_path: Path) -> None:
    base = "https://runbooks.example/ops"
    written = export_assets(tmp_path, slos=example(), format="kubernetes", runbook_base_url=base)
    assert [path.name for path in written] == list(KUBERNETES_FILES)
    rule = yaml.safe_load(written[0].read_text())
    groups = rule_groups(alert_rules(job=JOB, runbook_base_url=base)) + rule_groups(
        slo_rules(example(), runbook_base_url=base)
    )
    assert rule["spec"]["groups"] == groups
    config_map = yaml.safe_load(written[2].read_text())
    assert config_map["data"]["amani-observability.json"] == grafana_dashboard(example())


def test_cli_export_refuses_a_threshold_that_is_not_a_bucket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    slos = tmp_path / "slos.yml"
    slos.write_text(
        yaml.safe_dump({"service": "payments", "slos": [{**LATENCY, "threshold_seconds": 0.3}]})
    )
    assert main(["export-assets", str(tmp_path / "out"), "--slos", str(slos)]) == 1
    assert capsys.readouterr().err == (
        f"amani-observability: {slos}: invalid SLO file: slos[0].threshold_seconds: 0.3 is not "
        "a bucket of http_request_duration_seconds (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, "
        "0.25, 0.5, 0.75, 1, 2, 2.5, 5, 7.5, 10); pick one, or add it with METRICS_BUCKETS\n"
    )
    assert not (tmp_path / "out").exists()

    # The service's METRICS_BUCKETS, from the environment or the option, has 0.3.
    monkeypatch.setenv("METRICS_BUCKETS", "0.1,0.3,1")
    assert main(["export-assets", str(tmp_path / "out"), "--slos", str(slos)]) == 0
    assert 'le="0.3"' in (tmp_path / "out" / "config" / SLO_RULES_FILE).read_text()
    monkeypatch.delenv("METRICS_BUCKETS")
    code = main(
        ["export-assets", str(tmp_path / "out2"), "--slos", str(slos), "--metrics-buckets", "0.3"]
    )
    assert code == 0
    assert (
        main(["export-assets", str(tmp_path / "o3"), "--slos", str(slos), "--metrics-buckets", "x"])
        == 1
    )
    assert capsys.readouterr().err.endswith(
        "amani-observability: METRICS_BUCKETS=x: must be comma-separated numbers, "
        "e.g. 0.1,0.5,1,2\n"
    )


def test_cli_export_takes_the_job_from_the_slo_file_unless_given(tmp_path: Path) -> None:
    slos = tmp_path / "slos.yml"
    slos.write_text(yaml.safe_dump(EXAMPLE))
    assert main(["export-assets", str(tmp_path / "a"), "--slos", str(slos)]) == 0
    assert (tmp_path / "a" / "config" / SLO_RULES_FILE).read_text() == slo_rules(example())
    assert (tmp_path / "a" / "config" / ALERT_RULES_FILE).read_text() == alert_rules(job="payments")
    assert main(["export-assets", str(tmp_path / "b"), "--slos", str(slos), "--job", "pay-eu"]) == 0
    assert (tmp_path / "b" / "config" / SLO_RULES_FILE).read_text() == slo_rules(
        example(), job="pay-eu"
    )
    assert main(["export-assets", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "config" / ALERT_RULES_FILE).read_text() == alert_rules()
    assert not (tmp_path / "c" / "config" / SLO_RULES_FILE).exists()


# --- slo-report without a healthy Prometheus ---------------------------------------------


def write_example(tmp_path: Path) -> Path:
    path = tmp_path / "slos.yml"
    path.write_text(yaml.safe_dump(EXAMPLE))
    return path


def test_slo_report_exits_2_with_a_clear_error_when_prometheus_is_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code = main(["slo-report", "--prometheus-url", url, "--slos", str(write_example(tmp_path))])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert captured.err.startswith(
        f"amani-observability: Prometheus at {url} did not answer: ConnectError: "
    )


def test_slo_report_exits_2_when_prometheus_answers_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = {"status": "error", "errorType": "bad_data", "error": "parse error at char 3"}
    with StandIn(Reply(status=400, body=json.dumps(body).encode())) as prometheus:
        url = prometheus.url("")
        code = main(["slo-report", "--prometheus-url", url, "--slos", str(write_example(tmp_path))])
        [request] = prometheus.requests
    assert code == 2
    assert capsys.readouterr().err == (
        f"amani-observability: Prometheus at {url} did not answer: "
        "HTTP 400: parse error at char 3\n"
    )
    assert request.path.startswith("/api/v1/query?query=sum_over_time")


def test_slo_report_says_no_data_for_a_prometheus_without_the_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = {"status": "success", "data": {"resultType": "vector", "result": []}}
    with StandIn(Reply(body=json.dumps(empty).encode())) as prometheus:
        code = main(
            [
                "slo-report",
                "--prometheus-url",
                prometheus.url("/"),
                "--slos",
                str(write_example(tmp_path)),
            ]
        )
        queries = len(prometheus.requests)
    assert code == 0
    no_data = "  burn rate: " + "  ".join(f"{w} no data" for w in RATE_WINDOWS)
    hint = (
        "  (no data: no traffic, or this Prometheus does not load the slo_rules.yml "
        "exported from this file)"
    )
    assert capsys.readouterr().out.splitlines() == [
        "SLO availability (job payments): 99.9% of requests without a 5xx status over 30d",
        "  SLI over 30d: no data",
        "  error budget remaining: no data",
        no_data,
        hint,
        "",
        "SLO latency (job payments): 99% of requests on /api/v1/payments/{id} faster than "
        "0.5 s over 30d",
        "  SLI over 30d: no data",
        "  error budget remaining: no data",
        no_data,
        hint,
    ]
    assert queries == 2 * (1 + len(RATE_WINDOWS))


def test_slo_report_exits_2_on_an_invalid_slo_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "slos.yml"
    path.write_text(
        yaml.safe_dump({"service": "payments", "slos": [{**AVAILABILITY, "window": "1y"}]})
    )
    code = main(["slo-report", "--prometheus-url", "http://127.0.0.1:9", "--slos", str(path)])
    assert code == 2
    assert capsys.readouterr().err == (
        f"amani-observability: {path}: invalid SLO file: slos[0].window: "
        "Input should be '7d', '28d' or '30d'\n"
    )
