"""One replica of a service sending one alert through the dispatcher, as its own process.

    python -m tests.integration.alert_sender trigger|resolve REPLICA

Settings come from the environment (ALERTMANAGER_URL, SERVICE_NAME...); the result is
printed as one JSON object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys

from amani_observability.alerts import AlertDispatcher

MESSAGE = "Payment provider unreachable"


async def send(action: str, replica: str) -> dict[str, object]:
    async with AlertDispatcher() as dispatcher:
        results = await dispatcher.send_alert(
            MESSAGE, "critical", {"replica": replica}, channels=["alertmanager"], action=action
        )
    return dataclasses.asdict(results["alertmanager"])


if __name__ == "__main__":
    print(json.dumps(asyncio.run(send(sys.argv[1], sys.argv[2]))))
