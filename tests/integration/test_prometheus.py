"""The packaged assets against a real Prometheus scraping the demo under a real uvicorn.

Prometheus (Debian package `prometheus`) scrapes the demo every second with the exported
alert rules loaded and a real Alertmanager configured; the test drives ok, slow, failing
and business traffic, then asks Prometheus' HTTP API for every dashboard panel expression,
every alert expression and the guide's four example queries. A second, dead target of the
job makes ApplicationDown fire through to Alertmanager.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from amani_observability.assets import alert_names, export_assets, grafana_dashboard, runbook_url
from amani_observability.cli import main
from amani_observability.slo import RATE_WINDOWS, load_slos
from tests.conftest import LIBRARY_PREFIXES, free_port, require_binary
from tests.support import ServerProcess, UvicornProcess, wait_for

pytestmark = pytest.mark.integration

JOB = "amani-backend"
# What Grafana would put in for the dashboard's variables; every `$` in an expression
# must be one of these, so a new variable cannot slip by untested.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$job": JOB}
GUIDE_QUERIES = {
    "request rate": "rate(http_requests_total[5m])",
    "error rate": 'sum(rate(http_requests_total{status=~"5.."}[5m])) '
    "/ sum(rate(http_requests_total[5m]))",
    "p95 latency": "histogram_quantile(0.95, rate(http_request_duration_seconds_bucket[5m]))",
    "average latency by endpoint": "avg by (endpoint) "
    "(rate(http_request_duration_seconds_sum[5m]) / rate(http_request_duration_seconds_count[5m]))",
}
ROUNDS = 4
FAILS_PER_ROUND = 2
# The demo fails 2 of its 9 requests per round: far beyond 0.1%, so the availability SLO
# pages. Every request answers within 1 s (`le="1.0"`, as prometheus_client writes it).
SLO_FILE = {
    "service": JOB,
    "slos": [
        {"name": "availability", "objective": 99.9, "window": "30d", "sli": "availability"},
        {
            "name": "latency",
            "objective": 99,
            "window": "7d",
            "sli": "latency",
            "threshold_seconds": 1,
        },
    ],
}


def Server(argv: list[str], log_path: Path, ready_url: str) -> ServerProcess:
    """Prometheus or Alertmanager: ready once `/-/ready` answers 200."""
    return ServerProcess(argv, log_path=log_path, ready_url=ready_url, ready_status=200)


@pytest.fixture(scope="module")
def module_environment() -> Iterator[None]:
    """clean_environment for module-scoped fixtures, which run before it: without this the
    demo would inherit a developer's SENTRY_DSN, TRACING_ENABLED..."""
    with pytest.MonkeyPatch.context() as environment:
        for name in list(os.environ):
            if name.startswith(LIBRARY_PREFIXES):
                environment.delenv(name)
        yield


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, module_environment: None
) -> Iterator[dict[str, Any]]:
    """Demo app, Alertmanager and Prometheus, with traffic driven and scraped."""
    prometheus = require_binary("prometheus")
    alertmanager = require_binary("prometheus-alertmanager")
    tmp = tmp_path_factory.mktemp("prometheus")
    slos_path = tmp / "slos.yml"
    slos_path.write_text(yaml.safe_dump(SLO_FILE))
    [rules_path, _, slo_rules_path] = export_assets(tmp, job=JOB, slos=load_slos(slos_path))
    # A second target of the job where nothing listens: ApplicationDown must fire for it
    # and reach Alertmanager. Its `for: 1m` becomes 0s here, so the test need not wait a
    # minute; the expression, labels and annotations stay the packaged ones.
    rules = rules_path.read_text()
    assert rules.count("for: 1m") == 1
    rules_path.write_text(rules.replace("for: 1m", "for: 0s"))
    app_port, prom_port, am_port, dead_port = free_port(), free_port(), free_port(), free_port()

    (tmp / "alertmanager.yml").write_text(
        "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n"
    )
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_path), str(slo_rules_path)],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
        },
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [
                    {"targets": [f"127.0.0.1:{app_port}", f"127.0.0.1:{dead_port}"]}
                ],
            }
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_url = f"http://127.0.0.1:{prom_port}"

    with (
        UvicornProcess(
            "examples.demo_app.main:app", app_port, log_path=tmp / "uvicorn.log"
        ) as demo,
        Server(
            [
                alertmanager,
                f"--config.file={tmp / 'alertmanager.yml'}",
                f"--storage.path={tmp / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            tmp / "alertmanager.log",
            f"http://127.0.0.1:{am_port}/-/ready",
        ),
        Server(
            [
                prometheus,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            tmp / "prometheus.log",
            f"{prom_url}/-/ready",
        ),
    ):
        wait_for(
            "the demo target to be up",
            lambda: query(prom_url, f'up{{job="{JOB}"}} == 1'),
            30,
        )
        with httpx.Client(base_url=demo.base_url, timeout=10) as client:
            for _ in range(ROUNDS):  # bounded: ROUNDS x (a few requests + 1.2 s)
                drive_one_round(client)
                time.sleep(1.2)  # let Prometheus scrape between rounds, so rate() has slopes
        failed = ROUNDS * FAILS_PER_ROUND
        # Wait for a scrape that has seen every request we sent.
        wait_for(
            "the last failing request to be scraped",
            lambda: (
                value(
                    query(prom_url, f'http_requests_total{{job="{JOB}",endpoint="/api/v1/fail"}}')
                )
                == failed
            ),
            20,
        )
        # ... and for the rule manager to have evaluated every rule at least once since.
        wait_for(
            "every alert rule to be evaluated",
            lambda: all(r["lastEvaluation"] > "2000" for r in alerting_rules(prom_url)),
            20,
        )
        yield {
            "url": prom_url,
            "demo": demo.base_url,
            "failed": failed,
            "am_port": am_port,
            "dead": f"127.0.0.1:{dead_port}",
            "slos": slos_path,
        }


def drive_one_round(client: httpx.Client) -> None:
    assert client.get("/health").status_code == 200
    assert (
        client.post("/api/v1/users/register", json={"email": "ada@example.com"}).status_code == 201
    )
    created = client.post("/api/v1/escrow/transactions", json={"type": "hold", "amount": 10})
    assert created.status_code == 201
    transaction = created.json()["transaction_id"]
    assert client.get(f"/api/v1/escrow/transactions/{transaction}").status_code == 200
    assert client.get("/api/v1/escrow/transactions/missing").status_code == 404
    kyc = {"user_id": "u1", "document_type": "passport"}
    assert client.post("/api/v1/kyc/submissions", json=kyc).status_code == 202
    assert client.get("/api/v1/slow", params={"seconds": 0.3}).status_code == 200
    for _ in range(FAILS_PER_ROUND):
        # uvicorn closes the connection after an unhandled exception: don't reuse it.
        failed = client.get("/api/v1/fail", headers={"Connection": "close"})
        assert failed.status_code == 500


def query(prom_url: str, expr: str) -> list[dict[str, Any]]:
    """Evaluate `expr` now; fail with Prometheus' own message if it does not parse."""
    response = httpx.get(f"{prom_url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{expr}\n{body.get('errorType')}: {body.get('error')}"
    assert body["data"]["resultType"] == "vector", expr
    return body["data"]["result"]  # type: ignore[no-any-return]


def value(result: list[dict[str, Any]]) -> float | None:
    return float(result[0]["value"][1]) if len(result) == 1 else None


def loaded_rules(prom_url: str, file_name: str) -> list[dict[str, Any]]:
    """The rules Prometheus loaded from the rules file called `file_name`."""
    groups = httpx.get(f"{prom_url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    return [
        rule for group in groups if Path(group["file"]).name == file_name for rule in group["rules"]
    ]


def alerting_rules(prom_url: str) -> list[dict[str, Any]]:
    return [
        rule for rule in loaded_rules(prom_url, "alert_rules.yml") if rule["type"] == "alerting"
    ]


def panel_queries(dashboard: str | None = None) -> dict[str, str]:
    """Every target expression of the dashboard, with Grafana's variables filled in."""
    queries = {}
    for panel in json.loads(dashboard or grafana_dashboard())["panels"]:
        for target in panel.get("targets", []):  # rows have none
            expr = target["expr"]
            for variable in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
                expr = expr.replace(variable, GRAFANA_VARIABLES[variable])
            assert "$" not in expr, f"unknown Grafana variable in {target['expr']}"
            queries[f"{panel['title']} {target['refId']}"] = expr
    return queries


def test_prometheus_loads_and_evaluates_every_alert_rule_without_error(
    stack: dict[str, Any],
) -> None:
    found = alerting_rules(stack["url"])
    assert [rule["name"] for rule in found] == alert_names()
    assert {rule["name"]: (rule["health"], rule.get("lastError", "")) for rule in found} == {
        name: ("ok", "") for name in alert_names()
    }


def test_every_alert_expression_parses_and_evaluates(stack: dict[str, Any]) -> None:
    for rule in alerting_rules(stack["url"]):
        query(stack["url"], rule["query"])
        # Below the threshold the expression itself: it must reach real series, except
        # for node_exporter's disk metrics, which this test does not run.
        inner = re.split(r"\s(?:>|<|==)\s[\d.]+\s*(?:and|$)", rule["query"])[0]
        if rule["name"] not in ("DiskSpaceLow", "DatabaseConnectionIssues"):
            assert query(stack["url"], inner), rule["name"]


def test_every_dashboard_panel_query_parses_and_returns_data(
    stack: dict[str, Any],
) -> None:
    results = {name: query(stack["url"], expr) for name, expr in panel_queries().items()}
    # The guide's nine panels, the business panel with three queries; the event-loop
    # panel with two; the losses panel.
    assert len(results) == 14
    # Every panel has data: the demo counts its business events and times its SQL.
    assert [name for name, result in results.items() if not result] == []

    error_rate = {r["metric"]["endpoint"]: float(r["value"][1]) for r in results["Error Rate A"]}
    assert error_rate["/api/v1/fail"] == 1.0
    assert error_rate["/api/v1/users/register"] == 0.0
    p95 = {
        r["metric"]["endpoint"]: float(r["value"][1])
        for r in results["Response Time (95th percentile) A"]
    }
    # /slow sleeps 0.3 s: its p95 lies above the 0.25 s bucket (and, unless the machine is
    # badly overloaded, in the 0.25-0.5 s one); /health answers at once.
    assert 0.25 < p95["/api/v1/slow"] <= 1.0
    assert p95["/health"] < p95["/api/v1/slow"]
    errors = {
        (r["metric"]["error_type"], r["metric"]["endpoint"]) for r in results["Error Types A"]
    }
    assert errors == {("RuntimeError", "/api/v1/fail")}
    statuses = {r["metric"]["status"] for r in results["Request Status Distribution A"]}
    assert statuses == {"200", "201", "202", "404", "500"}
    operations = {
        r["metric"]["operation"] for r in results["Database Query Duration (95th percentile) A"]
    }
    assert operations == {"INSERT", "SELECT"}
    escrow = {(r["metric"]["type"], r["metric"]["status"]) for r in results["Business Metrics A"]}
    assert escrow == {("hold", "success")}
    kyc = {r["metric"]["status"] for r in results["Business Metrics C"]}
    assert kyc == {"pending"}


def test_the_guides_four_queries_parse_and_return_data(stack: dict[str, Any]) -> None:
    for name, expr in GUIDE_QUERIES.items():
        assert query(stack["url"], expr), name
    share = value(query(stack["url"], GUIDE_QUERIES["error rate"]))
    assert share is not None
    assert 0.0 < share < 1.0


def test_scraped_counters_equal_the_requests_sent(stack: dict[str, Any]) -> None:
    url = stack["url"]
    failed = stack["failed"]
    sent = value(query(url, f'http_requests_total{{job="{JOB}",endpoint="/api/v1/fail"}}'))
    errors = value(
        query(url, f'errors_total{{job="{JOB}",error_type="RuntimeError",endpoint="/api/v1/fail"}}')
    )
    kinds = query(
        url, f'sum by (status) (http_requests_total{{job="{JOB}",endpoint="/api/v1/fail"}})'
    )
    assert (sent, errors) == (failed, failed)
    assert [r["metric"]["status"] for r in kinds] == ["500"]


def test_check_command_confirms_rules_alertmanager_metrics_and_names_the_dead_target(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["check", "--prometheus-url", stack["url"], "--metrics-url", stack["demo"]])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1, lines
    [failure] = [line for line in lines if line.startswith("FAIL")]
    assert failure.startswith(
        f"FAIL  prometheus: target {JOB} http://{stack['dead']}/metrics is down ("
    )
    assert "connection refused" in failure
    assert f"ok    metrics: {stack['demo']}/metrics serves http_requests_total" in lines
    assert f"ok    prometheus: all {len(alert_names())} alert rules are loaded" in lines
    assert (
        f"ok    prometheus: Alertmanager 127.0.0.1:{stack['am_port']} accepts connections" in lines
    )
    assert f"ok    prometheus: target {JOB} {stack['demo']}/metrics is up" in lines


def test_application_down_fires_for_the_dead_target_and_reaches_alertmanager(
    stack: dict[str, Any],
) -> None:
    def received() -> list[dict[str, Any]]:
        url = f"http://127.0.0.1:{stack['am_port']}/api/v2/alerts"
        alerts = httpx.get(url, timeout=5).json()
        return [a for a in alerts if a["labels"]["alertname"] == "ApplicationDown"]

    [alert] = wait_for("Alertmanager to receive ApplicationDown", received, 30)
    assert alert["labels"] == {
        "alertname": "ApplicationDown",
        "job": JOB,
        "instance": stack["dead"],
        "severity": "critical",
    }
    assert alert["annotations"] == {
        "summary": f"{JOB} {stack['dead']} is down",
        "description": f"Prometheus has failed to scrape {stack['dead']} of {JOB} for 1 minute: "
        "the process is not running, not listening, or /metrics fails.",
        "runbook_url": runbook_url("monitoring_runbook.md", "applicationdown"),
    }
    assert alert["status"]["state"] == "active"


def test_prometheus_loads_the_slo_rules_beside_the_alert_rules_and_the_page_fires(
    stack: dict[str, Any],
) -> None:
    url = stack["url"]
    rules = loaded_rules(url, "slo_rules.yml")
    assert [(rule["type"], rule["name"]) for rule in rules] == 2 * [
        *(("recording", f"slo:sli_error:ratio_rate{window}") for window in RATE_WINDOWS),
        ("recording", "slo:sli_errors:rate5m"),
        ("recording", "slo:sli_requests:rate5m"),
        ("alerting", "ErrorBudgetBurnPage"),
        ("alerting", "ErrorBudgetBurnTicket"),
    ]
    wait_for(
        "the availability SLO to page",
        lambda: query(url, 'ALERTS{alertname="ErrorBudgetBurnPage", alertstate="firing"}'),
        30,
    )
    assert [(r["health"], r.get("lastError", "")) for r in loaded_rules(url, "slo_rules.yml")] == [
        ("ok", "")
    ] * len(rules)
    firing = query(url, 'ALERTS{alertstate="firing", slo!=""}')
    assert sorted((r["metric"]["alertname"], r["metric"]["slo"]) for r in firing) == [
        ("ErrorBudgetBurnPage", "availability"),
        ("ErrorBudgetBurnTicket", "availability"),
    ]
    # Every request of the demo answered within 1 s: the bucket le="1.0" holds them all.
    assert value(query(url, f'slo:sli_error:ratio_rate5m{{job="{JOB}", slo="latency"}}')) == 0.0
    slo_panels = {
        name: expr
        for name, expr in panel_queries(
            grafana_dashboard(load_slos(stack["slos"]), job=JOB)
        ).items()
        if name.startswith(("availability:", "latency:"))
    }
    assert len(slo_panels) == 2 * (2 + len(RATE_WINDOWS))
    assert [name for name, expr in slo_panels.items() if not query(url, expr)] == []
    assert value(query(url, slo_panels["latency: SLI over 7d A"])) == 100.0
    assert value(query(url, slo_panels["latency: error budget remaining A"])) == 100.0


def test_slo_report_prints_sli_budget_and_burn_rates_and_exits_1_while_paging(
    stack: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    wait_for(
        "the availability SLO to page",
        lambda: query(stack["url"], 'ALERTS{alertname="ErrorBudgetBurnPage", alertstate="firing"}'),
        30,
    )
    code = main(["slo-report", "--prometheus-url", stack["url"], "--slos", str(stack["slos"])])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1, lines
    availability, latency = "\n".join(lines).split("\n\n")
    assert latency.splitlines() == [
        f"SLO latency (job {JOB}): 99% of requests faster than 1 s over 7d",
        "  SLI over 7d: 100.000%",
        "  error budget remaining: 100.0%",
        "  burn rate: 5m 0.00  30m 0.00  1h 0.00  2h 0.00  6h 0.00  1d 0.00  3d 0.00",
    ]
    first, sli, budget, burns, *alerts = availability.splitlines()
    assert first == f"SLO availability (job {JOB}): 99.9% of requests without a 5xx status over 30d"
    # About 2 of 9 requests fail (the exact share depends on rate()'s extrapolation at the
    # edges of real scrapes): far more than the 0.1% budget on every window.
    sli_percent = float(re.fullmatch(r"  SLI over 30d: (\d+\.\d{3})%", sli)[1])  # type: ignore[index]
    assert 60 < sli_percent < 90, sli
    spent = float(re.fullmatch(r"  error budget remaining: (-\d+\.\d)%", budget)[1])  # type: ignore[index]
    # The budget is the same ratio seen against 0.1% (the SLI is rounded to 3 decimals).
    assert abs(spent - 100 * (1 - (100 - sli_percent) / 100 / 0.001)) < 1, (sli, budget)
    windows = re.findall(r" (\w+) (\d+\.\d\d)", burns.removeprefix("  burn rate:"))
    assert [window for window, _ in windows] == list(RATE_WINDOWS), burns
    assert all(14.4 < float(rate) < 1000 for _, rate in windows), burns
    assert [alert.split(":")[0] for alert in alerts] == [
        "  PAGE ErrorBudgetBurnPage",
        "  PAGE ErrorBudgetBurnPage",
        "  TICKET ErrorBudgetBurnTicket",
        "  TICKET ErrorBudgetBurnTicket",
    ]
