"""The demo's store under concurrent threads, as asyncio.to_thread drives it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from examples.demo_app.store import Store, users


def test_in_memory_store_survives_concurrent_writers_and_readers() -> None:
    store = Store("sqlite://")

    def work(worker: int) -> None:
        for n in range(50):
            store.add_user(f"{worker}-{n}", "a@example.com")
            store.add_transaction(f"{worker}-{n}", "hold", 1.0)
            assert store.get_transaction(f"{worker}-{n}") == {
                "id": f"{worker}-{n}",
                "type": "hold",
                "amount": 1.0,
            }
            store.add_kyc(f"{worker}-{n}", "passport")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))  # re-raises the first failure

    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(users)).scalar() == 400
