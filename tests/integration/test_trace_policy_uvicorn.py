"""TRACE_CONTEXT_POLICY and TRACE_RESPONSE_HEADER under a real uvicorn, as exported to a
real OTLP/gRPC receiver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.support import OTLPReceiver, UvicornProcess
from tests.test_light_span import sdk_root_flags

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
INCOMING = {"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01", "baggage": "tenant=acme"}


def serve_traced(policy: str, tmp_path: Path) -> tuple[list[Any], list[httpx.Response]]:
    """The spans exported and the responses of one request with an incoming trace and one
    without, under `policy`."""
    with OTLPReceiver() as receiver:
        env = {
            "TRACING_ENABLED": "true",
            "OTLP_ENDPOINT": receiver.endpoint,
            "TRACE_CONTEXT_POLICY": policy,
            "TRACE_RESPONSE_HEADER": "true",
        }
        with UvicornProcess(
            "tests.integration.trace_policy_app:app",
            free_port(),
            env=env,
            log_path=tmp_path / "uvicorn.log",
        ) as server:
            responses = [
                httpx.get(server.base_url + "/items/1", headers=INCOMING),
                httpx.get(server.base_url + "/items/2"),
            ]
        # uvicorn has stopped: its lifespan shutdown flushed the batch processor.
        spans = sorted(receiver.spans(), key=lambda s: s.start_time_unix_nano)
    return spans, responses


def traceresponse_of(span: Any) -> str:
    # Sampled at TRACING_SAMPLE_RATE=1; OTLP does not carry the W3C flags, so they are spelt
    # out: the caller's 01 where its trace continues, else the SDK's own for a new trace.
    flags = "01" if span.trace_id.hex() == TRACE_ID else f"{sdk_root_flags():02x}"
    return f"00-{span.trace_id.hex()}-{span.span_id.hex()}-{flags}"


def links_of(span: Any) -> list[tuple[str, str]]:
    return [(link.trace_id.hex(), link.span_id.hex()) for link in span.links]


def test_continue_joins_the_callers_trace_and_keeps_its_baggage(tmp_path: Path) -> None:
    (incoming, fresh), (with_parent, without) = serve_traced("continue", tmp_path)
    assert (incoming.trace_id.hex(), incoming.parent_span_id.hex()) == (TRACE_ID, PARENT_SPAN_ID)
    assert links_of(incoming) == []
    assert with_parent.json() == {"item_id": 1, "baggage": {"tenant": "acme"}}
    assert with_parent.headers["traceresponse"] == traceresponse_of(incoming)
    assert without.headers["traceresponse"] == traceresponse_of(fresh)


def test_restart_starts_a_new_trace_linked_to_the_caller_without_its_baggage(
    tmp_path: Path,
) -> None:
    (incoming, fresh), (with_parent, without) = serve_traced("restart", tmp_path)
    assert incoming.trace_id.hex() != TRACE_ID
    assert incoming.parent_span_id == b""  # a root span
    assert links_of(incoming) == [(TRACE_ID, PARENT_SPAN_ID)]
    assert links_of(fresh) == []
    assert with_parent.json() == {"item_id": 1, "baggage": {}}
    assert with_parent.headers["traceresponse"] == traceresponse_of(incoming)
    assert without.headers["traceresponse"] == traceresponse_of(fresh)
    # Next to the request ID, in every response.
    assert list(with_parent.headers)[-2:] == ["traceresponse", "x-request-id"]


def test_ignore_starts_a_new_trace_without_a_link_or_baggage(tmp_path: Path) -> None:
    (incoming, _), (with_parent, _) = serve_traced("ignore", tmp_path)
    assert incoming.trace_id.hex() != TRACE_ID
    assert incoming.parent_span_id == b""
    assert links_of(incoming) == []
    assert with_parent.json() == {"item_id": 1, "baggage": {}}
    assert with_parent.headers["traceresponse"] == traceresponse_of(incoming)
