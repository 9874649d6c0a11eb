"""ObservabilitySettings: every knob, read from the environment and a `.env` file.

Environment names are the monitoring guide's (`SENTRY_DSN`, `OTLP_ENDPOINT`, ...);
field names are those names in lower case, so `ObservabilitySettings(sentry_dsn=...)`
works in code too. Secrets are `SecretStr`: they never show in `repr()`, logs or errors.
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from pydantic import (
    Field,
    ImportString,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ._redaction import mask_userinfo
from .exceptions import ConfigurationError

# Lists come from the environment comma-separated ("/health,/internal/.*"), not as JSON.
CommaList = Annotated[list[str], NoDecode]

__all__ = ["DEFAULT_BUCKETS", "ObservabilitySettings", "parse_buckets", "parse_otlp_headers"]

SECRET_FIELDS = frozenset(
    {
        "sentry_dsn",
        "otlp_headers",
        "slack_webhook_url",
        "pagerduty_api_key",
        "alert_webhook_url",
        "alertmanager_url",
        "metrics_password",
        "metrics_bearer_token",
    }
)

# Prometheus' default buckets plus 2.0 s (the p95 alert threshold) and the
# OpenTelemetry-recommended 0.075/0.75/7.5 points.
DEFAULT_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip


PAGERDUTY_REGIONS = {
    "us": "https://events.pagerduty.com/v2/enqueue",
    "eu": "https://events.eu.pagerduty.com/v2/enqueue",
}


def parse_buckets(value: str | list[float] | tuple[float, ...]) -> tuple[float, ...]:
    """Histogram bucket bounds as METRICS_BUCKETS takes them: "0.1,0.5,1,2" or a sequence.

    Raises ValueError unless they are positive numbers in increasing order.
    """
    if isinstance(value, str):
        try:
            value = tuple(float(part) for part in value.split(",") if part.strip())
        except ValueError:
            raise ValueError("must be comma-separated numbers, e.g. 0.1,0.5,1,2") from None
    buckets = tuple(float(v) for v in value)
    if not buckets or any(b <= a for a, b in itertools.pairwise(buckets)) or buckets[0] <= 0:
        raise ValueError("must be positive numbers in increasing order")
    return buckets


class ObservabilitySettings(BaseSettings):
    """Configuration for `instrument()`; see docs/configuration.md for every variable."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        frozen=True,
    )

    # --- service identity -----------------------------------------------------------------
    service_name: str = Field(default="amani-backend", min_length=1)
    service_version: str = "0.0.0"
    environment: str = "development"
    # Key names whose values are redacted everywhere, besides the built-in denylist.
    redact_keys: CommaList = Field(default_factory=list)

    # --- logging and request IDs ---------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_json: bool = True
    request_id_enabled: bool = True
    request_id_header: str = "X-Request-ID"
    access_log_enabled: bool = True
    # Paths (regular expressions, full match) left out of the access log.
    access_log_excluded_paths: CommaList = Field(default_factory=lambda: ["/metrics", "/health"])

    # --- Prometheus metrics --------------------------------------------------------------
    metrics_enabled: bool = True
    metrics_path: str = "/metrics"
    metrics_excluded_paths: CommaList = Field(default_factory=list)
    metrics_buckets: Annotated[tuple[float, ...], NoDecode] = DEFAULT_BUCKETS
    metrics_username: str | None = None
    # validate_default: a username without a password must fail too (see the validator).
    metrics_password: SecretStr | None = Field(default=None, validate_default=True)
    metrics_bearer_token: SecretStr | None = None
    # Distinct `endpoint` label values per process; beyond it, endpoint="<overflow>".
    metrics_max_endpoints: int = Field(default=1000, ge=1, le=1_000_000)

    # --- OpenTelemetry tracing -----------------------------------------------------------
    tracing_enabled: bool = False
    tracing_exporter: Literal["otlp", "otlp-http", "console", "none"] = "otlp"
    otlp_endpoint: str | None = None
    otlp_headers: SecretStr | None = None
    tracing_sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    tracing_excluded_paths: CommaList = Field(default_factory=lambda: ["/metrics", "/health"])
    # An incoming traceparent: continue the caller's trace, restart (a new trace linked to
    # the caller's span, baggage dropped) or ignore it (a new trace, no link).
    trace_context_policy: Literal["continue", "restart", "ignore"] = "continue"
    # Answer each traced request with its server span in a W3C `traceresponse` header.
    trace_response_header: bool = False

    # --- Sentry --------------------------------------------------------------------------
    sentry_dsn: SecretStr | None = None
    sentry_traces_sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    sentry_profiles_sample_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    # HTTP exceptions (HTTPException, RequestValidationError as 422) with these status codes
    # are reported besides 5xx, which always are: "422,429" or "400-499". Empty: 5xx only.
    sentry_report_status_codes: Annotated[frozenset[int], NoDecode] = frozenset()
    # Paths (regular expressions, full match) whose error events are dropped and which get
    # no performance transaction; METRICS_PATH is always among them.
    sentry_excluded_paths: CommaList = Field(default_factory=lambda: ["/metrics", "/health"])
    # Optional "module:function" (or, in code, a callable) used as before_send instead of
    # amani_observability.sentry.before_send_handler; call that inside to keep its filtering.
    sentry_before_send: ImportString[Callable[[Any, Any], Any]] | None = None

    # --- alerting ------------------------------------------------------------------------
    slack_webhook_url: SecretStr | None = None
    pagerduty_api_key: SecretStr | None = None
    pagerduty_events_url: str = PAGERDUTY_REGIONS["us"]
    alert_webhook_url: SecretStr | None = None
    alert_max_retries: int = Field(default=3, ge=0, le=10)
    alert_timeout_seconds: float = Field(default=10.0, gt=0.0, le=300.0)
    alert_throttle_seconds: float = Field(default=60.0, ge=0.0)
    # Alerts submit() may hold per channel before it drops (and counts) new ones.
    alert_queue_size: int = Field(default=1000, ge=1, le=1_000_000)
    # How long shutdown waits for queued alerts to be sent; what is left is counted as lost.
    # 20 s fits Kubernetes' default 30 s termination grace period.
    alert_shutdown_timeout_seconds: float = Field(default=20.0, ge=0.0, le=3600.0)
    # The longest Retry-After a receiver's 429 or 503 is obeyed for.
    alert_max_retry_after_seconds: float = Field(default=300.0, ge=0.0, le=86400.0)
    # Base URLs of every instance of the Alertmanager cluster, comma-separated.
    alertmanager_url: CommaList = Field(default_factory=list)
    # A trigger not sent again within this many seconds resolves by itself.
    alertmanager_alert_ttl_seconds: float = Field(default=300.0, gt=0.0, le=86_400.0)

    # --- event-loop health ---------------------------------------------------------------
    # How often the loop runs the lag-measuring callback; 0 turns the monitor (and the
    # stall watchdog, which reads it) off.
    loop_monitor_interval_seconds: float = Field(default=0.25, ge=0.0, le=60.0)
    # How late that callback may be before the watchdog logs a stall; 0: no watchdog.
    loop_stall_seconds: float = Field(default=0.5, ge=0.0, le=3600.0)

    def __init__(self, **values: Any) -> None:
        _reject_unknown_keywords(values)
        # Keywords name settings in any case, as environment variables do; pydantic-settings
        # before 2.8 matches only the field's own (lower-case) name.
        fields = ObservabilitySettings.model_fields
        values = {key.lower() if key.lower() in fields else key: v for key, v in values.items()}
        try:
            super().__init__(**values)
        except ValidationError as exc:
            # One readable error at start-up instead of pydantic's traceback.
            raise ConfigurationError(_describe(exc)) from None

    def __repr_args__(self) -> Any:
        # URLs may carry userinfo (https://user:pass@host): never show it.
        for name, value in super().__repr_args__():
            yield name, mask_userinfo(value) if isinstance(value, str) else value

    @field_validator("redact_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, (list, tuple)):
            value = [str(key).strip() for key in value if str(key).strip()]
        return value

    @field_validator(
        "access_log_excluded_paths",
        "metrics_excluded_paths",
        "tracing_excluded_paths",
        "sentry_excluded_paths",
        mode="before",
    )
    @classmethod
    def _split_regex_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, (list, tuple)):
            for pattern in value:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(
                        f"{pattern!r} is not a valid regular expression ({exc})"
                    ) from None
        return value

    @field_validator("metrics_buckets", mode="before")
    @classmethod
    def _split_buckets(cls, value: Any) -> Any:
        if isinstance(value, (str, list, tuple)):
            return parse_buckets(value)
        return value

    @field_validator("metrics_password")
    @classmethod
    def _basic_auth_pair(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if (value is None) != (info.data.get("metrics_username") is None):
            raise ValueError("METRICS_USERNAME and METRICS_PASSWORD must be set together")
        if value is not None and not value.get_secret_value():
            raise ValueError("must not be empty")
        return value

    @field_validator("metrics_bearer_token")
    @classmethod
    def _non_empty_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("must not be empty")
        return value

    @field_validator("request_id_header")
    @classmethod
    def _header_token(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}", value):
            raise ValueError("must be an HTTP header name such as X-Request-ID")
        return value

    @field_validator("metrics_path")
    @classmethod
    def _absolute_path(cls, value: str) -> str:
        if not value.startswith("/") or any(c in value for c in " ?#"):
            raise ValueError("must be an absolute URL path such as /metrics")
        return value

    @field_validator("sentry_dsn", mode="before")
    @classmethod
    def _sentry_dsn(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return None  # `SENTRY_DSN=` in a .env file means "off"
            from sentry_sdk.utils import BadDsn, Dsn

            try:
                Dsn(value)
            except BadDsn:
                # The DSN holds the project key: say what is wrong, never echo it.
                raise ValueError(
                    "must be a Sentry DSN such as https://<key>@o0.ingest.sentry.io/<project>"
                ) from None
        return value

    @field_validator("sentry_report_status_codes", mode="before")
    @classmethod
    def _status_codes(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, (list, tuple, set, frozenset)):
            return value
        codes: set[int] = set()
        for part in value:
            first, _, last = str(part).partition("-")
            try:
                low = int(first)
                high = int(last) if last else low
            except ValueError:
                raise ValueError(
                    "must be comma-separated HTTP status codes or ranges, e.g. 422,429 or 400-499"
                ) from None
            if not 100 <= low <= high <= 599:
                raise ValueError("must be HTTP status codes between 100 and 599, e.g. 422,429")
            codes.update(range(low, high + 1))
        return frozenset(codes)

    @field_validator("otlp_headers")
    @classmethod
    def _otlp_headers(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_otlp_headers(value.get_secret_value())
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("pagerduty_events_url", mode="before")
    @classmethod
    def _pagerduty_region(cls, value: Any) -> Any:
        # "us" / "eu" select PagerDuty's two service regions without spelling out the URL.
        if isinstance(value, str) and value.strip().lower() in PAGERDUTY_REGIONS:
            return PAGERDUTY_REGIONS[value.strip().lower()]
        return value

    @field_validator("slack_webhook_url", "alert_webhook_url", "pagerduty_api_key", mode="before")
    @classmethod
    def _alert_secret(cls, value: Any, info: ValidationInfo) -> Any:
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(raw, str):
            if not raw.strip():
                return None  # VAR= in a .env file means "not configured"
            if info.field_name != "pagerduty_api_key" and not re.match(
                r"^https?://[^/\s]+", raw.strip()
            ):
                # The value is a credential: describe it, never echo it.
                raise ValueError("must be an http:// or https:// URL")
            return raw.strip()
        return value

    @field_validator("alertmanager_url", mode="before")
    @classmethod
    def _alertmanager_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [url.strip() for url in value.split(",") if url.strip()]
        if isinstance(value, list):
            for position, url in enumerate(value, start=1):
                if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
                    # May carry user:password@: say which one, never echo it.
                    raise ValueError(f"URL {position} is not an http:// or https:// URL")
        return value

    @field_validator("otlp_endpoint", "pagerduty_events_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value


# BaseSettings' own keyword options (`_env_file=None`, `_secrets_dir=...`).
_SETTINGS_OPTIONS = frozenset(
    name for name in inspect.signature(BaseSettings.__init__).parameters if name.startswith("_")
)


def _reject_unknown_keywords(values: dict[str, Any]) -> None:
    """A keyword that names no setting is a typo (`tracing_enabeld=True`): say so rather
    than run with the default. Only keywords: `extra="ignore"` keeps unrelated
    environment variables harmless, and it also governs keywords, so they are checked here."""
    fields = ObservabilitySettings.model_fields
    unknown = [
        key
        for key in values
        if key.lower() not in fields and not (key.startswith("_") and key in _SETTINGS_OPTIONS)
    ]
    if not unknown:
        return
    problems = []
    for key in unknown:
        names = sorted(_SETTINGS_OPTIONS) if key.startswith("_") else list(fields)
        close = difflib.get_close_matches(key if key.startswith("_") else key.lower(), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(f"{key!r} is not a setting{hint}")
    raise ConfigurationError("ObservabilitySettings: " + "; ".join(problems))


_HEADER_KEY = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]{1,128}").fullmatch


def parse_otlp_headers(text: str) -> dict[str, str]:
    """`key=value,key2=value2` (keys and values may be URL-encoded) as a dict.

    Keys are lower-cased, as gRPC metadata requires. Errors name the pair's position,
    never its text: the values are credentials.
    """
    headers: dict[str, str] = {}
    for position, item in enumerate(text.split(","), start=1):
        if not item.strip():
            continue  # tolerate "a=b," and "a=b,,c=d"
        key, separator, value = item.partition("=")
        key = unquote(key.strip()).lower()
        value = unquote(value.strip())
        if not separator or not _HEADER_KEY(key):
            raise ValueError(
                "must be key=value pairs separated by commas, e.g. "
                f"x-honeycomb-team=YOUR_KEY (pair {position} is not)"
            )
        if not value:
            raise ValueError(f"pair {position} has an empty value")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"pair {position} has a line break or NUL in its value")
        headers[key] = value
    return headers


def _describe(exc: ValidationError) -> str:
    """Turn pydantic's error list into sentences naming the environment variable."""
    lines = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else "settings"
        env_name = field.upper()
        problem = _plain(error)
        if field in SECRET_FIELDS:
            lines.append(f"{env_name}: {problem}")
        else:
            shown = mask_userinfo(str(error.get("input")))
            lines.append(f"{env_name}={shown}: {problem}")
    return "invalid observability settings: " + "; ".join(lines)


def _plain(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        field = str(error["loc"][0])
        if field.endswith("sample_rate"):
            return "must be between 0 and 1"
        bound = ctx.get("ge", ctx.get("gt", ctx.get("le", ctx.get("lt"))))
        words = {
            "greater_than_equal": "at least",
            "greater_than": "greater than",
            "less_than_equal": "at most",
            "less_than": "less than",
        }[kind]
        return f"must be {words} {bound}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind == "bool_parsing":
        return "must be true or false (also accepted: 1/0, yes/no, on/off)"
    if kind in ("float_parsing", "float_type"):
        return "must be a number"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "must be a whole number"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return str(error["msg"])
