"""ObservabilitySettings: the guide's environment names, secrets hidden, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from amani_observability import ConfigurationError, ObservabilitySettings


def test_defaults() -> None:
    settings = ObservabilitySettings()
    assert settings.service_name == "amani-backend"
    assert settings.request_id_header == "X-Request-ID"
    assert settings.log_json is True
    assert settings.tracing_enabled is False
    assert settings.metrics_path == "/metrics"
    assert settings.sentry_dsn is None
    assert settings.access_log_excluded_paths == ["/metrics", "/health"]


def test_reads_the_guides_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTRY_DSN", "https://key@o1.ingest.sentry.io/2")
    monkeypatch.setenv("SENTRY_TRACES_SAMPLE_RATE", "0.1")
    monkeypatch.setenv("TRACING_ENABLED", "True")
    monkeypatch.setenv("TRACING_EXPORTER", "otlp")
    monkeypatch.setenv("OTLP_ENDPOINT", "http://localhost:4317")
    monkeypatch.setenv("OTLP_HEADERS", "dd-api-key=abc")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/X")
    monkeypatch.setenv("PAGERDUTY_API_KEY", "k" * 32)
    monkeypatch.setenv("METRICS_EXCLUDED_PATHS", "/internal/.*, /ready")
    settings = ObservabilitySettings()
    assert settings.sentry_dsn is not None
    assert settings.sentry_dsn.get_secret_value() == "https://key@o1.ingest.sentry.io/2"
    assert settings.sentry_traces_sample_rate == 0.1
    assert settings.tracing_enabled is True
    assert settings.otlp_endpoint == "http://localhost:4317"
    assert settings.metrics_excluded_paths == ["/internal/.*", "/ready"]


def test_reads_a_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SERVICE_NAME=payments\nLOG_LEVEL=debug\n")
    settings = ObservabilitySettings()
    assert settings.service_name == "payments"
    assert settings.log_level == "DEBUG"


def test_field_names_are_the_lower_case_env_names() -> None:
    settings = ObservabilitySettings(sentry_dsn="https://k@h/1", service_name="svc")
    assert settings.service_name == "svc"


def test_secrets_never_show_in_repr_or_str() -> None:
    settings = ObservabilitySettings(
        sentry_dsn="https://topsecretkey@o1.ingest.sentry.io/2",
        slack_webhook_url="https://hooks.slack.com/services/T/B/topsecretslack",
        pagerduty_api_key="topsecretpagerduty",
        otlp_headers="dd-api-key=topsecretotlp",
        metrics_username="scraper",
        metrics_password="topsecretpassword",
    )
    for text in (repr(settings), str(settings), str(settings.model_dump())):
        assert "topsecret" not in text


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "SENTRY_TRACES_SAMPLE_RATE",
            "1.5",
            "SENTRY_TRACES_SAMPLE_RATE=1.5: must be between 0 and 1",
        ),
        ("TRACING_SAMPLE_RATE", "-0.1", "TRACING_SAMPLE_RATE=-0.1: must be between 0 and 1"),
        (
            "TRACING_EXPORTER",
            "zipkin",
            "TRACING_EXPORTER=zipkin: must be one of 'otlp', 'otlp-http', 'console' or 'none'",
        ),
        (
            "TRACING_ENABLED",
            "maybe",
            "TRACING_ENABLED=maybe: must be true or false (also accepted: 1/0, yes/no, on/off)",
        ),
        ("ALERT_MAX_RETRIES", "many", "ALERT_MAX_RETRIES=many: must be a whole number"),
        ("ALERT_MAX_RETRIES", "11", "ALERT_MAX_RETRIES=11: must be at most 10"),
        (
            "REQUEST_ID_HEADER",
            "X Request",
            "REQUEST_ID_HEADER=X Request: must be an HTTP header name such as X-Request-ID",
        ),
        (
            "METRICS_PATH",
            "metrics",
            "METRICS_PATH=metrics: must be an absolute URL path such as /metrics",
        ),
        (
            "OTLP_ENDPOINT",
            "localhost:4317",
            "OTLP_ENDPOINT=localhost:4317: must be an http:// or https:// URL",
        ),
        (
            "METRICS_BUCKETS",
            "1,0.5",
            "METRICS_BUCKETS=1,0.5: must be positive numbers in increasing order",
        ),
        ("SERVICE_NAME", "", "SERVICE_NAME=: must not be empty"),
        (
            "METRICS_USERNAME",
            "prometheus",
            "METRICS_PASSWORD: METRICS_USERNAME and METRICS_PASSWORD must be set together",
        ),
        (
            "METRICS_PASSWORD",
            "topsecret",
            "METRICS_PASSWORD: METRICS_USERNAME and METRICS_PASSWORD must be set together",
        ),
        ("METRICS_BEARER_TOKEN", "", "METRICS_BEARER_TOKEN: must not be empty"),
    ],
)
def test_a_bad_value_is_one_configuration_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as caught:
        ObservabilitySettings()
    assert str(caught.value) == f"invalid observability settings: {message}"
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__ is True


def test_bad_regex_in_a_path_list_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACING_EXCLUDED_PATHS", "/ok,/bad[")
    with pytest.raises(
        ConfigurationError,
        match=r"TRACING_EXCLUDED_PATHS=/ok,/bad\[: '/bad\[' is not a valid regular expression",
    ):
        ObservabilitySettings()


def test_a_bad_secret_is_reported_without_its_value() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ObservabilitySettings(sentry_dsn=12345)  # type: ignore[arg-type]
    assert (
        str(caught.value)
        == "invalid observability settings: SENTRY_DSN: Input should be a valid string"
    )
    assert "12345" not in str(caught.value)


def test_several_bad_values_are_reported_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTRY_TRACES_SAMPLE_RATE", "2")
    monkeypatch.setenv("LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigurationError) as caught:
        ObservabilitySettings()
    assert str(caught.value) == (
        "invalid observability settings: "
        "LOG_LEVEL=LOUD: must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR' or 'CRITICAL'; "
        "SENTRY_TRACES_SAMPLE_RATE=2: must be between 0 and 1"
    )


def test_configuration_error_is_a_value_error() -> None:
    assert issubclass(ConfigurationError, ValueError)


# --- OTLP_HEADERS (issue 4) ------------------------------------------------------------------


def test_otlp_headers_are_url_decoded_pairs_with_lower_case_keys() -> None:
    from amani_observability.settings import parse_otlp_headers

    assert parse_otlp_headers("dd-api-key=abc123") == {"dd-api-key": "abc123"}
    assert parse_otlp_headers(" X-Honeycomb-Team = k%3Dv%2Cw , Authorization=Bearer%20t0k=n,") == {
        "x-honeycomb-team": "k=v,w",
        "authorization": "Bearer t0k=n",
    }


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("dd-api-key", "must be key=value pairs separated by commas, e.g. "
         "x-honeycomb-team=YOUR_KEY (pair 1 is not)"),
        ("a=1,=2", "must be key=value pairs separated by commas, e.g. "
         "x-honeycomb-team=YOUR_KEY (pair 2 is not)"),
        ("bad key=1", "must be key=value pairs separated by commas, e.g. "
         "x-honeycomb-team=YOUR_KEY (pair 1 is not)"),
        ("dd-api-key=", "pair 1 has an empty value"),
        ("x=a%0D%0Ab", "pair 1 has a line break or NUL in its value"),
    ],
)  # fmt: skip
def test_malformed_otlp_headers_are_refused_without_repeating_them(
    value: str, problem: str
) -> None:
    with pytest.raises(ConfigurationError) as error:
        ObservabilitySettings(otlp_headers=value)
    assert str(error.value) == f"invalid observability settings: OTLP_HEADERS: {problem}"
    assert value not in str(error.value)


def test_a_misspelt_keyword_names_itself_and_the_closest_setting() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ObservabilitySettings(tracing_enabeld=True, service_name="svc")
    assert str(caught.value) == (
        "ObservabilitySettings: 'tracing_enabeld' is not a setting "
        "(did you mean 'tracing_enabled'?)"
    )


def test_every_unknown_keyword_is_named_even_without_a_close_match() -> None:
    with pytest.raises(ConfigurationError) as caught:
        ObservabilitySettings(zzz=1, _env_fil=None)
    assert str(caught.value) == (
        "ObservabilitySettings: 'zzz' is not a setting; "
        "'_env_fil' is not a setting (did you mean '_env_file'?)"
    )


def test_keywords_may_be_upper_case_and_settings_options_still_pass() -> None:
    settings = ObservabilitySettings(SERVICE_NAME="svc", _env_file=None)
    assert settings.service_name == "svc"


def test_unknown_environment_variables_stay_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TRACING_ENABELD", "true")
    (tmp_path / ".env").write_text("SERVICE_NAME=payments\nDATABASE_PASSWORD=x\n")
    settings = ObservabilitySettings()
    assert (settings.service_name, settings.tracing_enabled) == ("payments", False)
