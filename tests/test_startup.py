"""The start-up summary line, env-name typo warnings and server start-up warnings."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib.metadata import version

import pytest
import sentry_sdk
from starlette.applications import Starlette

from amani_observability import ObservabilitySettings, _instrument, instrument
from amani_observability._startup import (
    ENV_TYPO,
    GUNICORN_PRELOAD,
    SUMMARY_PREFIX,
    UVICORN_RELOAD,
    WORKERS_WITHOUT_MULTIPROC,
    env_typos,
    server_warnings,
    summary,
)
from tests.conftest import lifespan

DSN_KEY = "dsnkey0123456789"
SECRETS = (
    DSN_KEY, "otlppw", "otlpsecret", "slacksecret", "pd0123456789", "metricspass", "ampass",
)  # fmt: skip


def configured(**values: object) -> ObservabilitySettings:
    base: dict[str, object] = {
        "sentry_dsn": f"http://{DSN_KEY}@127.0.0.1:9/42",
        "environment": "production",
        "tracing_enabled": True,
        "tracing_exporter": "none",
        "otlp_endpoint": "https://user:otlppw@collector.internal:4317/v1",
        "otlp_headers": "api-key=otlpsecret",
        "tracing_sample_rate": 0.25,
        "slack_webhook_url": "https://hooks.slack.example/services/T0/B0/slacksecret",
        "pagerduty_api_key": "pd0123456789" * 2,
        "metrics_username": "scraper",
        "metrics_password": "metricspass",
        "log_json": False,
        "loop_stall_seconds": 0.5,
    }
    base.update(values)
    return ObservabilitySettings(**base)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def nothing_warned_yet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test sees the once-per-process warnings afresh, and no Sentry client after it."""
    monkeypatch.setattr(_instrument, "_warned", set())
    monkeypatch.setattr("sys.argv", ["pytest"])
    yield
    client = sentry_sdk.get_client()
    if client.is_active():
        client.close(timeout=0)
    sentry_sdk.get_global_scope().set_client(None)


# --- the summary line ---------------------------------------------------------------------


def test_summary_names_every_destination_by_host_and_masks_secrets() -> None:
    settings = configured(
        tracing_exporter="otlp",
        trace_context_policy="restart",
        trace_response_header=True,
        alertmanager_url="https://am:ampass@am-0.example:9093,https://am-1.example:9093",
    )
    line = summary(settings, ["light server span"], "/run/prom")
    assert line == (
        f"{SUMMARY_PREFIX} request IDs in header X-Request-ID; "
        "metrics at /metrics (auth basic, multiprocess dir /run/prom); "
        "tracing to collector.internal:4317 (exporter otlp, sample rate 0.25, "
        "incoming trace context: restart, traceresponse header); "
        "Sentry to 127.0.0.1:9 (environment production); "
        "alert channels: slack, pagerduty, alertmanager (2 instances); "
        "loop monitor every 0.25 s, stalls from 0.5 s; fast paths: light server span"
    )
    for secret in SECRETS:
        assert secret not in line


def test_summary_says_what_is_off() -> None:
    settings = ObservabilitySettings(
        request_id_enabled=False, metrics_enabled=False, loop_monitor_interval_seconds=0
    )
    assert summary(settings, None) == (
        f"{SUMMARY_PREFIX} request IDs off; metrics off; tracing off; Sentry off; "
        "alert channels: none; loop monitor off; fast paths: decided at start-up"
    )


def test_summary_names_the_default_collector_and_the_bearer_token() -> None:
    settings = ObservabilitySettings(
        tracing_enabled=True,
        tracing_exporter="otlp-http",
        metrics_bearer_token="metricstoken",
        loop_stall_seconds=0,
    )
    assert summary(settings, []) == (
        f"{SUMMARY_PREFIX} request IDs in header X-Request-ID; metrics at /metrics "
        "(auth bearer token, no PROMETHEUS_MULTIPROC_DIR: this process only); "
        "tracing to localhost:4318 (exporter otlp-http, sample rate 1, incoming trace "
        "context: continue); Sentry off; "
        "alert channels: none; loop monitor every 0.25 s (no stall watchdog); fast paths: none"
    )


async def test_each_worker_logs_one_summary_line_at_start_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The line is logged at lifespan start-up, after the components decided their paths."""
    caplog.set_level(logging.INFO, "amani_observability")
    app = instrument(Starlette(), configured())
    assert [r for r in caplog.records if r.getMessage().startswith(SUMMARY_PREFIX)] == []
    async with lifespan(app):
        pass
    lines = [r for r in caplog.records if r.getMessage().startswith(SUMMARY_PREFIX)]
    assert [(r.levelname, r.getMessage()) for r in lines] == [
        (
            "INFO",
            f"{SUMMARY_PREFIX} request IDs in header X-Request-ID; "
            "metrics at /metrics (auth basic, no PROMETHEUS_MULTIPROC_DIR: this process only); "
            "tracing not exported (exporter none, sample rate 0.25, incoming trace context: "
            "continue); "
            "Sentry to 127.0.0.1:9 (environment production); "
            "alert channels: slack, pagerduty; loop monitor every 0.25 s, stalls from 0.5 s; "
            f"fast paths: otel span on (opentelemetry-sdk {version('opentelemetry-sdk')})",
        )
    ]
    for secret in SECRETS:
        assert secret not in caplog.text


# --- env-name typos -------------------------------------------------------------------------

# Variables a container, a shell, Kubernetes or other libraries set: none is ours.
UNRELATED = {
    "PATH": "/usr/bin",
    "HOSTNAME": "web-1",
    "HOME": "/root",
    "LOGNAME": "app",
    "PYTHONPATH": "/app",
    "WEB_CONCURRENCY": "4",
    "OTEL_SERVICE_NAME": "payments",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
    "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    "SENTRY_ENVIRONMENT": "production",
    "SENTRY_RELEASE": "1.2.3",
    "METRICS_PORT": "9090",
    "KUBERNETES_SERVICE_HOST": "10.0.0.1",
    "LOG_FORMAT": "json",
    "sentry_dsn": "https://k@sentry.example/1",
}


def test_likely_typos_name_the_intended_setting() -> None:
    environ = {
        **UNRELATED,
        "TRACING_ENABLE": "true",
        "SENTRY_DNS": "https://k@sentry.example/1",
        "TRACNG_SAMPLE_RATE": "0.5",
        "PROMETHEUS_MULTIPROC": "/tmp/prom",
    }
    assert env_typos(environ) == [
        ("PROMETHEUS_MULTIPROC", "PROMETHEUS_MULTIPROC_DIR"),
        ("SENTRY_DNS", "SENTRY_DSN"),
        ("TRACING_ENABLE", "TRACING_ENABLED"),
        ("TRACNG_SAMPLE_RATE", "TRACING_SAMPLE_RATE"),
    ]


def test_unrelated_and_exact_variables_are_not_typos() -> None:
    assert env_typos(UNRELATED) == []


def test_instrument_warns_once_per_typo_without_its_value(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SENTRY_DNS", f"https://{DSN_KEY}@sentry.example/1")
    monkeypatch.setenv("TRACING_ENABLE", "true")
    settings = ObservabilitySettings(log_json=False)
    instrument(Starlette(), settings)
    instrument(Starlette(), settings)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", ENV_TYPO % ("SENTRY_DNS", "SENTRY_DSN")),
        ("WARNING", ENV_TYPO % ("TRACING_ENABLE", "TRACING_ENABLED")),
    ]
    assert DSN_KEY not in caplog.text


# --- how the server was started -------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["/venv/bin/gunicorn", "app:app", "--preload", "-w", "4"], {}, [GUNICORN_PRELOAD, 4]),
        (["/venv/bin/gunicorn", "app:app", "-w4"], {}, [4]),
        (["/venv/bin/gunicorn", "app:app"], {"GUNICORN_CMD_ARGS": "--preload --workers=3"},
         [GUNICORN_PRELOAD, 3]),
        (["/venv/bin/gunicorn", "app:app", "--preload"],
         {"PROMETHEUS_MULTIPROC_DIR": "/tmp/p", "WEB_CONCURRENCY": "4"}, [GUNICORN_PRELOAD]),
        (["/venv/bin/gunicorn", "app:app"], {"WEB_CONCURRENCY": "2"}, [2]),
        (["/usr/lib/python3/site-packages/uvicorn/__main__.py", "app:app", "--reload"], {},
         [UVICORN_RELOAD]),
        (["/venv/bin/uvicorn", "app:app", "--workers", "8"], {}, [8]),
        (["/venv/bin/uvicorn", "app:app", "--preload", "-w", "4"], {}, []),
        (["/venv/bin/hypercorn", "app:app", "--reload", "--workers", "4"], {}, []),
        (["/venv/bin/uvicorn", "app:app", "--workers", "many"], {}, []),
        ([], {"WEB_CONCURRENCY": "4"}, []),
    ],
)  # fmt: skip
def test_server_warnings_follow_the_command_line_and_environment(
    argv: list[str], environ: dict[str, str], expected: list[object]
) -> None:
    """An int in `expected` stands for the several-workers warning with that count."""
    messages = [WORKERS_WITHOUT_MULTIPROC % e if isinstance(e, int) else e for e in expected]
    assert server_warnings(environ, argv, metrics_enabled=True) == messages


def test_several_workers_need_no_multiprocess_dir_when_metrics_are_off() -> None:
    argv = ["/venv/bin/uvicorn", "app:app", "--workers", "8"]
    assert server_warnings({}, argv, metrics_enabled=False) == []


def test_instrument_warns_about_the_start_once_per_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("sys.argv", ["/venv/bin/gunicorn", "app:app", "--preload", "-w", "2"])
    settings = ObservabilitySettings(log_json=False)
    instrument(Starlette(), settings)
    instrument(Starlette(), settings)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", GUNICORN_PRELOAD),
        ("WARNING", WORKERS_WITHOUT_MULTIPROC % 2),
    ]
