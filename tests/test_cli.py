"""The `amani-observability` command: export-assets and check, against real local servers."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from amani_observability._startup import SUMMARY_PREFIX
from amani_observability.assets import (
    KUBERNETES_FILES,
    KubernetesOptions,
    alert_names,
    alert_rules,
    grafana_dashboard,
    kubernetes_manifests,
)
from amani_observability.cli import TEST_EVENT_MESSAGE, main
from amani_observability.cli import _mask as mask
from tests.conftest import free_port

SECRETS = {
    "SENTRY_DSN": "http://sentrykey123@127.0.0.1:{port}/42",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.example/services/T000/B000/slacksecret",
    "PAGERDUTY_API_KEY": "pdkey0123456789abcdef0123456789ab",
    "OTLP_HEADERS": "api-key=otlpsecret",
    "METRICS_PASSWORD": "metricspass",
    "METRICS_BEARER_TOKEN": "metricstoken",
    "OTLP_ENDPOINT": "http://otlpuser:otlppass@127.0.0.1:{port}",
    "PAGERDUTY_EVENTS_URL": "https://pduser:pdpass@events.pagerduty.example/v2/enqueue",
    "ALERT_WEBHOOK_URL": "https://hookuser:hookpass@hooks.example/alerts/hooksecret",
}


class Recorder:
    """A real HTTP server on a loopback port that records requests and answers `status`."""

    def __init__(self, status: int = 200, body: bytes = b"{}") -> None:
        self.status = status
        self.body = body
        self.requests: list[tuple[str, str, bytes]] = []
        self.headers: list[dict[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                data = self.rfile.read(length)
                if self.headers.get("Content-Encoding") == "gzip":
                    data = gzip.decompress(data)
                recorder.requests.append(("POST", self.path, data))
                self._answer()

            def do_GET(self) -> None:
                recorder.requests.append(("GET", self.path, b""))
                recorder.headers.append(dict(self.headers))
                self._answer()

            def _answer(self) -> None:
                self.send_response(recorder.status)
                self.send_header("Content-Length", str(len(recorder.body)))
                self.end_headers()
                self.wfile.write(recorder.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def listener() -> Iterator[int]:
    """A loopback port that accepts TCP connections (and says nothing)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    code = main(list(argv))
    return code, capsys.readouterr().out.splitlines()


def verdicts(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(("ok ", "-- ", "FAIL "))]


# --- export-assets ---------------------------------------------------------------------


def test_export_assets_writes_the_packaged_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = run(capsys, "export-assets", str(tmp_path))
    rules, board = (
        tmp_path / "config" / "alert_rules.yml",
        tmp_path / "config" / "grafana_dashboard.json",
    )
    assert (code, lines) == (0, [f"wrote {rules}", f"wrote {board}"])
    assert rules.read_text() == alert_rules()
    assert board.read_text() == grafana_dashboard()


def test_export_assets_refuses_to_overwrite_then_force_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export-assets", str(tmp_path)]) == 0
    rules = tmp_path / "config" / "alert_rules.yml"
    rules.write_text("edited")
    capsys.readouterr()

    assert main(["export-assets", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("amani-observability: ")
    assert "pass --force" in captured.err
    assert rules.read_text() == "edited"

    assert main(["export-assets", str(tmp_path), "--force"]) == 0
    assert rules.read_text() == alert_rules()


def test_export_assets_applies_job_and_memory_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _ = run(
        capsys,
        "export-assets",
        str(tmp_path),
        "--job",
        "payments",
        "--memory-limit-bytes",
        "1073741824",
    )
    assert code == 0
    text = (tmp_path / "config" / "alert_rules.yml").read_text()
    assert text == alert_rules(job="payments", memory_limit_bytes=1073741824)


def test_export_assets_kubernetes_format_takes_the_operator_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_PATH", "/internal/metrics")
    code, lines = run(
        capsys,
        "export-assets",
        str(tmp_path),
        "--format",
        "kubernetes",
        "--job",
        "payments",
        "--namespace",
        "shop",
        "--selector-label",
        "release=prometheus",
        "--selector-label",
        "team=pay",
        "--service-label",
        "app=payments",
        "--port",
        "web",
        "--bearer-token-secret",
        "payments-metrics",
        "--runbook-base-url",
        "https://wiki.example.com/rb",
    )
    target = tmp_path / "kubernetes"
    assert (code, lines) == (0, [f"wrote {target / name}" for name in KUBERNETES_FILES])
    expected = kubernetes_manifests(
        [alert_rules(job="payments", runbook_base_url="https://wiki.example.com/rb")],
        job="payments",
        options=KubernetesOptions(
            namespace="shop",
            selector_labels={"release": "prometheus", "team": "pay"},
            service_labels={"app": "payments"},
            port="web",
            metrics_path="/internal/metrics",
            bearer_token_secret="payments-metrics",
        ),
    )
    assert {name: (target / name).read_text() for name in KUBERNETES_FILES} == expected


def test_export_assets_rejects_a_bad_runbook_base_url_and_both_scrape_credentials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export-assets", str(tmp_path), "--runbook-base-url", "wiki/rb"]) == 1
    assert capsys.readouterr().err == (
        "amani-observability: runbook base URL 'wiki/rb' must be an http:// or https:// URL\n"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "export-assets", str(tmp_path), "--format", "kubernetes",
                "--basic-auth-secret", "a", "--bearer-token-secret", "b",
            ]
        )  # fmt: skip
    assert exit_info.value.code == 2
    assert "not allowed with argument --basic-auth-secret" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_export_assets_rejects_a_bad_memory_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["export-assets", str(tmp_path), "--memory-limit-bytes", "-5"])
    assert exit_info.value.code == 2
    assert "argument --memory-limit-bytes: -5 is not positive" in capsys.readouterr().err
    assert not (tmp_path / "config").exists()


def test_console_script_is_installed_and_runs(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "amani-observability"
    result = subprocess.run(
        [str(script), "export-assets", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "config" / "alert_rules.yml").read_text() == alert_rules()


# --- check: configuration ----------------------------------------------------------------


def test_check_with_nothing_configured_passes_and_says_what_is_off(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, lines = run(capsys, "check")
    assert code == 0
    assert lines[0] == "Effective configuration (secrets masked):"
    assert "  SERVICE_NAME = amani-backend" in lines
    assert "  SENTRY_DSN = (unset)" in lines
    assert verdicts(lines) == [
        "--    metrics: served at /metrics (pass --metrics-url to test)",
        "--    tracing: TRACING_ENABLED is false, no spans are exported",
        "--    sentry: SENTRY_DSN is not set, errors are not reported",
    ]
    assert lines[-1] == "all checks passed"


def test_check_masks_every_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], listener: int
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value.format(port=listener))
    monkeypatch.setenv("METRICS_USERNAME", "scraper")
    code, lines = run(capsys, "check")
    output = "\n".join(lines)
    for secret in (
        "sentrykey123",
        "slacksecret",
        "pdkey0123",
        "otlpsecret",
        "metricspass",
        "metricstoken",
        "otlpuser",
        "otlppass",
        "pduser",
        "pdpass",
        "hookuser",
        "hookpass",
        "hooksecret",
    ):
        assert secret not in output
    # Webhook URLs are credentials as a whole: scheme and host only; userinfo never shown.
    assert f"  SENTRY_DSN = http://127.0.0.1:{listener}/[redacted]" in lines
    assert "  SLACK_WEBHOOK_URL = https://hooks.slack.example/[redacted]" in lines
    assert "  ALERT_WEBHOOK_URL = https://hooks.example/[redacted]" in lines
    assert "  PAGERDUTY_API_KEY = [redacted]" in lines
    assert "  OTLP_HEADERS = [redacted]" in lines
    assert f"  OTLP_ENDPOINT = http://[redacted]@127.0.0.1:{listener}" in lines
    assert (
        "  PAGERDUTY_EVENTS_URL = https://[redacted]@events.pagerduty.example/v2/enqueue" in lines
    )
    assert "  METRICS_USERNAME = scraper" in lines
    assert code == 0


def test_check_prints_the_start_up_summary_and_env_name_typos(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], listener: int
) -> None:
    """The same line a worker logs at start-up, secrets masked; a misspelt name is named."""
    monkeypatch.setenv("SENTRY_DSN", SECRETS["SENTRY_DSN"].format(port=listener))
    monkeypatch.setenv("SENTRY_DNS", "http://typokey987@127.0.0.1:9/1")
    code, lines = run(capsys, "check")
    assert code == 0
    at = lines.index("") + 1
    assert lines[at : at + 3] == [
        f"{SUMMARY_PREFIX} request IDs in header X-Request-ID; metrics at /metrics "
        "(auth none, no PROMETHEUS_MULTIPROC_DIR: this process only); tracing off; "
        f"Sentry to 127.0.0.1:{listener} (environment development); alert channels: none; "
        # tests/conftest.py raises LOOP_STALL_SECONDS for every test
        "loop monitor every 0.25 s, stalls from 60 s; fast paths: none",
        "WARN  Environment variable SENTRY_DNS is not a setting; did you mean SENTRY_DSN? "
        "It is ignored",
        "",
    ]
    output = "\n".join(lines)
    assert "sentrykey123" not in output
    assert "typokey987" not in output


def test_mask_shows_lists_and_plain_values() -> None:
    assert mask(["/health", "/internal/.*"]) == "/health,/internal/.*"
    assert mask([]) == "(empty)"
    assert mask(0.5) == "0.5"
    assert mask(None) == "(unset)"


def test_check_reports_invalid_settings_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TRACING_SAMPLE_RATE", "2")
    code, lines = run(capsys, "check")
    assert code == 2
    assert lines == [
        "FAIL  settings: invalid observability settings: TRACING_SAMPLE_RATE=2: "
        "must be between 0 and 1"
    ]


def test_check_reads_an_env_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env_file = tmp_path / "service.env"
    env_file.write_text("SERVICE_NAME=payments\n")
    code, lines = run(capsys, "check", "--env-file", str(env_file))
    assert code == 0
    assert "  SERVICE_NAME = payments" in lines


def test_check_refuses_a_missing_env_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = run(capsys, "check", "--env-file", str(tmp_path / "nope.env"))
    assert (code, lines) == (2, [f"FAIL  settings: {tmp_path / 'nope.env'} is not a file"])


# --- check: OTLP and Sentry reachability ---------------------------------------------------


def test_check_tells_whether_the_otlp_endpoint_accepts_connections(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], listener: int
) -> None:
    monkeypatch.setenv("TRACING_ENABLED", "true")
    monkeypatch.setenv("OTLP_ENDPOINT", f"http://127.0.0.1:{listener}")
    code, lines = run(capsys, "check")
    assert code == 0
    assert f"ok    tracing: OTLP endpoint 127.0.0.1:{listener} accepts connections" in lines

    closed = free_port()
    monkeypatch.setenv("OTLP_ENDPOINT", f"http://127.0.0.1:{closed}")
    code, lines = run(capsys, "check")
    assert code == 1
    assert (
        f"FAIL  tracing: OTLP endpoint 127.0.0.1:{closed} refuses connections (Connection refused)"
        in lines
    )
    assert lines[-1] == "1 check(s) failed"


def test_check_tests_the_otlp_endpoint_even_with_tracing_off(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = free_port()
    monkeypatch.setenv("OTLP_ENDPOINT", f"http://127.0.0.1:{closed}")
    code, lines = run(capsys, "check")
    assert code == 1
    assert verdicts(lines)[1:3] == [
        "--    tracing: TRACING_ENABLED is false, no spans are exported",
        f"FAIL  tracing: OTLP endpoint 127.0.0.1:{closed} refuses connections (Connection refused)",
    ]


def test_check_tells_whether_the_sentry_host_accepts_connections(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], listener: int
) -> None:
    monkeypatch.setenv("SENTRY_DSN", f"http://key@127.0.0.1:{listener}/1")
    code, lines = run(capsys, "check")
    assert code == 0
    assert f"ok    sentry: 127.0.0.1:{listener} accepts connections" in lines

    closed = free_port()
    monkeypatch.setenv("SENTRY_DSN", f"http://key@127.0.0.1:{closed}/1")
    code, lines = run(capsys, "check")
    assert code == 1
    assert f"FAIL  sentry: 127.0.0.1:{closed} refuses connections (Connection refused)" in lines


def test_send_test_error_delivers_a_real_event_through_sentry_sdk(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Recorder(status=200, body=b'{"id": "x"}') as sentry:
        monkeypatch.setenv("SENTRY_DSN", f"http://publickey@127.0.0.1:{sentry.port}/7")
        monkeypatch.setenv("ENVIRONMENT", "staging")
        code, lines = run(capsys, "check", "--send-test-error")
    assert code == 0, lines
    [line] = [line for line in lines if "test event" in line]
    assert line.startswith("ok    sentry: test event ")
    assert line.endswith(" accepted (HTTP 200)")
    [(method, path, body)] = sentry.requests
    assert (method, path) == ("POST", "/api/7/envelope/")
    header, item_header, payload = body.split(b"\n")[:3]
    event = json.loads(payload)
    assert json.loads(item_header)["type"] == "event"
    assert json.loads(header)["event_id"] == event["event_id"]
    assert event["event_id"] in line
    assert (event["message"], event["level"], event["environment"]) == (
        TEST_EVENT_MESSAGE,
        "error",
        "staging",
    )
    assert event["release"] == "amani-backend@0.0.0"


def test_send_test_error_fails_when_sentry_rejects_the_event(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Recorder(status=403, body=b'{"detail": "bad key"}') as sentry:
        monkeypatch.setenv("SENTRY_DSN", f"http://publickey@127.0.0.1:{sentry.port}/7")
        code, lines = run(capsys, "check", "--send-test-error")
    assert code == 1
    [line] = [line for line in lines if "test event" in line]
    assert line.startswith("FAIL  sentry: test event ")
    assert line.endswith(" was not accepted: dropped (status_403)")
    assert len(sentry.requests) == 1


def test_send_test_error_without_a_dsn_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = run(capsys, "check", "--send-test-error")
    assert code == 1
    assert "FAIL  sentry: --send-test-error needs SENTRY_DSN, which is not set" in lines


# --- check: metrics endpoint and test alerts ---------------------------------------------


def test_check_metrics_url_fails_when_the_endpoint_is_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with Recorder(status=404) as service:
        code, lines = run(capsys, "check", "--metrics-url", f"http://127.0.0.1:{service.port}")
    assert code == 1
    assert (
        f"FAIL  metrics: http://127.0.0.1:{service.port}/metrics answered HTTP 404, not 200"
        in lines
    )
    assert service.requests == [("GET", "/metrics", b"")]


def test_check_metrics_url_passes_when_http_metrics_are_served(
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = b'http_requests_total{method="GET",endpoint="/",status="200"} 1.0\n'
    with Recorder(status=200, body=body) as service:
        code, lines = run(capsys, "check", "--metrics-url", f"http://127.0.0.1:{service.port}/")
    assert code == 0
    assert (
        f"ok    metrics: http://127.0.0.1:{service.port}/metrics serves http_requests_total"
        in lines
    )


@pytest.mark.parametrize(
    ("variables", "authorization"),
    [
        ({"METRICS_BEARER_TOKEN": "scrape-token"}, "Bearer scrape-token"),
        (
            {"METRICS_USERNAME": "prometheus", "METRICS_PASSWORD": "scrape-pass"},
            "Basic cHJvbWV0aGV1czpzY3JhcGUtcGFzcw==",
        ),
    ],
)
def test_check_metrics_url_sends_the_configured_credentials(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variables: dict[str, str],
    authorization: str,
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("METRICS_PATH", "/internal/metrics")
    with Recorder(status=200, body=b"http_requests_total 0\n") as service:
        code, lines = run(capsys, "check", "--metrics-url", f"http://127.0.0.1:{service.port}")
    assert code == 0, lines
    assert [path for _, path, _ in service.requests] == ["/internal/metrics"]
    assert service.headers[0]["Authorization"] == authorization
    assert "scrape-" not in "\n".join(lines)


def test_test_alert_sends_a_real_alert_to_the_webhook(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Recorder(status=200, body=b"ok") as webhook:
        monkeypatch.setenv("ALERT_WEBHOOK_URL", f"http://127.0.0.1:{webhook.port}/hook")
        code, lines = run(capsys, "check", "--test-alert", "webhook")
    assert code == 0, lines
    assert any(line.startswith("ok    alert webhook: test alert delivered") for line in lines)
    [(method, path, _body)] = webhook.requests
    assert (method, path) == ("POST", "/hook")


def test_test_alert_fails_when_the_channel_rejects_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Recorder(status=404, body=b"no_service") as slack:
        monkeypatch.setenv("SLACK_WEBHOOK_URL", f"http://127.0.0.1:{slack.port}/services/x")
        code, lines = run(capsys, "check", "--test-alert", "slack")
    assert code == 1
    assert any(line.startswith("FAIL  alert slack: test alert not delivered") for line in lines)


def test_check_prometheus_url_names_missing_rules_alertmanager_and_down_targets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # One body answers /api/v1/rules, /alertmanagers and /targets: each reads its own key.
    body = {
        "status": "success",
        "data": {
            "groups": [{"rules": [{"type": "alerting", "name": "HighErrorRate"}]}],
            "activeAlertmanagers": [],
            "activeTargets": [
                {
                    "labels": {"job": "amani-backend"},
                    "scrapeUrl": "http://app:8000/metrics",
                    "health": "down",
                    "lastError": "connection refused",
                }
            ],
        },
    }
    with Recorder(status=200, body=json.dumps(body).encode()) as prometheus:
        code, lines = run(
            capsys, "check", "--prometheus-url", f"http://127.0.0.1:{prometheus.port}"
        )
    assert code == 1
    assert [line for line in lines if line.startswith("FAIL")] == [
        # Every packaged rule but HighErrorRate, the one loaded.
        "FAIL  prometheus: alert rules not loaded: " + ", ".join(alert_names()[1:]),
        "FAIL  prometheus: no Alertmanager configured, alerts go nowhere",
        "FAIL  prometheus: target amani-backend http://app:8000/metrics is down "
        "(connection refused)",
    ]
    assert [path for _, path, _ in prometheus.requests] == [
        "/api/v1/rules",
        "/api/v1/alertmanagers",
        "/api/v1/targets",
    ]
    assert lines[-1] == "3 check(s) failed"


def test_check_prometheus_url_fails_when_nothing_answers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    code, lines = run(capsys, "check", "--prometheus-url", f"http://127.0.0.1:{port}")
    assert code == 1
    [line] = [line for line in lines if line.startswith("FAIL")]
    assert line.startswith(
        f"FAIL  prometheus: http://127.0.0.1:{port} did not answer its HTTP API ("
    )
