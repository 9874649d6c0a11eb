"""The `amani-observability` console command.

    amani-observability export-assets DIR [--force] [--job NAME] [--memory-limit-bytes N]
                              [--runbook-base-url URL] [--format prometheus|kubernetes]
                              [--namespace NS] [--selector-label KEY=VALUE] ...
                              [--slos FILE] [--metrics-buckets LIST]
    amani-observability slo-report --prometheus-url URL --slos FILE [--job NAME]
    amani-observability check [--env-file PATH] [--send-test-error] [--test-alert CHANNEL]
                              [--metrics-url URL] [--prometheus-url URL]

`check` walks the troubleshooting list of the monitoring guide for one service's
settings, printing one line per finding: `ok`, `--` (not configured, nothing to test) or
`FAIL`. It exits 1 when anything failed, 2 when the settings themselves are invalid.

`slo-report` prints each SLO's SLI and error budget over its window and its burn rates
from a live Prometheus; it exits 1 while a page-level burn is active, 2 when the SLO file
is invalid or Prometheus cannot answer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from ._output import use_redaction
from ._output import write as _write
from ._redaction import REDACTED, mask_userinfo, url_origin
from ._startup import ENV_TYPO, env_typos, summary
from ._version import __version__
from .assets import (
    DEFAULT_JOB,
    DEFAULT_MEMORY_LIMIT_BYTES,
    DOCS_RUNBOOKS_URL,
    KubernetesOptions,
    alert_names,
    export_assets,
)
from .exceptions import ConfigurationError
from .settings import DEFAULT_BUCKETS, ObservabilitySettings, parse_buckets

if TYPE_CHECKING:
    from .alerts import AlertResult

__all__ = ["main"]

TEST_EVENT_MESSAGE = "amani-observability check: test event"
TEST_ALERT_MESSAGE = "amani-observability check: test alert"
MASK = REDACTED
# Channels whose test alert is resolved right after it was delivered.
RESOLVED_TEST_ALERT_CHANNELS = ("alertmanager",)
# Where the OpenTelemetry exporters send when no endpoint is configured.
OTLP_DEFAULT_ENDPOINTS = {"otlp": "http://localhost:4317", "otlp-http": "http://localhost:4318"}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "export-assets":
        return _export(args)
    if args.command == "slo-report":
        from ._slo_report import slo_report

        try:
            buckets = _metrics_buckets(args)
        except ValueError as exc:
            _write(f"amani-observability: {exc}", error=True)
            return 2
        return slo_report(
            args.prometheus_url, args.slos, job=args.job, timeout=args.timeout, buckets=buckets
        )
    return _Check(args).run()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="amani-observability",
        description="Ship the monitoring assets and check a service's observability setup.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    export = commands.add_parser(
        "export-assets",
        help="write config/alert_rules.yml and config/grafana_dashboard.json into DIR "
        "(--format kubernetes: Prometheus Operator resources in DIR/kubernetes/)",
    )
    export.add_argument("directory", metavar="DIR", type=Path)
    export.add_argument("--force", action="store_true", help="overwrite existing files")
    export.add_argument(
        "--job",
        default=None,
        help="Prometheus job name of the service, for ApplicationDown and the SLO rules "
        f"(default: the SLO file's service, else {DEFAULT_JOB})",
    )
    export.add_argument(
        "--memory-limit-bytes",
        type=_positive_int,
        default=DEFAULT_MEMORY_LIMIT_BYTES,
        metavar="N",
        help="memory limit HighMemoryUsage compares resident memory to "
        f"(default {DEFAULT_MEMORY_LIMIT_BYTES} = 512 MiB)",
    )
    export.add_argument(
        "--runbook-base-url",
        metavar="URL",
        help="where the runbooks live: every runbook_url becomes URL/<page>#<alert> "
        f"(default {DOCS_RUNBOOKS_URL})",
    )
    export.add_argument(
        "--format",
        choices=("prometheus", "kubernetes"),
        default="prometheus",
        help="prometheus: rules file and dashboard JSON (default); kubernetes: a "
        "PrometheusRule, a ServiceMonitor and a Grafana dashboard ConfigMap",
    )
    kubernetes = export.add_argument_group("kubernetes format")
    kubernetes.add_argument("--namespace", metavar="NS", help="namespace of the resources")
    kubernetes.add_argument(
        "--selector-label",
        metavar="KEY=VALUE",
        type=_label,
        action="append",
        default=[],
        help="label of the PrometheusRule and ServiceMonitor that your Prometheus selects "
        "them by (e.g. release=prometheus); repeatable",
    )
    kubernetes.add_argument(
        "--service-label",
        metavar="KEY=VALUE",
        type=_label,
        action="append",
        default=[],
        help="label of the service's Kubernetes Service the ServiceMonitor selects "
        "(default app.kubernetes.io/name=<job>); repeatable",
    )
    kubernetes.add_argument(
        "--port", default="http", help="name of the Service port serving metrics (default http)"
    )
    kubernetes.add_argument(
        "--metrics-path",
        default=os.environ.get("METRICS_PATH", "/metrics"),
        help="path scraped (default METRICS_PATH from the environment, else /metrics)",
    )
    scrape_auth = kubernetes.add_mutually_exclusive_group()
    scrape_auth.add_argument(
        "--basic-auth-secret",
        metavar="SECRET",
        help="Secret with keys username and password for METRICS_USERNAME/METRICS_PASSWORD",
    )
    scrape_auth.add_argument(
        "--bearer-token-secret",
        metavar="SECRET",
        help="Secret with key token holding METRICS_BEARER_TOKEN",
    )
    export.add_argument(
        "--slos",
        type=Path,
        metavar="FILE",
        help="an SLO file (docs/slo.md): also write config/slo_rules.yml (kubernetes: SLO "
        "groups in the PrometheusRule) and add SLO rows to the dashboard",
    )
    _add_buckets_option(export)

    report = commands.add_parser(
        "slo-report",
        help="print each SLO's SLI, error budget and burn rates from a live Prometheus",
    )
    report.add_argument("--prometheus-url", metavar="URL", required=True)
    report.add_argument("--slos", type=Path, metavar="FILE", required=True)
    report.add_argument(
        "--job", default=None, help="Prometheus job of the service (default: the file's service)"
    )
    report.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long each query may take (default 10)",
    )
    _add_buckets_option(report)

    check = commands.add_parser(
        "check", help="run the troubleshooting checks for the service's settings"
    )
    check.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="read settings from this file as well as the environment (default .env)",
    )
    check.add_argument(
        "--send-test-error", action="store_true", help="send a real test event to SENTRY_DSN"
    )
    check.add_argument(
        "--test-alert",
        metavar="CHANNEL",
        action="append",
        default=[],
        help="send a real test alert through CHANNEL (slack, pagerduty, webhook, "
        "alertmanager, which then resolves it); repeatable",
    )
    check.add_argument(
        "--metrics-url",
        metavar="URL",
        help="the service's base URL: check that its metrics endpoint answers",
    )
    check.add_argument(
        "--prometheus-url",
        metavar="URL",
        help="check that this Prometheus loaded the alert rules, knows an Alertmanager "
        "and scrapes its targets",
    )
    check.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long each connection or send may take (default 5)",
    )
    return parser


def _label(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _add_buckets_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-buckets",
        metavar="LIST",
        default=None,
        help="the service's METRICS_BUCKETS, which latency thresholds must be one of "
        "(default: METRICS_BUCKETS from the environment, else the library's buckets)",
    )


def _metrics_buckets(args: argparse.Namespace) -> tuple[float, ...]:
    """The duration histogram's buckets: --metrics-buckets, METRICS_BUCKETS or the default."""
    text = args.metrics_buckets or os.environ.get("METRICS_BUCKETS")
    if not text:
        return DEFAULT_BUCKETS
    try:
        return parse_buckets(text)
    except ValueError as exc:
        raise ValueError(f"METRICS_BUCKETS={text}: {exc}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _export(args: argparse.Namespace) -> int:
    try:
        slos = None
        if args.slos is not None:
            from .slo import load_slos

            slos = load_slos(args.slos, buckets=_metrics_buckets(args))
        paths = export_assets(
            args.directory,
            force=args.force,
            job=args.job,
            memory_limit_bytes=args.memory_limit_bytes,
            runbook_base_url=args.runbook_base_url,
            format=args.format,
            kubernetes=KubernetesOptions(
                namespace=args.namespace,
                selector_labels=dict(args.selector_label),
                service_labels=dict(args.service_label) or None,
                port=args.port,
                metrics_path=args.metrics_path,
                basic_auth_secret=args.basic_auth_secret,
                bearer_token_secret=args.bearer_token_secret,
            ),
            slos=slos,
        )
    except (FileExistsError, ValueError, OSError) as exc:
        _write(f"amani-observability: {exc}", error=True)
        return 1
    for path in paths:
        _write(f"wrote {path}")
    return 0


# --- check ------------------------------------------------------------------------------


def _mask(value: Any) -> str:
    """How `check` prints a setting: secrets masked, URLs keeping only scheme and host."""
    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        parts = urlsplit(secret)
        if parts.scheme in ("http", "https") and parts.hostname:
            # The host helps troubleshooting ("does the DSN point at the right Sentry?");
            # a webhook's path is its credential, so only scheme and host are shown.
            return url_origin(secret)
        return MASK
    if isinstance(value, (list, tuple)):
        # URLs in a list (ALERTMANAGER_URL) may carry user:password@: masked too.
        return mask_userinfo(",".join(str(item) for item in value)) or "(empty)"
    return mask_userinfo(str(value))


def _endpoint(url: str, default_port: int | None = None) -> tuple[str, int]:
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    port = parts.port or default_port or (443 if parts.scheme == "https" else 80)
    return parts.hostname, port


def _tcp_error(host: str, port: int, timeout: float) -> str | None:
    """None when host:port accepts a TCP connection, else why not."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


class _Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.failures = 0

    def ok(self, text: str) -> None:
        _write(f"ok    {text}")

    def skip(self, text: str) -> None:
        _write(f"--    {text}")

    def fail(self, text: str) -> None:
        self.failures += 1
        _write(f"FAIL  {text}")

    def run(self) -> int:
        try:
            if self.args.env_file is not None:
                if not self.args.env_file.is_file():
                    _write(f"FAIL  settings: {self.args.env_file} is not a file")
                    return 2
                settings = ObservabilitySettings(_env_file=self.args.env_file)
            else:
                settings = ObservabilitySettings()
        except ConfigurationError as exc:
            _write(f"FAIL  settings: {exc}")
            return 2
        use_redaction(settings.redact_keys)

        _write("Effective configuration (secrets masked):")
        for name in type(settings).model_fields:
            _write(f"  {name.upper()} = {_mask(getattr(settings, name))}")
        _write("")
        # The line each worker logs at start-up, and its env-name typo warnings.
        _write(
            summary(
                settings, _fast_paths_here(settings), os.environ.get("PROMETHEUS_MULTIPROC_DIR")
            )
        )
        for variable, meant in env_typos(os.environ):
            _write(f"WARN  {ENV_TYPO % (variable, meant)}")
        _write("")

        self.check_metrics(settings)
        self.check_tracing(settings)
        self.check_sentry(settings)
        for channel in self.args.test_alert:
            self.send_test_alert(settings, channel)
        if self.args.prometheus_url:
            self.check_prometheus(self.args.prometheus_url)

        if self.failures:
            _write(f"\n{self.failures} check(s) failed")
            return 1
        _write("\nall checks passed")
        return 0

    # Metrics not appearing: is the endpoint there and does it serve our metrics?
    def check_metrics(self, settings: ObservabilitySettings) -> None:
        if not settings.metrics_enabled:
            self.skip("metrics: METRICS_ENABLED is false, nothing is served")
            return
        if not self.args.metrics_url:
            self.skip(f"metrics: served at {settings.metrics_path} (pass --metrics-url to test)")
            return
        import httpx

        url = self.args.metrics_url.rstrip("/") + settings.metrics_path
        auth: Any = None
        headers = {}
        if settings.metrics_bearer_token is not None:
            headers["Authorization"] = f"Bearer {settings.metrics_bearer_token.get_secret_value()}"
        elif settings.metrics_username and settings.metrics_password is not None:
            auth = (settings.metrics_username, settings.metrics_password.get_secret_value())
        try:
            response = httpx.get(url, headers=headers, auth=auth, timeout=self.args.timeout)
        except httpx.HTTPError as exc:
            self.fail(f"metrics: {url} did not answer ({type(exc).__name__}: {exc})")
            return
        if response.status_code != 200:
            self.fail(f"metrics: {url} answered HTTP {response.status_code}, not 200")
        elif "http_requests_total" not in response.text:
            self.fail(f"metrics: {url} answered but has no http_requests_total")
        else:
            self.ok(f"metrics: {url} serves http_requests_total")

    # Traces not showing in Jaeger: is tracing on, and does the collector listen?
    def check_tracing(self, settings: ObservabilitySettings) -> None:
        exporter = settings.tracing_exporter
        if not settings.tracing_enabled:
            self.skip("tracing: TRACING_ENABLED is false, no spans are exported")
            if settings.otlp_endpoint is None:
                return
        elif exporter not in OTLP_DEFAULT_ENDPOINTS:
            self.ok(f"tracing: enabled, exporter {exporter} needs no collector")
            return
        endpoint = settings.otlp_endpoint or OTLP_DEFAULT_ENDPOINTS.get(exporter, "")
        host, port = _endpoint(endpoint, 4318 if exporter == "otlp-http" else 4317)
        error = _tcp_error(host, port, self.args.timeout)
        if error is None:
            self.ok(f"tracing: OTLP endpoint {host}:{port} accepts connections")
        else:
            self.fail(f"tracing: OTLP endpoint {host}:{port} refuses connections ({error})")

    # Sentry not receiving errors: is the DSN set, is its host reachable, does an event land?
    def check_sentry(self, settings: ObservabilitySettings) -> None:
        if settings.sentry_dsn is None:
            if self.args.send_test_error:
                self.fail("sentry: --send-test-error needs SENTRY_DSN, which is not set")
            else:
                self.skip("sentry: SENTRY_DSN is not set, errors are not reported")
            return
        dsn = settings.sentry_dsn.get_secret_value()
        try:
            host, port = _endpoint(dsn)
        except ValueError:
            self.fail("sentry: SENTRY_DSN is not a URL like https://KEY@HOST/PROJECT")
            return
        error = _tcp_error(host, port, self.args.timeout)
        if error is not None:
            self.fail(f"sentry: {host}:{port} refuses connections ({error})")
            return
        self.ok(f"sentry: {host}:{port} accepts connections")
        if self.args.send_test_error:
            self.send_test_error(settings, dsn)

    def send_test_error(self, settings: ObservabilitySettings, dsn: str) -> None:
        accepted, outcome = _send_sentry_test_event(
            dsn,
            environment=settings.environment,
            release=f"{settings.service_name}@{settings.service_version}",
            server_name=settings.service_name,
            timeout=self.args.timeout,
        )
        if accepted:
            self.ok(f"sentry: test event {outcome}")
        else:
            self.fail(f"sentry: test event {outcome}")

    # Alerts not firing: test with a manual alert and the notification channel's settings.
    def send_test_alert(self, settings: ObservabilitySettings, channel: str) -> None:
        from .alerts import AlertDispatcher

        async def send() -> tuple[AlertResult, AlertResult | None]:
            dispatcher = AlertDispatcher(settings)
            context = {"service": settings.service_name, "environment": settings.environment}
            try:
                results = await dispatcher.send_alert(
                    TEST_ALERT_MESSAGE, severity="info", context=context, channels=(channel,)
                )
                resolved = None
                if channel in RESOLVED_TEST_ALERT_CHANNELS and results[channel].ok:
                    # Alertmanager would keep a test alert firing until its TTL ran out.
                    resolved = await dispatcher.send_alert(
                        TEST_ALERT_MESSAGE,
                        severity="info",
                        context=context,
                        channels=(channel,),
                        action="resolve",
                    )
            finally:
                await dispatcher.aclose()
            return results[channel], resolved[channel] if resolved else None

        try:
            result, resolved = asyncio.run(send())
        except ValueError as exc:  # an unknown channel: the message names the choices
            self.fail(f"alert {channel}: {exc}")
            return
        self.report_alert(channel, "delivered", result)
        if resolved is not None:
            self.report_alert(channel, "resolved", resolved)

    def report_alert(self, channel: str, done: str, result: AlertResult) -> None:
        detail = f"outcome {result.outcome}" + (
            f", HTTP {result.status}" if result.status is not None else ""
        )
        if result.ok:
            self.ok(f"alert {channel}: test alert {done} ({detail})")
        else:
            reason = f": {result.error}" if result.error else ""
            self.fail(f"alert {channel}: test alert not {done} ({detail}){reason}")

    def check_prometheus(self, base_url: str) -> None:
        import httpx

        base = base_url.rstrip("/")
        try:
            rules = httpx.get(f"{base}/api/v1/rules", timeout=self.args.timeout).json()
            managers = httpx.get(f"{base}/api/v1/alertmanagers", timeout=self.args.timeout).json()
            targets = httpx.get(f"{base}/api/v1/targets", timeout=self.args.timeout).json()
        except (httpx.HTTPError, ValueError) as exc:
            self.fail(f"prometheus: {base} did not answer its HTTP API ({exc})")
            return
        loaded = {
            rule.get("name")
            for group in rules.get("data", {}).get("groups", [])
            for rule in group.get("rules", [])
            if rule.get("type") == "alerting"
        }
        expected = alert_names()
        missing = [name for name in expected if name not in loaded]
        if missing:
            self.fail(f"prometheus: alert rules not loaded: {', '.join(missing)}")
        else:
            self.ok(f"prometheus: all {len(expected)} alert rules are loaded")
        active = managers.get("data", {}).get("activeAlertmanagers", [])
        if not active:
            self.fail("prometheus: no Alertmanager configured, alerts go nowhere")
        for manager in active:
            url = manager.get("url", "")
            try:
                host, port = _endpoint(url)
            except ValueError:
                continue
            error = _tcp_error(host, port, self.args.timeout)
            if error is None:
                self.ok(f"prometheus: Alertmanager {host}:{port} accepts connections")
            else:
                self.fail(f"prometheus: Alertmanager {host}:{port} refuses connections ({error})")
        for target in targets.get("data", {}).get("activeTargets", []):
            job = target.get("labels", {}).get("job", "?")
            url = target.get("scrapeUrl", "?")
            if target.get("health") == "up":
                self.ok(f"prometheus: target {job} {url} is up")
            elif target.get("health") == "down":
                self.fail(f"prometheus: target {job} {url} is down ({target.get('lastError', '')})")


def _send_sentry_test_event(
    dsn: str, *, environment: str, release: str, server_name: str, timeout: float
) -> tuple[bool, str]:
    """Send one test event with sentry-sdk's own HTTP transport; describe what happened.

    A private client: the process's global Sentry client and scopes are left untouched.
    """
    import sentry_sdk

    from .sentry._sentry_seam import answer_recording_transport

    answers: list[str] = []
    client = sentry_sdk.Client(
        dsn,
        transport=answer_recording_transport(answers),
        default_integrations=False,
        auto_enabling_integrations=False,
        environment=environment,
        release=release,
        server_name=server_name,
        send_client_reports=False,
    )
    event_id = uuid.uuid4().hex
    client.capture_event(
        {
            "event_id": event_id,
            "message": TEST_EVENT_MESSAGE,
            "level": "error",
            "logger": "amani_observability.cli",
            "tags": {"amani_observability.check": "true"},
        }
    )
    deadline = time.monotonic() + timeout
    client.flush(timeout=timeout)
    while not answers and time.monotonic() < deadline:
        time.sleep(0.05)
    client.close(timeout=1.0)
    if not answers:
        return False, f"{event_id} got no answer from Sentry within {timeout:g} s"
    if answers[0].startswith("HTTP"):
        return True, f"{event_id} accepted ({answers[0]})"
    return False, f"{event_id} was not accepted: {answers[0]}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def _fast_paths_here(settings: ObservabilitySettings) -> list[str]:
    """The SDK shortcuts a worker with these settings takes with the SDKs installed here,
    each checked as at start-up (the server span for the provider instrument() builds)."""
    found = []
    if settings.tracing_enabled:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        from .tracing._otel_seam import describe, light_decision

        provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(settings.tracing_sample_rate)),
            shutdown_on_exit=False,
        )
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        found.append(describe(*light_decision(provider, provider.get_tracer("check"))))
        provider.shutdown()
    return found
