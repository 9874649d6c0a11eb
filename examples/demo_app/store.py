"""The demo's storage: SQLAlchemy Core over SQLite in memory, or DATABASE_URL."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, nullcontext

from sqlalchemy import Column, Float, MetaData, String, Table, create_engine, insert, select
from sqlalchemy.pool import StaticPool

metadata = MetaData()
users = Table(
    "users", metadata, Column("id", String(32), primary_key=True), Column("email", String)
)
transactions = Table(
    "escrow_transactions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("type", String(16)),
    Column("amount", Float),
)
kyc = Table("kyc_submissions", metadata, Column("user_id", String), Column("document_type", String))


def _with_driver(url: str) -> str:
    """`postgresql://` and Heroku-style `postgres://` URLs use psycopg 3 (the demo extra's
    driver), not SQLAlchemy's default psycopg2, which the demo does not install."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Store:
    def __init__(self, url: str) -> None:
        url = _with_driver(url)
        if url.startswith("sqlite"):
            # One shared connection: an in-memory SQLite database lives as long as it does.
            self.engine = create_engine(
                url, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
            # ...so the threads of asyncio.to_thread must take turns on it: interleaved,
            # one thread's COMMIT ends another's transaction ("cannot commit - no
            # transaction is active", a 500 under `make load`).
            self._turn: AbstractContextManager[object] = threading.Lock()
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
            self._turn = nullcontext()
        metadata.create_all(self.engine)

    def add_user(self, user_id: str, email: str) -> None:
        with self._turn, self.engine.begin() as conn:
            conn.execute(insert(users).values(id=user_id, email=email))

    def add_transaction(self, transaction_id: str, kind: str, amount: float) -> None:
        with self._turn, self.engine.begin() as conn:
            conn.execute(insert(transactions).values(id=transaction_id, type=kind, amount=amount))

    def get_transaction(self, transaction_id: str) -> dict[str, object] | None:
        with self._turn, self.engine.connect() as conn:
            row = conn.execute(
                select(transactions).where(transactions.c.id == transaction_id)
            ).first()
        return None if row is None else dict(row._mapping)

    def add_kyc(self, user_id: str, document_type: str) -> None:
        with self._turn, self.engine.begin() as conn:
            conn.execute(insert(kyc).values(user_id=user_id, document_type=document_type))
