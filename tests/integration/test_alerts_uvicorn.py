"""Alerts under a real uvicorn: what is queued when SIGTERM arrives is still delivered."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from amani_observability.alerts import ALERTS_LOST
from tests.conftest import free_port
from tests.http_standin import Reply, SlackRateLimit, StandIn
from tests.support import UvicornProcess
from tests.test_alerts import BURST, burst_numbers

pytestmark = pytest.mark.integration

SLACK_PATH = "/services/T0/B0/uvicornsecret"


@pytest.mark.parametrize("webhook_hangs", [False, True])
def test_alerts_queued_at_sigterm_reach_slack_and_the_webhook(
    tmp_path: Path, webhook_hangs: bool
) -> None:
    """50 alerts queued, then SIGTERM: uvicorn's lifespan shutdown sends all 50 texts to
    a Slack held to one message a second (as digests) and to the webhook; a webhook that
    never answers makes the loss counted and logged once."""
    with StandIn() as receivers:
        slack = SlackRateLimit(interval=1.0)
        receivers.respond(SLACK_PATH, slack)
        if webhook_hangs:
            receivers.script("/hook", *[Reply(hang=True)] * BURST)
        env = {
            "SLACK_WEBHOOK_URL": receivers.url(SLACK_PATH),
            "ALERT_WEBHOOK_URL": receivers.url("/hook"),
            "ALERT_SHUTDOWN_TIMEOUT_SECONDS": "3" if webhook_hangs else "20",
        }
        with UvicornProcess(
            "tests.integration.alerts_app:app",
            free_port(),
            env=env,
            log_path=tmp_path / "uvicorn.log",
        ) as server:
            answer = httpx.post(server.base_url + "/burst", params={"count": BURST})
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            # uvicorn re-raises the signal once its shutdown is done.
            assert server.process.wait(timeout=40) == -signal.SIGTERM
        lines = [json.loads(line) for line in server.output().splitlines() if line[:1] == "{"]

    assert answer.json() == {"accepted": BURST}
    assert burst_numbers(slack.accepted) == list(range(BURST))
    assert len(slack.accepted) <= 3
    lost = [line["message"] for line in lines if line["logger"] == "amani_observability.alerts"]
    if webhook_hangs:
        assert lost == [ALERTS_LOST % (BURST, 3.0, f"webhook {BURST}")]
    else:
        assert burst_numbers(receivers.received("/hook")) == list(range(BURST))
        assert lost == []
