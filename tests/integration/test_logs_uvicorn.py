"""Logging under a real uvicorn started with --no-access-log."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.support import UvicornProcess

pytestmark = pytest.mark.integration


def test_no_access_log_stays_off_and_plain_text_keeps_info_lines(tmp_path: Path) -> None:
    """The app runs with ACCESS_LOG_ENABLED=false and LOG_JSON=false: uvicorn's access
    logger stays as --no-access-log left it (no line per request), and INFO lines are
    written as plain text naming the request."""
    with UvicornProcess(
        "tests.integration.metrics_app:app", free_port(), log_path=tmp_path / "uvicorn.log"
    ) as server:
        answer = httpx.get(server.base_url + "/pid", headers={"X-Request-ID": "uv-plain-1"})
    lines = [line.split(" ", 2)[2] for line in server.output().splitlines()]
    assert answer.status_code == 200
    assert [line for line in lines if "/pid" in line] == []
    assert f"INFO uvicorn.error [-] Started server process [{server.process.pid}]" in lines
