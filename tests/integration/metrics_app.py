"""A tiny app for the multi-worker metrics test: it tells which worker answered."""

from __future__ import annotations

import os

from fastapi import FastAPI

from amani_observability import ObservabilitySettings, instrument

app = FastAPI(telemetry={"tracing": False})


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/pid")
async def pid() -> dict[str, int]:
    return {"pid": os.getpid()}


instrument(app, ObservabilitySettings(log_json=False, access_log_enabled=False))
