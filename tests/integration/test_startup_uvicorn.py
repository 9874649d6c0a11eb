"""What instrument() says about how uvicorn was started, under a real uvicorn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amani_observability._startup import UVICORN_RELOAD
from tests.conftest import free_port
from tests.support import UvicornProcess

pytestmark = pytest.mark.integration


def test_uvicorn_reload_is_named_once_as_a_development_setting(tmp_path: Path) -> None:
    """The reloader's server process imports the app (and so runs instrument()) once."""
    with UvicornProcess(
        "tests.integration.loop_app:app",
        free_port(),
        args=("--reload", "--reload-dir", str(Path(__file__).parent)),
        log_path=tmp_path / "uvicorn.log",
    ) as server:
        pass
    output = server.output()
    messages = [json.loads(line)["message"] for line in output.splitlines() if line[:1] == "{"]
    assert messages.count(UVICORN_RELOAD) == 1, output
