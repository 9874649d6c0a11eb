"""The packaged alert rules and Grafana dashboard, checked by promtool where it matters."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from amani_observability._version import __version__
from amani_observability.assets import (
    ALERT_RULES_FILE,
    DEFAULT_JOB,
    DEFAULT_MEMORY_LIMIT_BYTES,
    DOCS_RUNBOOKS_URL,
    GRAFANA_DASHBOARD_FILE,
    KUBERNETES_FILES,
    KubernetesOptions,
    alert_names,
    alert_rules,
    export_assets,
    grafana_dashboard,
    kubernetes_manifests,
    runbook_url,
)
from tests.conftest import require_binary
from tests.support import ROOT

ASSETS = ROOT / "src" / "amani_observability" / "assets"
PROMTOOL_TESTS = ROOT / "tests" / "promtool" / "alert_rules_test.yml"

GUIDE_ALERTS = [
    "HighErrorRate",
    "HighResponseTime",
    "DatabaseConnectionIssues",
    "HighMemoryUsage",
    "HighCPUUsage",
    "DiskSpaceLow",
    "ApplicationDown",
    "SlowDatabaseQueries",
]
# The guide's alerts, then the ones the library adds, in the order of the rules file.
ALERTS = [*GUIDE_ALERTS, "EventLoopBlocked", "ObservabilityPipelineLosing"]
GUIDE_PANELS = [
    "Request Rate",
    "Response Time (95th percentile)",
    "Error Rate",
    "Active Database Connections",
    "Request Status Distribution",
    "Requests In Progress",
    "Database Query Duration (95th percentile)",
    "Business Metrics",
    "Error Types",
]
PANELS = [
    *GUIDE_PANELS,
    "Event Loop Lag (99th percentile) and Stalls",
    "Observability Losses",
]
# Everything the rules and panels may query: the library's catalogue, prometheus_client's
# process collector, Prometheus' own `up`, and node_exporter's filesystem metrics.
LIBRARY_METRICS = {
    "http_requests_total",
    "http_request_duration_seconds_bucket",
    "http_requests_in_progress",
    "db_connections_active",
    "db_query_duration_seconds_bucket",
    "db_query_duration_seconds_count",
    "escrow_transactions_total",
    "user_registrations_total",
    "kyc_submissions_total",
    "errors_total",
    "event_loop_lag_seconds_bucket",
    "event_loop_stalls_total",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "amani_observability_dropped_total",
}
NODE_EXPORTER_METRICS = {
    "node_filesystem_avail_bytes",
    "node_filesystem_size_bytes",
    "node_filesystem_readonly",
}


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(alert_rules())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads(grafana_dashboard())  # type: ignore[no-any-return]


def metric_names(expr: str) -> set[str]:
    """Identifiers in a PromQL expression that are series, not functions or keywords."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", without_strings)
    without_grouping = re.sub(r"\b(by|on|ignoring|without)\s*\([^)]*\)", "", without_labels)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_grouping))
    names -= {"sum", "rate", "increase", "histogram_quantile", "min_over_time"}
    names -= {"and", "unless", "or"}
    return names - {"offset"}


def test_assets_are_read_from_the_package_files() -> None:
    """Only the runbook references change on the way out: they become absolute URLs."""
    packaged = (ASSETS / ALERT_RULES_FILE).read_text()
    assert alert_rules() == packaged.replace(
        "runbook_url: docs/runbooks/", f"runbook_url: {DOCS_RUNBOOKS_URL}/"
    )
    assert packaged.count("runbook_url: docs/runbooks/") == len(ALERTS)
    assert grafana_dashboard() == (ASSETS / GRAFANA_DASHBOARD_FILE).read_text()


def test_rules_hold_the_guides_eight_alerts_and_ours_with_for_severity_and_annotations() -> None:
    found = rules()
    assert [rule["alert"] for rule in found] == ALERTS
    assert alert_names() == ALERTS
    for rule in found:
        name = rule["alert"]
        assert re.fullmatch(r"\d+m", rule["for"]), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}, name
        assert rule["annotations"]["runbook_url"] == (
            f"{DOCS_RUNBOOKS_URL}/monitoring_runbook.md#{name.lower()}"
        )
    severities = {rule["alert"]: rule["labels"]["severity"] for rule in found}
    assert [name for name, level in severities.items() if level == "critical"] == [
        "HighErrorRate",
        "DatabaseConnectionIssues",
        "ApplicationDown",
    ]


def test_rules_query_only_metrics_the_library_or_node_exporter_exports() -> None:
    by_alert = {rule["alert"]: metric_names(rule["expr"]) for rule in rules()}
    assert by_alert["DiskSpaceLow"] == NODE_EXPORTER_METRICS
    assert by_alert["ApplicationDown"] == {"up"}
    for name, used in by_alert.items():
        if name not in ("DiskSpaceLow", "ApplicationDown"):
            assert used <= LIBRARY_METRICS, (name, used - LIBRARY_METRICS)


def test_promtool_check_rules_accepts_the_packaged_rules() -> None:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "rules", str(ASSETS / ALERT_RULES_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_unit_tests_fire_each_alert_on_bad_series_only() -> None:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", str(PROMTOOL_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_cover_firing_and_silence_for_every_alert() -> None:
    """Each alert has one case where it fires for exactly the bad series, one where it is silent."""
    document = yaml.safe_load(PROMTOOL_TESTS.read_text())
    firing: dict[str, int] = {}
    silent: dict[str, int] = {}
    for group in document["tests"]:
        for case in group["alert_rule_test"]:
            bucket = firing if case["exp_alerts"] else silent
            bucket[case["alertname"]] = bucket.get(case["alertname"], 0) + 1
            if case["exp_alerts"]:
                assert len(case["exp_alerts"]) == 1, case
    assert sorted(firing) == sorted(ALERTS)
    assert sorted(silent) == sorted(ALERTS)


def test_alert_rules_rewrite_job_and_memory_limit_and_stay_valid(tmp_path: Path) -> None:
    text = alert_rules(job="payments-api", memory_limit_bytes=2_147_483_648)
    by_alert = {rule["alert"]: rule for rule in yaml.safe_load(text)["groups"][0]["rules"]}
    assert by_alert["ApplicationDown"]["expr"].strip() == 'up{job="payments-api"} == 0'
    assert by_alert["HighMemoryUsage"]["expr"].strip() == (
        "process_resident_memory_bytes / 2147483648 > 0.9"
    )
    assert (
        "2147483648-byte memory limit" in by_alert["HighMemoryUsage"]["annotations"]["description"]
    )
    assert str(DEFAULT_MEMORY_LIMIT_BYTES) not in text
    assert "amani-backend" not in text

    promtool = require_binary("promtool")
    path = tmp_path / "rules.yml"
    path.write_text(text)
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"job": 'x"} or vector(1) #'}, ValueError),
        ({"job": ""}, ValueError),
        ({"memory_limit_bytes": 0}, ValueError),
        ({"memory_limit_bytes": 1.5}, TypeError),
    ],
)
def test_alert_rules_refuse_values_that_would_break_the_rules(
    options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        alert_rules(**options)


def test_dashboard_has_the_guides_nine_panels_and_ours_on_a_datasource_variable() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39
    assert board["uid"] == "amani-observability"
    assert [panel["title"] for panel in board["panels"]] == PANELS
    assert len({panel["id"] for panel in board["panels"]}) == len(PANELS)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert (variables["datasource"]["type"], variables["datasource"]["query"]) == (
        "datasource",
        "prometheus",
    )
    assert variables["job"]["allValue"] == ".+"
    expected_source = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["job"]["datasource"] == expected_source
    for panel in board["panels"]:
        assert panel["datasource"] == expected_source, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == expected_source, panel["title"]
            assert 'job=~"$job"' in target["expr"], panel["title"]
            assert metric_names(target["expr"]) <= LIBRARY_METRICS, panel["title"]
    pie = board["panels"][GUIDE_PANELS.index("Request Status Distribution")]
    assert pie["type"] == "piechart"
    business = board["panels"][GUIDE_PANELS.index("Business Metrics")]
    assert [metric_names(t["expr"]) for t in business["targets"]] == [
        {"escrow_transactions_total"},
        {"user_registrations_total"},
        {"kyc_submissions_total"},
    ]


def assert_panels_do_not_overlap(panels: list[dict[str, Any]]) -> None:
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, panel["title"]
        cells |= area


def test_dashboard_panels_do_not_overlap() -> None:
    assert_panels_do_not_overlap(dashboard()["panels"])


def test_export_assets_writes_both_files_into_config(tmp_path: Path) -> None:
    written = export_assets(tmp_path)
    assert written == [
        tmp_path / "config" / ALERT_RULES_FILE,
        tmp_path / "config" / GRAFANA_DASHBOARD_FILE,
    ]
    assert written[0].read_text() == alert_rules()
    assert written[1].read_text() == grafana_dashboard()


def test_export_assets_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / GRAFANA_DASHBOARD_FILE).write_text("mine")
    with pytest.raises(
        FileExistsError, match=r"grafana_dashboard\.json already exists; pass --force"
    ):
        export_assets(tmp_path)
    # Neither file was written: the refusal leaves no half-updated pair.
    assert sorted(p.name for p in config.iterdir()) == [GRAFANA_DASHBOARD_FILE]
    assert (config / GRAFANA_DASHBOARD_FILE).read_text() == "mine"

    export_assets(tmp_path, force=True)
    assert (config / GRAFANA_DASHBOARD_FILE).read_text() == grafana_dashboard()
    assert (config / ALERT_RULES_FILE).read_text() == alert_rules()


@pytest.mark.integration
def test_the_built_wheel_carries_the_assets_and_reads_them_from_the_zip(tmp_path: Path) -> None:
    """hatchling packs the YAML and JSON files, and importlib.resources finds them in a zip."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    [wheel] = tmp_path.glob("amani_observability-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {
        "amani_observability/assets/__init__.py",
        "amani_observability/assets/alert_rules.yml",
        "amani_observability/assets/grafana_dashboard.json",
        "amani_observability/cli.py",
    } <= names
    # The wheel first on the path: the package and its assets are imported from the zip.
    probe = (
        "import amani_observability.assets as a; "
        "print(a.__file__); print(len(a.alert_names()), len(a.grafana_dashboard()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(wheel)},
    )
    assert result.returncode == 0, result.stderr
    where, sizes = result.stdout.splitlines()
    assert where.startswith(str(wheel))
    assert sizes == f"{len(ALERTS)} {len(grafana_dashboard())}"


# --- runbook URLs and the Kubernetes export -----------------------------------------------


def test_runbook_url_is_absolute_by_default_and_follows_a_base_url() -> None:
    assert (
        "https://github.com/amani-observability/amani-observability/blob/"
        f"v{__version__}/docs/runbooks"
    ) == DOCS_RUNBOOKS_URL
    assert runbook_url("monitoring_runbook.md", "highcpuusage") == (
        f"{DOCS_RUNBOOKS_URL}/monitoring_runbook.md#highcpuusage"
    )
    assert runbook_url("a.md", "b", base_url="https://wiki.example.com/ops/") == (
        "https://wiki.example.com/ops/a.md#b"
    )
    assert runbook_url("a.md", base_url="http://wiki") == "http://wiki/a.md"
    with pytest.raises(ValueError, match=r"^runbook base URL 'wiki/ops' must be an http"):
        runbook_url("a.md", "b", base_url="wiki/ops")


def test_runbook_base_url_rewrites_every_runbook_url_of_the_rules() -> None:
    rules = yaml.safe_load(alert_rules(runbook_base_url="https://wiki.example.com/runbooks"))
    found = {
        rule["alert"]: rule["annotations"]["runbook_url"]
        for group in rules["groups"]
        for rule in group["rules"]
    }
    assert found == {
        name: f"https://wiki.example.com/runbooks/monitoring_runbook.md#{name.lower()}"
        for name in ALERTS
    }
    with pytest.raises(ValueError, match=r"must be an http:// or https:// URL$"):
        alert_rules(runbook_base_url="docs/runbooks")


def load_manifests(directory: Path) -> dict[str, Any]:
    return {path.name: yaml.safe_load(path.read_text()) for path in directory.iterdir()}


def test_kubernetes_export_writes_operator_resources_with_the_same_rules(tmp_path: Path) -> None:
    written = export_assets(
        tmp_path,
        format="kubernetes",
        job="payments",
        kubernetes=KubernetesOptions(namespace="shop", selector_labels={"release": "prometheus"}),
        runbook_base_url="https://wiki.example.com/rb",
    )
    target = tmp_path / "kubernetes"
    assert written == [target / name for name in KUBERNETES_FILES]
    manifests = load_manifests(target)
    rules = alert_rules(job="payments", runbook_base_url="https://wiki.example.com/rb")
    assert manifests["prometheusrule.yaml"] == {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "payments", "namespace": "shop", "labels": {"release": "prometheus"}},
        "spec": {"groups": yaml.safe_load(rules)["groups"]},
    }
    assert manifests["servicemonitor.yaml"] == {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "payments", "namespace": "shop", "labels": {"release": "prometheus"}},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "payments"}},
            "endpoints": [
                {
                    "port": "http",
                    "path": "/metrics",
                    "relabelings": [{"targetLabel": "job", "replacement": "payments"}],
                }
            ],
        },
    }
    assert manifests["grafana-dashboard-configmap.yaml"] == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "payments", "namespace": "shop", "labels": {"grafana_dashboard": "1"}},
        "data": {"amani-observability.json": grafana_dashboard()},
    }


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        (
            {"basic_auth_secret": "metrics-auth"},
            {
                "basicAuth": {
                    "username": {"name": "metrics-auth", "key": "username"},
                    "password": {"name": "metrics-auth", "key": "password"},
                }
            },
        ),
        (
            {"bearer_token_secret": "metrics-token"},
            {
                "authorization": {
                    "type": "Bearer",
                    "credentials": {"name": "metrics-token", "key": "token"},
                }
            },
        ),
    ],
)
def test_the_service_monitor_reads_scrape_credentials_from_a_secret(
    auth: dict[str, str], expected: dict[str, Any]
) -> None:
    monitor = yaml.safe_load(
        kubernetes_manifests(
            [alert_rules()],
            options=KubernetesOptions(
                port="web",
                metrics_path="/internal/metrics",
                service_labels={"app": "shop", "tier": "api"},
                **auth,
            ),
        )["servicemonitor.yaml"]
    )
    assert monitor["metadata"] == {"name": DEFAULT_JOB}
    assert monitor["spec"] == {
        "selector": {"matchLabels": {"app": "shop", "tier": "api"}},
        "endpoints": [
            {
                "port": "web",
                "path": "/internal/metrics",
                "relabelings": [{"targetLabel": "job", "replacement": DEFAULT_JOB}],
                **expected,
            }
        ],
    }


def test_the_prometheus_rule_joins_the_groups_of_several_rules_files() -> None:
    """Other rule sets (SLO rules) join the PrometheusRule by adding their rules file."""
    extra = "# comment\ngroups:\n- name: extra\n  rules:\n  - record: x:y\n    expr: vector(1)\n"
    rule = yaml.safe_load(kubernetes_manifests([alert_rules(), extra])["prometheusrule.yaml"])
    assert rule["spec"]["groups"] == [
        *yaml.safe_load(alert_rules())["groups"],
        {"name": "extra", "rules": [{"record": "x:y", "expr": "vector(1)"}]},
    ]
    with pytest.raises(ValueError, match=r"^a rules file must have a top-level `groups:` list$"):
        kubernetes_manifests(["rules: []\n"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"namespace": "Shop"}, r"^'Shop' is not a Kubernetes name"),
        ({"selector_labels": {"release": "a b"}}, r"^release=a b is not a valid Kubernetes label$"),
        ({"port": "http_port"}, r"^port 'http_port' is not a Kubernetes port name$"),
        ({"metrics_path": "metrics"}, r"^metrics path 'metrics' must start with /$"),
        (
            {"basic_auth_secret": "a", "bearer_token_secret": "b"},
            r"^choose basic auth or a bearer token for the ServiceMonitor, not both$",
        ),
    ],
)
def test_kubernetes_export_rejects_bad_options_before_writing(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        export_assets(tmp_path, format="kubernetes", kubernetes=KubernetesOptions(**options))
    assert list(tmp_path.iterdir()) == []


def test_promtool_accepts_the_rule_groups_of_the_prometheus_rule(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    export_assets(tmp_path, format="kubernetes")
    rule = yaml.safe_load((tmp_path / "kubernetes" / "prometheusrule.yaml").read_text())
    extracted = tmp_path / "extracted_rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(extracted)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout
