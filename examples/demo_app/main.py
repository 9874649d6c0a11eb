"""The demo service: a small escrow/KYC API instrumented with one call.

Run it with `make demo`. It needs nothing external: SQLite in memory by default,
`DATABASE_URL` (e.g. `postgresql://user:pass@host/db`, driven by psycopg 3) for a real
database; tracing, Sentry and alerts stay off until their variables are set (see
docs/configuration.md). The routes are in service.py.
"""

from __future__ import annotations

import os

from amani_observability import ObservabilitySettings, instrument
from amani_observability.metrics import instrument_sqlalchemy

from .service import create_app
from .store import Store

store = Store(os.environ.get("DATABASE_URL", "sqlite://"))
# Pool checkouts and query durations feed db_connections_active and db_query_duration_seconds.
instrument_sqlalchemy(store.engine)

app = create_app(store)
instrument(app, ObservabilitySettings())
