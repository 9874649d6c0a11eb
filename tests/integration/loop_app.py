"""An app whose one route blocks the event loop, for the stall watchdog test under uvicorn."""

from __future__ import annotations

import asyncio
import time

from fastapi import FastAPI

from amani_observability import ObservabilitySettings, instrument

app = FastAPI(telemetry={"tracing": False})


@app.get("/health")
async def health() -> dict[str, str]:
    # Which event loop serves us: the test runs under asyncio's and uvloop's.
    return {"loop": type(asyncio.get_running_loop()).__module__.partition(".")[0]}


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


@app.get("/blocking")
async def blocking_route() -> dict[str, str]:
    time.sleep(1.0)  # noqa: ASYNC251 - the point: a synchronous call blocks the loop
    return {"status": "done"}


instrument(app, ObservabilitySettings(access_log_enabled=False))
