"""The demo service itself: an escrow/KYC API over a Store, with no observability wired in.

main.py wires it up (one instrument() call and the database metrics); the throughput
benchmark also serves it bare, to measure what the wiring costs on these routes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Literal

from fastapi import APIRouter, FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from amani_observability import get_request_id
from amani_observability.metrics import (
    escrow_transactions_total,
    kyc_submissions_total,
    user_registrations_total,
)

from .store import Store

logger = logging.getLogger("demo")


class Registration(BaseModel):
    email: str = Field(min_length=3, max_length=254)


class EscrowRequest(BaseModel):
    type: Literal["hold", "release", "refund"]
    amount: float = Field(gt=0)
    currency: str = Field(default="USD", min_length=3, max_length=3)


class KYCSubmission(BaseModel):
    user_id: str
    document_type: Literal["passport", "national_id", "drivers_license"]


def create_app(store: Store) -> FastAPI:
    """The demo's routes over `store`."""
    app = FastAPI(
        title="amani-observability demo",
        version="0.1.0",
        # FastAPI (0.165+) would otherwise open its own server span: the library's replaces it.
        telemetry={"tracing": False},
    )
    api = APIRouter(prefix="/api/v1")

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
    return app
