"""The demo service: a small escrow/KYC API instrumented with one call.

Run it with `make demo`. It needs nothing external: SQLite in memory by default,
`DATABASE_URL` (e.g. `postgresql://user:pass@host/db`, driven by psycopg 3) for a real
database; tracing, Sentry and alerts stay off until their variables are set (see
docs/configuration.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from typing import Literal

from fastapi import APIRouter, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from amani_observability import ObservabilitySettings, get_request_id, instrument
from amani_observability.metrics import (
    escrow_transactions_total,
    instrument_sqlalchemy,
    kyc_submissions_total,
    user_registrations_total,
)

from .store import Store

logger = logging.getLogger("demo")

store = Store(os.environ.get("DATABASE_URL", "sqlite://"))
# Pool checkouts and query durations feed db_connections_active and db_query_duration_seconds.
instrument_sqlalchemy(store.engine)

app = FastAPI(title="amani-observability demo", version="0.1.0")
api = APIRouter(prefix="/api/v1")


class Registration(BaseModel):
    email: str = Field(min_length=3, max_length=254)


class EscrowRequest(BaseModel):
    type: Literal["hold", "release", "refund"]
    amount: float = Field(gt=0)
    currency: str = Field(default="USD", min_length=3, max_length=3)


class KYCSubmission(BaseModel):
    user_id: str
    document_type: Literal["passport", "national_id", "drivers_license"]


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@api.post("/users/register", status_code=201)
async def register_user(body: Registration, request: Request) -> dict[str, str]:
    user_id = uuid.uuid4().hex
    await asyncio.to_thread(store.add_user, user_id, body.email)
    user_registrations_total.inc()
    logger.info("registered user", extra={"user_id": user_id})
    return {"user_id": user_id, "request_id": get_request_id(request) or ""}


@api.post("/escrow/transactions", status_code=201)
async def create_escrow_transaction(body: EscrowRequest) -> dict[str, object]:
    transaction_id = uuid.uuid4().hex
    try:
        await asyncio.to_thread(store.add_transaction, transaction_id, body.type, body.amount)
    except Exception:
        escrow_transactions_total.labels(type=body.type, status="failed").inc()
        raise
    escrow_transactions_total.labels(type=body.type, status="success").inc()
    logger.info("escrow %s", body.type, extra={"transaction_id": transaction_id})
    return {"transaction_id": transaction_id, "type": body.type, "status": "success"}


@api.get("/escrow/transactions/{transaction_id}")
async def get_escrow_transaction(transaction_id: str) -> dict[str, object]:
    row = await asyncio.to_thread(store.get_transaction, transaction_id)
    if row is None:
        raise HTTPException(status_code=404, detail="transaction not found")
    return row


@api.post("/kyc/submissions", status_code=202)
async def submit_kyc(body: KYCSubmission) -> dict[str, str]:
    await asyncio.to_thread(store.add_kyc, body.user_id, body.document_type)
    kyc_submissions_total.labels(status="pending").inc()
    return {"status": "pending"}


@api.get("/slow")
async def slow(seconds: float = 0.5) -> dict[str, float]:
    """A deliberately slow route, so the latency panels have something to show."""
    await asyncio.sleep(min(max(seconds, 0.0), 5.0))
    return {"slept": seconds}


@api.get("/fail")
async def fail() -> None:
    """Raises, so the error panels and Sentry have something to show."""
    raise RuntimeError("demo failure")


app.include_router(api)
instrument(app, ObservabilitySettings())
