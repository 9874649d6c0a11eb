"""The apps benchmarks/throughput.py serves with uvicorn, bare and fully instrumented.

    uvicorn benchmarks.server_apps:bare         # the benchmark route, nothing else
    uvicorn benchmarks.server_apps:full         # the same route under the whole stack
    uvicorn benchmarks.server_apps:peers        # the same route under the peer stack
    uvicorn benchmarks.server_apps:demo_bare    # the demo service, no observability
    uvicorn benchmarks.server_apps:demo_full    # the demo as main.py wires it, whole stack

`full` is the stack of cases_stack.py built for a real server: request ID, metrics,
tracing at 100 % sampling through a BatchSpanProcessor (its exporter drops the batches,
so no collector is needed and only the per-request cost shows), Sentry errors-only with
a DSN on a closed loopback port (a healthy request sends nothing), access log off (the
bare side writes none either). `peers` is the peer stack of cases_stack.py:
asgi-correlation-id, prometheus-fastapi-instrumentator, opentelemetry-instrumentation-
fastapi (the same kind of provider) and sentry-sdk's FastAPI integration at the same
DSN. Each app is built on first access, so serving `bare` imports none of the stack.
The demo apps hold one escrow transaction, DEMO_TRANSACTION, on SQLite in memory;
`demo_full` adds what main.py adds (the database metrics) and the same whole stack as
`full`.
"""

from __future__ import annotations

from typing import Any


def build_bare() -> Any:
    from benchmarks.harness import bare_app

    return bare_app()


def build_full() -> Any:
    # The provider goes in through tracing's internal hook and never becomes global,
    # as in the harness: started and flushed by the app's own lifespan.
    from benchmarks.cases_stack import ours

    return ours()


def build_peers() -> Any:
    from benchmarks.cases_stack import peers

    return peers()


DEMO_TRANSACTION = "0" * 32


def _demo_service(*, instrumented: bool) -> Any:
    from examples.demo_app.service import create_app
    from examples.demo_app.store import Store

    store = Store("sqlite://")
    store.add_transaction(DEMO_TRANSACTION, "hold", 10.0)
    app = create_app(store)
    if instrumented:
        from amani_observability.metrics import instrument_sqlalchemy
        from benchmarks.cases_stack import instrument_fully

        instrument_sqlalchemy(store.engine)
        instrument_fully(app)
    return app


def build_demo_bare() -> Any:
    return _demo_service(instrumented=False)


def build_demo_full() -> Any:
    return _demo_service(instrumented=True)


_BUILDERS = {
    "bare": build_bare,
    "full": build_full,
    "peers": build_peers,
    "demo_bare": build_demo_bare,
    "demo_full": build_demo_full,
}


def __getattr__(name: str) -> Any:
    # uvicorn resolves "module:attribute" with getattr(): build the app it asks for, once.
    builder = _BUILDERS.get(name)
    if builder is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    app = builder()
    globals()[name] = app
    return app
