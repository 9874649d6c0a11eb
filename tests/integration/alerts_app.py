"""A tiny app for the shutdown-drain test: POST /burst queues alerts to Slack and a webhook
(their URLs come from the environment) and returns at once."""

from __future__ import annotations

from fastapi import FastAPI

from amani_observability import ObservabilitySettings, instrument
from amani_observability.alerts import get_dispatcher

app = FastAPI(telemetry={"tracing": False})


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/burst")
async def burst(count: int) -> dict[str, int]:
    dispatcher = get_dispatcher()
    accepted = sum(
        dispatcher.submit(f"burst {i}", "warning", {"n": i}, channels=("slack", "webhook"))
        for i in range(count)
    )
    return {"accepted": accepted}


instrument(app, ObservabilitySettings(service_name="payments", environment="test"))
