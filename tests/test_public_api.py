"""The installed package: its version, and an import that changes nothing.

The names each module exports are pinned in tests/test_architecture.py."""

from __future__ import annotations

import subprocess
import sys

import amani_observability


def test_version_is_the_packaged_one() -> None:
    from importlib.metadata import version

    assert amani_observability.__version__ == version("amani-observability")


def test_import_has_no_side_effects() -> None:
    """Importing registers no metric, configures no logging and starts no SDK."""
    code = (
        "import logging, prometheus_client, sentry_sdk\n"
        "from opentelemetry import trace\n"
        "before = set(prometheus_client.REGISTRY._names_to_collectors)\n"
        "handlers = list(logging.getLogger().handlers)\n"
        "import amani_observability\n"
        "assert set(prometheus_client.REGISTRY._names_to_collectors) == before\n"
        "assert logging.getLogger().handlers == handlers\n"
        "assert not sentry_sdk.is_initialized()\n"
        "assert type(trace.get_tracer_provider()).__name__ == 'ProxyTracerProvider'\n"
        "print('clean')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "clean", result.stderr
