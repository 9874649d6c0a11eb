"""SQL query breadcrumbs for Sentry events, without sentry-sdk's per-query span.

sentry-sdk's SQLAlchemy integration records every query as a breadcrumb and, in the same
step, opens a performance span for it, even when performance monitoring is off: a Span
object and a forked scope per query, a cost close to the query's own for a fast query
(docs/performance.md). In errors-only mode nothing ever reads that span. So there,
init_sentry() switches the integration off and `record_query` records the same
breadcrumb (category "query", the statement as message, `db.executemany` for an
executemany) and nothing else.

Where the integration's spans or query parameters are wanted (performance on, the SDK's
option to record parameters, or the integration listed in `integrations=`) it stays on
and this listener stays quiet, unless the SDK could not turn it on; where the service
disabled it, there are no query breadcrumbs at all.
"""

from __future__ import annotations

from typing import Any

import sentry_sdk
from sentry_sdk.integrations import DidNotEnable

# Whether record_query() records: set by every init_sentry() call.
_recording = False
_listening = False


def sqlalchemy_integration() -> Any | None:
    """sentry-sdk's SqlalchemyIntegration class, or None without SQLAlchemy."""
    try:
        from sentry_sdk.integrations.sqlalchemy import SqlalchemyIntegration
    except (ImportError, DidNotEnable):
        return None
    return SqlalchemyIntegration


def wants_the_sdks_query_spans(options: dict[str, Any]) -> bool:
    """Whether these sentry_sdk.init() options need the SDK's own integration: performance
    monitoring on, query parameters asked for, or the integration listed explicitly."""
    if options.get("traces_sample_rate") is not None or options.get("traces_sampler"):
        return True
    if (options.get("_experiments") or {}).get("record_sql_params"):
        return True
    if (options.get("data_collection") or {}).get("database_query_data"):
        return True
    integration = sqlalchemy_integration()
    return integration is not None and listed(integration, options, "integrations")


def listed(integration: type, options: dict[str, Any], key: str) -> bool:
    """Whether options[key] (a list of integrations or their classes) names `integration`."""
    return any(
        each is integration or isinstance(each, integration) for each in options.get(key) or ()
    )


def record_queries(on: bool) -> None:
    """Record query breadcrumbs ourselves (on) or leave them to the SDK (off)."""
    global _recording, _listening
    _recording = on
    if not on or _listening:
        return
    try:
        from sqlalchemy import event
        from sqlalchemy.engine import Dialect
    except ImportError:  # no SQLAlchemy, no queries
        return
    # On the Dialect class: every engine, made before or after this call. At the dialect,
    # not with the Connection's before_cursor_execute as the SDK listens: a Connection
    # event makes every Connection dispatch all of its events on every query, where a
    # dialect event is one loop. These listeners run before any
    # engine's own (class-level listeners come first) and leave the execution to them.
    event.listen(Dialect, "do_execute", record_query)
    event.listen(Dialect, "do_executemany", record_executemany)
    event.listen(Dialect, "do_execute_no_params", record_query)
    _listening = True


def record_query(cursor: Any, statement: str, *parameters_and_context: Any) -> None:
    """do_execute and do_execute_no_params: one breadcrumb, the statement its message."""
    if _recording:
        sentry_sdk.add_breadcrumb(message=statement, category="query", data={})


def record_executemany(cursor: Any, statement: str, parameters: Any, context: Any) -> None:
    if _recording:
        sentry_sdk.add_breadcrumb(
            message=statement, category="query", data={"db.executemany": True}
        )
