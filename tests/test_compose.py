"""examples/docker-compose.yml and the files it mounts, checked without a Docker engine:
the real promtool and amtool validate the configs, and every mounted file exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from amani_observability.assets import DEFAULT_JOB, alert_names, alert_rules, grafana_dashboard
from tests.conftest import require_binary
from tests.support import ROOT

EXAMPLES = ROOT / "examples"
COMPOSE = EXAMPLES / "docker-compose.yml"


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # type: ignore[no-any-return]


# A git-ignored directory the user fills with Alertmanager's notification credentials.
SECRETS_DIRECTORY = "./alertmanager-secrets"


def bind_mounts() -> dict[str, list[tuple[Path, str]]]:
    """Service -> [(host path, container path)] for each file the compose file mounts.

    Named volumes, the secrets directory and node_exporter's read-only view of the host
    root are left out.
    """
    mounts: dict[str, list[tuple[Path, str]]] = {}
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith(".") and source != SECRETS_DIRECTORY:
                mounts.setdefault(name, []).append((EXAMPLES / source, target))
    return mounts


def test_every_file_the_stack_mounts_exists() -> None:
    mounts = bind_mounts()
    files = [path for pairs in mounts.values() for path, _ in pairs]
    assert len(files) == 6
    for path in files:
        assert path.resolve().is_file(), path
    declared = set(compose()["volumes"])
    for service in compose()["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, source


def test_the_demo_image_builds_from_files_that_exist() -> None:
    build = compose()["services"]["app"]["build"]
    context = (EXAMPLES / build["context"]).resolve()
    dockerfile = context / build["dockerfile"]
    assert context == ROOT
    copied = re.findall(r"^COPY (.+) \S+$", dockerfile.read_text(), flags=re.MULTILINE)
    sources = [source for line in copied for source in line.split()]
    assert sources == ["pyproject.toml", "README.md", "LICENSE", "src", "examples"]
    for source in sources:
        assert (context / source).exists(), source


def test_the_exported_assets_in_examples_equal_the_packaged_ones() -> None:
    """The stack mounts exported copies; regenerate with `make assets` when this fails."""
    assert (EXAMPLES / "config" / "alert_rules.yml").read_text() == alert_rules()
    assert (EXAMPLES / "config" / "grafana_dashboard.json").read_text() == grafana_dashboard()


def test_the_services_listen_on_the_guides_ports() -> None:
    services = compose()["services"]
    ports = {name: service.get("ports", []) for name, service in services.items()}
    assert ports["app"] == ["8000:8000"]
    assert ports["prometheus"] == ["9090:9090"]
    assert ports["grafana"] == ["3000:3000"]
    assert ports["alertmanager"] == ["9093:9093"]
    assert {"16686:16686", "4317:4317"} <= set(ports["jaeger"])
    assert services["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    assert services["app"]["environment"]["OTLP_ENDPOINT"] == "http://jaeger:4317"
    assert services["app"]["environment"]["TRACING_ENABLED"] == "true"
    grafana = services["grafana"]["environment"]
    assert (grafana["GF_SECURITY_ADMIN_USER"], grafana["GF_SECURITY_ADMIN_PASSWORD"]) == (
        "admin",
        "admin",
    )


def test_prometheus_config_scrapes_the_app_under_the_alerted_job() -> None:
    config = yaml.safe_load((EXAMPLES / "config" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs[DEFAULT_JOB]["static_configs"] == [{"targets": ["app:8000"]}]
    assert jobs["node"]["static_configs"] == [{"targets": ["node-exporter:9100"]}]
    assert config["alerting"]["alertmanagers"] == [
        {"static_configs": [{"targets": ["alertmanager:9093"]}]}
    ]
    # Prometheus resolves rule_files beside its config file, where compose mounts the rules.
    assert config["rule_files"] == ["alert_rules.yml"]
    prometheus_mounts = {t: s for s, t in bind_mounts()["prometheus"]}
    assert prometheus_mounts["/etc/prometheus/alert_rules.yml"].name == "alert_rules.yml"


def test_grafana_provisioning_points_at_prometheus_and_the_mounted_dashboard() -> None:
    config = EXAMPLES / "config" / "grafana"
    [source] = yaml.safe_load((config / "datasources.yml").read_text())["datasources"]
    assert (source["type"], source["url"], source["isDefault"]) == (
        "prometheus",
        "http://prometheus:9090",
        True,
    )
    [provider] = yaml.safe_load((config / "dashboards.yml").read_text())["providers"]
    grafana_mounts = {t: s for s, t in bind_mounts()["grafana"]}
    dashboard_targets = [t for t in grafana_mounts if t.endswith(".json")]
    assert [str(Path(t).parent) for t in dashboard_targets] == [provider["options"]["path"]]
    assert grafana_mounts[dashboard_targets[0]].name == "grafana_dashboard.json"


def test_promtool_accepts_the_stacks_prometheus_config_and_its_rules() -> None:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "config", str(EXAMPLES / "config" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_amtool_accepts_the_stacks_alertmanager_config() -> None:
    amtool = require_binary("amtool")
    result = subprocess.run(
        [amtool, "check-config", str(EXAMPLES / "config" / "alertmanager.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert " - 2 inhibit rules\n - 2 receivers\n" in result.stdout


@pytest.mark.parametrize(
    ("severity", "receivers"),
    [
        ("critical", "pagerduty,slack"),
        ("error", "slack"),
        ("warning", "slack"),
        ("info", "slack"),
    ],
)
def test_amtool_routes_alerts_by_severity(severity: str, receivers: str) -> None:
    """Critical pages and reaches Slack; everything else goes to Slack only."""
    amtool = require_binary("amtool")
    result = subprocess.run(
        [
            amtool, "config", "routes", "test",
            f"--config.file={EXAMPLES / 'config' / 'alertmanager.yml'}",
            f"severity={severity}", "alertname=PaymentProviderUnreachable", "service=payments",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers


def test_alertmanager_groups_per_alert_and_a_critical_inhibits_the_warning_of_its_name() -> None:
    config = yaml.safe_load((EXAMPLES / "config" / "alertmanager.yml").read_text())
    assert config["route"]["group_by"] == ["alertname", "job", "service"]
    assert config["inhibit_rules"][0] == {
        "source_matchers": ['severity="critical"'],
        "target_matchers": ['severity="warning"'],
        "equal": ["alertname", "job", "service"],
    }
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    [slack] = receivers["slack"]["slack_configs"]
    [pagerduty] = receivers["pagerduty"]["pagerduty_configs"]
    # Credentials come from the mounted, git-ignored secrets directory.
    assert slack["api_url_file"] == "/etc/alertmanager/secrets/slack_webhook_url"
    assert pagerduty["routing_key_file"] == "/etc/alertmanager/secrets/pagerduty_routing_key"
    volumes = compose()["services"]["alertmanager"]["volumes"]
    assert f"{SECRETS_DIRECTORY}:/etc/alertmanager/secrets:ro" in volumes
    assert "examples/alertmanager-secrets/" in (ROOT / ".gitignore").read_text().splitlines()


def test_the_app_sends_its_alerts_to_the_stacks_alertmanager() -> None:
    app = compose()["services"]["app"]
    assert app["environment"]["ALERTMANAGER_URL"] == "http://alertmanager:9093"
    assert "alertmanager" in app["depends_on"]


def test_the_app_gets_secrets_only_from_an_optional_env_file() -> None:
    """An empty `SENTRY_DSN: ${SENTRY_DSN:-}` would count as set: secrets come from a file."""
    app = compose()["services"]["app"]
    assert app["env_file"] == [{"path": "./demo.env", "required": False}]
    secrets = {"SENTRY_DSN", "SLACK_WEBHOOK_URL", "PAGERDUTY_API_KEY", "ALERT_WEBHOOK_URL"}
    assert secrets.isdisjoint(app["environment"])
