"""The alertmanager channel against a real Alertmanager HA pair (Debian package
`prometheus-alertmanager`): two instances clustered on loopback, notifying a loopback
webhook. Three replicas of a service, each its own process, raise the same alert and
exactly one notification goes out; with one instance stopped, a replica's resolve still
succeeds and exactly one resolved notification goes out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, require_binary
from tests.http_standin import StandIn
from tests.integration.alert_sender import MESSAGE
from tests.support import ROOT, ServerProcess, wait_for

pytestmark = pytest.mark.integration

# Short cluster timings, so the instance second in line waits 2 s (not 15) before it
# checks whether the first one notified.
PEER_TIMEOUT = 2
GROUP_WAIT = 1
GROUP_INTERVAL = 2
# Long enough for a duplicate notification to arrive if deduplication failed: the second
# instance notifies after its peer timeout, and groups flush every group interval.
QUIET_SECONDS = 2 * PEER_TIMEOUT + 2 * GROUP_INTERVAL
REPLICAS = 3
ALERT_TIMEOUT = 5


class Pair:
    """Two clustered Alertmanagers; `stop(i)` stops one of them."""

    def __init__(self, alertmanager: str, config: Path, tmp: Path) -> None:
        self.web = [free_port(), free_port()]
        gossip = [free_port(), free_port()]
        self.urls = [f"http://127.0.0.1:{port}" for port in self.web]
        self.processes = [
            ServerProcess(
                [
                    alertmanager,
                    f"--config.file={config}",
                    f"--storage.path={tmp / f'am-{i}'}",
                    f"--web.listen-address=127.0.0.1:{self.web[i]}",
                    f"--cluster.listen-address=127.0.0.1:{gossip[i]}",
                    f"--cluster.advertise-address=127.0.0.1:{gossip[i]}",
                    f"--cluster.peer=127.0.0.1:{gossip[1 - i]}",
                    f"--cluster.peer-timeout={PEER_TIMEOUT}s",
                    "--cluster.gossip-interval=100ms",
                    "--cluster.pushpull-interval=1s",
                    "--cluster.reconnect-interval=1s",
                ],
                log_path=tmp / f"alertmanager-{i}.log",
                ready_url=f"{self.urls[i]}/-/ready",
                ready_status=200,
            )
            for i in range(2)
        ]

    def clustered(self) -> bool:
        for url in self.urls:
            cluster = httpx.get(f"{url}/api/v2/status", timeout=2).json()["cluster"]
            if cluster["status"] != "ready" or len(cluster.get("peers") or []) != 2:
                return False
        return True

    def stop(self, index: int) -> None:
        self.processes[index].__exit__()  # terminate; exiting it again later is harmless

    def logs(self) -> str:
        return "\n".join(process.output() for process in self.processes)


@pytest.fixture
def hook() -> Iterator[StandIn]:
    with StandIn() as standin:
        yield standin


@pytest.fixture
def pair(tmp_path: Path, hook: StandIn) -> Iterator[Pair]:
    alertmanager = require_binary("prometheus-alertmanager")
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        f"""\
route:
  receiver: hook
  group_by: [alertname, service]
  group_wait: {GROUP_WAIT}s
  group_interval: {GROUP_INTERVAL}s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {hook.url("/hook")}
        send_resolved: true
"""
    )
    pair = Pair(alertmanager, config, tmp_path)
    with ExitStack() as stack:
        for process in pair.processes:
            stack.enter_context(process)
        wait_for("both Alertmanagers to see each other", pair.clustered, 30)
        yield pair


def replicas(pair: Pair, action: str, names: list[str]) -> list[dict[str, Any]]:
    """Run one sender process per name at once; their printed results, in order."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "ALERTMANAGER_URL": ",".join(pair.urls),
        "SERVICE_NAME": "payments",
        "ENVIRONMENT": "prod",
        "ALERT_TIMEOUT_SECONDS": str(ALERT_TIMEOUT),
        "ALERT_MAX_RETRIES": "2",
        "LOG_JSON": "false",
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.integration.alert_sender", action, name],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        results.append(json.loads(out))
    return results


def notifications(hook: StandIn, status: str) -> list[dict[str, Any]]:
    return [body for body in (r.json() for r in hook.received("/hook")) if body["status"] == status]


def test_replicas_alert_once_through_the_pair_and_resolve_with_one_instance_down(
    pair: Pair, hook: StandIn
) -> None:
    labels = {
        "alertname": "PaymentProviderUnreachable",
        "severity": "critical",
        "service": "payments",
        "environment": "prod",
    }
    results = replicas(pair, "trigger", [f"replica-{n}" for n in range(REPLICAS)])
    assert (
        results
        == [
            {
                "channel": "alertmanager",
                "ok": True,
                "outcome": "delivered",
                "status": 200,
                "attempts": 2,
                "error": None,
            }
        ]
        * REPLICAS
    )

    wait_for("the firing notification", lambda: notifications(hook, "firing"), 30)
    time.sleep(QUIET_SECONDS)  # a duplicate from the other instance would arrive by now
    [firing] = notifications(hook, "firing")
    [alert] = firing["alerts"]
    assert alert["labels"] == labels
    assert alert["annotations"]["summary"] == MESSAGE
    assert alert["status"] == "firing"

    pair.stop(0)
    [resolved_result] = replicas(pair, "resolve", ["replica-0"])
    assert resolved_result["ok"] is True
    assert resolved_result["outcome"] == "delivered"
    assert resolved_result["error"].startswith("receiver 1 of 2: connection failed (ConnectError)")

    wait_for("the resolved notification", lambda: notifications(hook, "resolved"), 30)
    time.sleep(QUIET_SECONDS)
    [resolved] = notifications(hook, "resolved")
    [alert] = resolved["alerts"]
    assert alert["labels"] == labels
    assert alert["status"] == "resolved"
    assert len(notifications(hook, "firing")) == 1, pair.logs()
