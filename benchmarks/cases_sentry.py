"""Sentry rows: our middleware against sentry-sdk's default FastAPI integration.

Both sides: errors only (no performance tracing), the same DSN, environment and release,
pointing at a closed loopback port (the happy path sends nothing anyway). sentry-sdk's
integration patches Starlette and FastAPI classes on init, process-wide, so each side runs
in its own group (own process, own bare baseline).

In the sentry-sdk process the patched classes would also tax the bare baseline while the
client is active; so its client is made current only while its own app runs. The bare app
then pays just the patches' "is the integration on?" check, which makes sentry-sdk's
measured overhead slightly smaller, i.e. the comparison errs in sentry-sdk's favour.
"""

from __future__ import annotations

from typing import Any

from benchmarks.harness import Case, bare_app

DSN = "http://key@127.0.0.1:9/1"  # port 9 (discard) is closed on loopback
ENVIRONMENT = "bench"
RELEASE = "1.0.0"


def ours_sentry() -> Any:
    from amani_observability import ObservabilitySettings, instrument

    # Sentry alone: no request ID, access log or metrics layer around it.
    settings = ObservabilitySettings(
        sentry_dsn=DSN,
        environment=ENVIRONMENT,
        service_version=RELEASE,
        sentry_traces_sample_rate=0.0,
        log_json=False,
        metrics_enabled=False,
        access_log_enabled=False,
        request_id_enabled=False,
    )
    return instrument(bare_app(), settings)  # init_sentry() runs at lifespan start-up


def with_sentry_sdk_client(app: Any) -> Any:
    """sentry-sdk initialised with the peers table's configuration (defaults,
    traces_sample_rate=0), its client current only while `app` handles a request."""
    import sentry_sdk
    from sentry_sdk.scope import Scope, _current_scope

    sentry_sdk.init(dsn=DSN, environment=ENVIRONMENT, release=RELEASE, traces_sample_rate=0.0)
    client = sentry_sdk.get_client()
    sentry_sdk.get_global_scope().set_client(None)
    client_scope = Scope(client=client)

    async def with_client(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        token = _current_scope.set(client_scope)
        try:
            await app(scope, receive, send)
        finally:
            _current_scope.reset(token)

    return with_client


def sentry_sdk_fastapi() -> Any:
    return with_sentry_sdk_client(bare_app())


CASES = [
    Case("+ sentry-sdk FastAPI integration", sentry_sdk_fastapi, group="sentry-sdk"),
    Case(
        "+ amani Sentry middleware",
        ours_sentry,
        group="sentry",
        peer="+ sentry-sdk FastAPI integration",
        target=None,  # for information: issue 21's targets are the whole stack's
    ),
]
