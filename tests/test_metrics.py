"""The metric catalogue, get-or-create registration, DB timing and multiprocess helpers."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, Counter, Gauge, Histogram

from amani_observability import metrics
from amani_observability.metrics import _sql_operation as sql_operation
from amani_observability.metrics import (
    escrow_transactions_total,
    instrument_sqlalchemy,
    kyc_submissions_total,
    mark_process_dead,
    track_db_query,
    user_registrations_total,
)
from amani_observability.metrics._concern import use_buckets
from amani_observability.settings import DEFAULT_BUCKETS

CATALOGUE = [
    ("http_requests_total", Counter, ("method", "endpoint", "status")),
    ("http_request_duration_seconds", Histogram, ("method", "endpoint")),
    ("http_requests_in_progress", Gauge, ("method", "endpoint")),
    ("db_connections_active", Gauge, ()),
    ("db_query_duration_seconds", Histogram, ("operation",)),
    ("escrow_transactions_total", Counter, ("type", "status")),
    ("user_registrations_total", Counter, ()),
    ("kyc_submissions_total", Counter, ("status",)),
    ("errors_total", Counter, ("error_type", "endpoint")),
]


def query_count(operation: str) -> float | None:
    return REGISTRY.get_sample_value("db_query_duration_seconds_count", {"operation": operation})


@pytest.mark.parametrize(("name", "kind", "labels"), CATALOGUE)
def test_catalogue_has_the_guides_names_types_and_labels(
    name: str, kind: type, labels: tuple[str, ...]
) -> None:
    metric = getattr(metrics, name)

    assert type(metric) is kind
    assert metric._labelnames == labels
    assert REGISTRY._names_to_collectors[name] is metric


def test_guide_example_increments_the_business_counters() -> None:
    user_registrations_total.inc()
    escrow_transactions_total.labels(type="hold", status="success").inc()
    kyc_submissions_total.labels(status="pending").inc()

    assert REGISTRY.get_sample_value("user_registrations_total") == 1.0
    assert (
        REGISTRY.get_sample_value(
            "escrow_transactions_total", {"type": "hold", "status": "success"}
        )
        == 1.0
    )
    assert REGISTRY.get_sample_value("kyc_submissions_total", {"status": "pending"}) == 1.0


def test_reimporting_the_module_reuses_the_registered_metrics() -> None:
    before = metrics.escrow_transactions_total
    reloaded = importlib.reload(metrics)

    assert reloaded.escrow_transactions_total is before
    assert (
        reloaded.http_request_duration_seconds
        is REGISTRY._names_to_collectors["http_request_duration_seconds"]
    )


def test_a_clashing_metric_of_another_type_is_a_clear_error() -> None:
    clash = Gauge("amani_test_clash_total", "A gauge squatting a counter's name.")
    try:
        with pytest.raises(ValueError, match="already registered with a different type"):
            metrics._get_or_create(Counter, "amani_test_clash_total", "Clash.")
    finally:
        REGISTRY.unregister(clash)


def test_use_buckets_replaces_the_histograms_only_when_the_layout_changes() -> None:
    original = metrics.http_request_duration_seconds
    use_buckets(DEFAULT_BUCKETS)
    assert metrics.http_request_duration_seconds is original

    use_buckets((0.1, 1.0))
    assert metrics.http_request_duration_seconds is not original
    assert metrics.db_query_duration_seconds._upper_bounds == [0.1, 1.0, float("inf")]
    assert REGISTRY._names_to_collectors["http_request_duration_seconds"] is (
        metrics.http_request_duration_seconds
    )


def test_default_buckets_hold_the_guides_thresholds() -> None:
    bounds = metrics.http_request_duration_seconds._upper_bounds

    assert 1.0 in bounds  # the slow-query threshold
    assert 2.0 in bounds  # the p95 latency alert threshold


def test_track_db_query_times_a_with_block_even_when_it_raises() -> None:
    with track_db_query("select"):
        pass
    with pytest.raises(KeyError), track_db_query("select"):
        raise KeyError("row")

    assert query_count("select") == 2.0


async def test_track_db_query_times_an_async_with_block() -> None:
    async with track_db_query("insert"):
        await asyncio.sleep(0.05)

    assert query_count("insert") == 1.0
    assert REGISTRY.get_sample_value(
        "db_query_duration_seconds_sum", {"operation": "insert"}
    ) == pytest.approx(0.05, abs=0.04)


async def test_track_db_query_decorates_sync_and_async_functions() -> None:
    @track_db_query("lookup")
    def lookup(key: str) -> str:
        return key.upper()

    @track_db_query("fetch")
    async def fetch(key: str) -> str:
        await asyncio.sleep(0)
        return key * 2

    results = [lookup("a"), await fetch("b"), *await asyncio.gather(fetch("c"), fetch("d"))]

    assert results == ["A", "bb", "cc", "dd"]
    assert (query_count("lookup"), query_count("fetch")) == (1.0, 3.0)
    assert fetch.__name__ == "fetch"


@pytest.mark.parametrize(
    ("statement", "operation"),
    [
        ("SELECT 1", "SELECT"),
        ("  select * from users", "SELECT"),
        ("INSERT INTO t VALUES (?)", "INSERT"),
        ("update t set a = 1", "UPDATE"),
        ("DELETE FROM t", "DELETE"),
        ("CREATE TABLE t (a int)", "OTHER"),
        ("WITH x AS (SELECT 1) SELECT * FROM x", "OTHER"),
        ("", "OTHER"),
    ],
)
def test_sql_operation_is_the_statement_kind_never_its_text(statement: str, operation: str) -> None:
    assert sql_operation(statement) == operation


def test_instrument_sqlalchemy_measures_a_real_sqlite_file(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    assert instrument_sqlalchemy(engine) is engine
    instrument_sqlalchemy(engine)  # a second call must not double-count

    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)"))
        conn.execute(text("INSERT INTO users (email) VALUES ('a@example.com')"))
        conn.execute(text("INSERT INTO users (email) VALUES ('b@example.com')"))
        conn.execute(text("UPDATE users SET email = 'c@example.com' WHERE id = 1"))
        conn.execute(text("INSERT INTO users (email) VALUES (:e)"), [{"e": "d@x"}, {"e": "e@x"}])
        conn.exec_driver_sql("DELETE FROM users WHERE id > 2")  # a statement without parameters
        assert REGISTRY.get_sample_value("db_connections_active") == 1.0
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT email FROM users ORDER BY id")).all()
        conn.execute(text("DELETE FROM users WHERE id = 2"))
        with pytest.raises(Exception, match="no such table"):
            conn.execute(text("SELECT * FROM missing"))
    engine.dispose()

    assert [r.email for r in rows] == ["c@example.com", "b@example.com"]
    # The executemany counts once, and the failed SELECT counts too.
    counts = {op: query_count(op) for op in ("SELECT", "INSERT", "UPDATE", "DELETE", "OTHER")}
    assert counts == {"SELECT": 2.0, "INSERT": 3.0, "UPDATE": 1.0, "DELETE": 2.0, "OTHER": 1.0}
    assert REGISTRY.get_sample_value("db_connections_active") == 0.0
    # No Connection-level listener: with one, SQLAlchemy dispatches every Connection
    # event on every query of the engine (the cost instrument_sqlalchemy avoids).
    assert engine._has_events is False


def test_query_timings_follow_a_cleared_and_a_replaced_histogram() -> None:
    # Each operation's histogram child is cached; the cache must notice clear() (which
    # drops the children) and use_buckets() (which replaces the histogram).
    from sqlalchemy import create_engine, text

    engine = instrument_sqlalchemy(create_engine("sqlite://"))
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.execute(text("SELECT 2"))
        assert query_count("SELECT") == 2.0
        metrics.db_query_duration_seconds.clear()
        conn.execute(text("SELECT 3"))
        assert query_count("SELECT") == 1.0
        use_buckets([0.5, 2.0])
        conn.execute(text("SELECT 4"))
    engine.dispose()

    def bucket(le: str) -> float | None:
        return REGISTRY.get_sample_value(
            "db_query_duration_seconds_bucket", {"operation": "SELECT", "le": le}
        )

    assert query_count("SELECT") == 1.0  # the new histogram's one query
    assert (bucket("0.5"), bucket("2.0"), bucket("+Inf")) == (1.0, 1.0, 1.0)
    assert bucket("0.005") is None  # not the old layout


async def test_instrument_sqlalchemy_measures_an_async_engine(tmp_path: Path) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'async.db'}")
    assert instrument_sqlalchemy(engine) is engine

    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE kyc (user_id TEXT, status TEXT)"))
        await conn.execute(text("INSERT INTO kyc VALUES ('u1', 'pending')"))
        assert REGISTRY.get_sample_value("db_connections_active") == 1.0
        result = await conn.execute(text("SELECT status FROM kyc"))
    await engine.dispose()

    assert result.scalars().all() == ["pending"]
    assert (query_count("OTHER"), query_count("INSERT"), query_count("SELECT")) == (1.0, 1.0, 1.0)
    assert REGISTRY.get_sample_value("db_connections_active") == 0.0


def test_mark_process_dead_removes_only_that_workers_live_gauges(tmp_path: Path) -> None:
    for name in ("gauge_livesum_101.db", "gauge_livesum_202.db", "counter_101.db"):
        (tmp_path / name).write_bytes(b"")

    mark_process_dead(101, str(tmp_path))

    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_101.db", "gauge_livesum_202.db"]


def test_mark_process_dead_without_multiprocess_mode_does_nothing(tmp_path: Path) -> None:
    (tmp_path / "gauge_livesum_101.db").write_bytes(b"")

    mark_process_dead(101)

    assert [p.name for p in tmp_path.iterdir()] == ["gauge_livesum_101.db"]


# A fresh process: instrument an app, scrape, import one business counter, scrape again.
BUSINESS_SCRAPE = """
import asyncio, json, httpx
from fastapi import FastAPI
from amani_observability import ObservabilitySettings, instrument
from tests.support import LifespanDriver

BUSINESS = ("escrow_transactions_total", "user_registrations_total", "kyc_submissions_total")
app = FastAPI(telemetry={"tracing": False})
instrument(app, ObservabilitySettings(log_json=False, access_log_enabled=False))

async def scrape():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        text = (await client.get("/metrics")).text
    stems = [name.removesuffix("_total") for name in BUSINESS]
    return [line for line in text.splitlines() if any(stem in line for stem in stems)]

async def main():
    driver = LifespanDriver(app)
    await driver.startup()
    before = await scrape()
    from amani_observability.metrics import escrow_transactions_total
    escrow_transactions_total.labels(type="hold", status="success").inc()
    after = await scrape()
    await driver.shutdown()
    print(json.dumps([before, after]))

asyncio.run(main())
"""


@pytest.mark.parametrize("multiprocess", [False, True], ids=["in-memory", "multiprocess"])
def test_business_counters_are_exposed_only_once_a_service_imports_them(
    multiprocess: bool, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if multiprocess:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", BUSINESS_SCRAPE],
        capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr

    before, after = json.loads(result.stdout.strip().splitlines()[-1])

    assert before == []
    created = [
        "# HELP escrow_transactions_created Escrow transactions, by type and outcome.",
        "# TYPE escrow_transactions_created gauge",
        'escrow_transactions_created{status="success",type="hold"} <time>',
    ]
    assert [re.sub(r"} \d\.\d+e\+09$", "} <time>", line) for line in after] == [
        "# HELP escrow_transactions_total Escrow transactions, by type and outcome.",
        "# TYPE escrow_transactions_total counter",
        'escrow_transactions_total{status="success",type="hold"} 1.0',
        # prometheus_client's _created series exists only in single-process mode.
        *([] if multiprocess else created),
    ]


def test_star_import_leaves_the_business_counters_unregistered() -> None:
    code = (
        "import prometheus_client\n"
        "from amani_observability.metrics import *\n"
        "names = set(prometheus_client.REGISTRY._names_to_collectors)\n"
        "print(sorted(n for n in names if n.startswith(('escrow', 'user_reg', 'kyc'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )

    assert (result.returncode, result.stdout.strip()) == (0, "[]"), result.stderr
    assert "escrow_transactions_total" in dir(metrics)
