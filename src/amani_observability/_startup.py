"""What a worker says when it starts: the summary line, env-name typos, server pitfalls.

`summary()` names, in one line, what is on and where it goes, secrets masked; instrument()
logs it once per worker at lifespan start-up and `amani-observability check` prints it.
`env_typos()` finds environment variables that look like a misspelt setting
(`SENTRY_DNS`, `TRACING_ENABLE`). `server_warnings()` recognises the ways of starting a
server that break per-process observability (a gunicorn master with `--preload`, uvicorn
`--reload`, several workers without `PROMETHEUS_MULTIPROC_DIR`).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from .settings import ObservabilitySettings

SUMMARY_PREFIX = "Observability on this worker:"
ENV_TYPO = "Environment variable %s is not a setting; did you mean %s? It is ignored"

# What each start-up pitfall breaks, and the fix.
GUNICORN_PRELOAD = (
    "gunicorn --preload: instrument() ran in the master process. Exporters, Sentry and the "
    "alert dispatcher start per worker at lifespan start-up and are safe, but clients the "
    "service itself starts at import (sentry_sdk.init(), a TracerProvider, database pools, "
    "threads) are shared by the forked workers and stop working in them; start them in the "
    "app's lifespan, or drop --preload"
)
UVICORN_RELOAD = (
    "uvicorn --reload: the server process restarts on every code change, so counters restart "
    "from zero and queued spans, events and alerts get only the shutdown flush; use --reload "
    "for development only"
)
WORKERS_WITHOUT_MULTIPROC = (
    "%d worker processes and no PROMETHEUS_MULTIPROC_DIR: each worker counts on its own and "
    "a scrape of /metrics sees one worker at random; set PROMETHEUS_MULTIPROC_DIR to an "
    "empty directory shared by the workers before the server starts (docs/metrics.md)"
)

# Variables other libraries read; never reported as our typos.
_FOREIGN_PREFIXES = ("OTEL_",)
# How alike a variable must be to one of ours to be called a typo of it (difflib's ratio):
# with one of our prefixes, and without one.
_SAME_PREFIX_CUTOFF = 0.85
_ANY_NAME_CUTOFF = 0.9
# Read by prometheus_client, not by the settings, but ours to document and spell-check.
_EXTRA_NAMES = ("PROMETHEUS_MULTIPROC_DIR",)


def setting_env_names() -> list[str]:
    """Every environment variable the library reads."""
    return [name.upper() for name in ObservabilitySettings.model_fields] + list(_EXTRA_NAMES)


def env_typos(
    environ: Mapping[str, str], known: Sequence[str] | None = None
) -> list[tuple[str, str]]:
    """(variable set, the setting it probably meant) for each likely misspelling.

    A variable counts when it shares its first word with one of our names (`SENTRY_DNS`)
    and is close to it, or when it is very close to one of our names whatever its first
    word (`TRACNG_ENABLED`). Exact names, in any case, are settings, not typos.
    """
    names = list(known) if known is not None else setting_env_names()
    known_set = set(names)
    prefixes = {name.split("_", 1)[0] for name in names}
    found = []
    for variable in sorted(environ):
        upper = variable.upper()
        if upper in known_set or upper.startswith(_FOREIGN_PREFIXES):
            continue
        cutoff = _SAME_PREFIX_CUTOFF if upper.split("_", 1)[0] in prefixes else _ANY_NAME_CUTOFF
        match = difflib.get_close_matches(upper, names, n=1, cutoff=cutoff)
        if match:
            found.append((variable, match[0]))
    return found


def summary(
    settings: ObservabilitySettings,
    fast_paths: Iterable[str] | None = None,
    multiprocess_dir: str | None = None,
) -> str:
    """One line: what is on and where it goes. Credentials, paths and tokens never show.

    `fast_paths` are decided at start-up; None (as in `check`) says so.
    """
    parts = []
    if settings.request_id_enabled:
        parts.append(f"request IDs in header {settings.request_id_header}")
    else:
        parts.append("request IDs off")
    if settings.metrics_enabled:
        if settings.metrics_bearer_token is not None:
            auth = "bearer token"
        elif settings.metrics_username is not None:
            auth = "basic"
        else:
            auth = "none"
        where = (
            f"multiprocess dir {multiprocess_dir}"
            if multiprocess_dir
            else "no PROMETHEUS_MULTIPROC_DIR: this process only"
        )
        parts.append(f"metrics at {settings.metrics_path} (auth {auth}, {where})")
    else:
        parts.append("metrics off")
    parts.append(_tracing(settings))
    if settings.sentry_dsn is not None:
        host = _host(settings.sentry_dsn.get_secret_value())
        parts.append(f"Sentry to {host} (environment {settings.environment})")
    else:
        parts.append("Sentry off")
    channels = [
        name
        for name, value in (
            ("slack", settings.slack_webhook_url),
            ("pagerduty", settings.pagerduty_api_key),
            ("webhook", settings.alert_webhook_url),
        )
        if value is not None
    ]
    if settings.alertmanager_url:
        channels.append(f"alertmanager ({len(settings.alertmanager_url)} instances)")
    parts.append(f"alert channels: {', '.join(channels) or 'none'}")
    interval, stall = settings.loop_monitor_interval_seconds, settings.loop_stall_seconds
    if interval <= 0:
        parts.append("loop monitor off")
    elif stall <= 0:
        parts.append(f"loop monitor every {interval:g} s (no stall watchdog)")
    else:
        parts.append(f"loop monitor every {interval:g} s, stalls from {stall:g} s")
    if fast_paths is None:
        parts.append("fast paths: decided at start-up")
    else:
        parts.append(f"fast paths: {', '.join(fast_paths) or 'none'}")
    return f"{SUMMARY_PREFIX} {'; '.join(parts)}"


def _tracing(settings: ObservabilitySettings) -> str:
    if not settings.tracing_enabled:
        return "tracing off"
    exporter = settings.tracing_exporter
    if exporter == "console":
        target = "to the console"
    elif exporter == "none":
        target = "not exported"
    else:
        from .tracing._provider import DEFAULT_ENDPOINTS

        target = f"to {_host(settings.otlp_endpoint or DEFAULT_ENDPOINTS[exporter])}"
    extras = [
        f"exporter {exporter}",
        f"sample rate {settings.tracing_sample_rate:g}",
        f"incoming trace context: {settings.trace_context_policy}",
    ]
    if settings.trace_response_header:
        extras.append("traceresponse header")
    return f"tracing {target} ({', '.join(extras)})"


def _host(url: str) -> str:
    """host[:port] of a URL: no user, password, path or query (a DSN's key is its user)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "(unreadable URL)"
    if not host:
        return "(no host)"
    return f"{host}:{port}" if port else host


def server_warnings(
    environ: Mapping[str, str], argv: Sequence[str], *, metrics_enabled: bool
) -> list[str]:
    """The warnings for how this process was started, from its command line and environment.

    gunicorn: its name in argv[0] or SERVER_SOFTWARE, options from argv and GUNICORN_CMD_ARGS.
    uvicorn: its name in argv[0] (`uvicorn` or `python -m uvicorn`). Workers: `--workers` /
    `-w`, else WEB_CONCURRENCY, which both servers read as the default.
    """
    program = os.path.normpath(argv[0]) if argv else ""
    gunicorn = "gunicorn" in program or "gunicorn" in environ.get("SERVER_SOFTWARE", "").lower()
    uvicorn = not gunicorn and "uvicorn" in program
    if not gunicorn and not uvicorn:
        return []
    options = list(argv[1:])
    if gunicorn:
        options += environ.get("GUNICORN_CMD_ARGS", "").split()
    warnings = []
    if gunicorn and "--preload" in options:
        warnings.append(GUNICORN_PRELOAD)
    if uvicorn and "--reload" in options:
        warnings.append(UVICORN_RELOAD)
    workers = _workers(options, environ, short_option=gunicorn)
    if metrics_enabled and workers > 1 and not environ.get("PROMETHEUS_MULTIPROC_DIR"):
        warnings.append(WORKERS_WITHOUT_MULTIPROC % workers)
    return warnings


def _workers(options: Sequence[str], environ: Mapping[str, str], *, short_option: bool) -> int:
    value = environ.get("WEB_CONCURRENCY", "1")
    for index, option in enumerate(options):
        if option.startswith("--workers="):
            value = option.partition("=")[2]
        elif option == "--workers" or (short_option and option == "-w"):
            value = options[index + 1] if index + 1 < len(options) else value
        elif short_option and option.startswith("-w") and option[2:].isdigit():
            value = option[2:]
    try:
        return int(value)
    except ValueError:
        return 1
