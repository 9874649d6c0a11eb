"""An app that shows the baggage it received, for the trace-context policy test."""

from __future__ import annotations

from fastapi import FastAPI
from opentelemetry import baggage

from amani_observability import ObservabilitySettings, instrument

app = FastAPI(telemetry={"tracing": False})


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/items/{item_id}")
async def item(item_id: int) -> dict[str, object]:
    return {"item_id": item_id, "baggage": dict(baggage.get_all())}


instrument(app, ObservabilitySettings(access_log_enabled=False))
