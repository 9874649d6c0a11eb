"""PrometheusMiddleware and MetricsEndpoint: exact samples through real FastAPI apps."""

from __future__ import annotations

import asyncio
import base64
import gzip
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, BackgroundTasks, FastAPI
from fastapi.responses import StreamingResponse
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from amani_observability import ObservabilitySettings, instrument
from amani_observability._asgi import KNOWN_METHODS, UNMATCHED_ROUTE
from amani_observability._correlation import set_trace_ids_getter
from amani_observability.metrics._middleware import MetricsEndpoint
from tests.conftest import require_binary
from tests.support import call_asgi, http_scope, response_headers

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


def settings(**values: Any) -> ObservabilitySettings:
    return ObservabilitySettings(log_json=False, access_log_enabled=False, **values)


def requests_total(method: str, endpoint: str, status: str) -> float | None:
    labels = {"method": method, "endpoint": endpoint, "status": status}
    return REGISTRY.get_sample_value("http_requests_total", labels)


def duration(method: str, endpoint: str, suffix: str = "count") -> float | None:
    return REGISTRY.get_sample_value(
        f"http_request_duration_seconds_{suffix}", {"method": method, "endpoint": endpoint}
    )


def series(name: str) -> set[tuple[tuple[str, str], ...]]:
    """The label sets of every sample called `name` in the default registry."""
    found = set()
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == name:
                found.add(tuple(sorted(sample.labels.items())))
    return found


def in_progress_total() -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "http_requests_in_progress":
                total += sample.value
    return total


def build_app(**values: Any) -> FastAPI:
    app = FastAPI(telemetry={"tracing": False})
    api = APIRouter(prefix="/api/v1")
    seen_in_background: list[float] = []
    app.state.seen_in_background = seen_in_background

    @api.get("/items/{item_id}")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/boom")
    async def boom() -> None:
        raise LookupError("no such thing")

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for part in (b"a", b"b", b"c"):
                await asyncio.sleep(0.1)
                yield part

        return StreamingResponse(chunks(), media_type="text/plain")

    @app.get("/background")
    async def background(tasks: BackgroundTasks) -> dict[str, str]:
        async def slow_task() -> None:
            seen_in_background.append(in_progress_total())
            await asyncio.sleep(0.3)

        tasks.add_task(slow_task)
        return {"queued": "yes"}

    sub = FastAPI(telemetry={"tracing": False})

    @sub.get("/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"thing_id": thing_id}

    app.include_router(api)
    app.mount("/sub", sub)
    return instrument(app, settings(**values))


def client(app: Any) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_matched_route_counts_under_its_template() -> None:
    async with client(build_app()) as http:
        responses = [await http.get(f"/api/v1/items/{n}") for n in (1, 2, 3)]

    assert [r.status_code for r in responses] == [200, 200, 200]
    assert requests_total("GET", "/api/v1/items/{item_id}", "200") == 3.0
    assert duration("GET", "/api/v1/items/{item_id}") == 3.0
    assert series("http_requests_total") == {
        (("endpoint", "/api/v1/items/{item_id}"), ("method", "GET"), ("status", "200"))
    }
    assert in_progress_total() == 0.0


async def test_mounted_sub_app_route_carries_the_mount_prefix() -> None:
    async with client(build_app()) as http:
        response = await http.get("/sub/things/abc")

    assert response.status_code == 200
    assert requests_total("GET", "/sub/things/{thing_id}", "200") == 1.0


async def test_starlette_mounts_give_full_templates_and_in_progress_predictions() -> None:
    seen: list[tuple[tuple[str, str], ...]] = []

    async def user(request: Any) -> PlainTextResponse:
        seen.extend(
            labels
            for labels in series("http_requests_in_progress")
            if REGISTRY.get_sample_value("http_requests_in_progress", dict(labels)) == 1.0
        )
        return PlainTextResponse(str(request.path_params["user_id"]))

    async def files(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("file")(scope, receive, send)

    app = Starlette(
        routes=[
            Mount("/v2", routes=[Route("/users/{user_id:int}", user)]),
            Mount("/files", app=files),
        ]
    )
    async with client(instrument(app, settings())) as http:
        assert (await http.get("/v2/users/7")).text == "7"
        assert (await http.get("/files/a/b.txt")).text == "file"

    assert requests_total("GET", "/v2/users/{user_id}", "200") == 1.0
    assert requests_total("GET", "/files/{path}", "200") == 1.0
    # While the handler ran, the gauge already knew its route.
    assert seen == [(("endpoint", "/v2/users/{user_id}"), ("method", "GET"))]
    assert in_progress_total() == 0.0


async def test_unmatched_paths_share_one_series() -> None:
    async with client(build_app()) as http:
        for path in ("/wp-admin", "/.env", "/api/v1/items/1/extra", "/nope"):
            assert (await http.get(path)).status_code == 404

    assert requests_total("GET", UNMATCHED_ROUTE, "404") == 4.0
    assert series("http_requests_total") == {
        (("endpoint", UNMATCHED_ROUTE), ("method", "GET"), ("status", "404"))
    }


async def test_excluded_paths_and_the_metrics_path_are_not_measured() -> None:
    async with client(build_app(metrics_excluded_paths="/health,/api/v1/items/.*")) as http:
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/api/v1/items/9")).status_code == 200
        assert (await http.get("/metrics")).status_code == 200
        assert (await http.get("/boom")).status_code == 500

    assert series("http_requests_total") == {
        (("endpoint", "/boom"), ("method", "GET"), ("status", "500"))
    }
    assert series("http_request_duration_seconds_count") == {
        (("endpoint", "/boom"), ("method", "GET"))
    }


async def test_streaming_response_is_measured_to_its_last_chunk() -> None:
    async with client(build_app()) as http:
        response = await http.get("/stream")

    assert response.text == "abc"
    assert requests_total("GET", "/stream", "200") == 1.0
    assert duration("GET", "/stream") == 1.0
    assert duration("GET", "/stream", "sum") >= 0.3  # three chunks 0.1 s apart


async def test_background_task_time_is_not_request_latency() -> None:
    app = build_app()
    async with client(app) as http:
        started = time.perf_counter()
        response = await http.get("/background")
        whole_call = time.perf_counter() - started

    assert response.json() == {"queued": "yes"}
    assert whole_call >= 0.3  # the transport waited for the background task ...
    assert duration("GET", "/background", "sum") < 0.2  # ... the histogram did not
    assert requests_total("GET", "/background", "200") == 1.0
    # While the task ran, the request no longer counted as in progress.
    assert app.state.seen_in_background == [0.0]


async def test_unhandled_exception_is_a_500_and_an_error_by_class_name() -> None:
    async with client(build_app()) as http:
        response = await http.get("/boom")

    assert response.status_code == 500
    assert requests_total("GET", "/boom", "500") == 1.0
    assert (
        REGISTRY.get_sample_value(
            "errors_total", {"error_type": "LookupError", "endpoint": "/boom"}
        )
        == 1.0
    )
    assert in_progress_total() == 0.0


async def test_exception_before_any_response_is_counted_500_and_reraised_unchanged() -> None:
    error = RuntimeError("bare app failed")

    async def bare_app(scope: Any, receive: Any, send: Any) -> None:
        raise error

    app = instrument(bare_app, settings(request_id_enabled=False))
    with pytest.raises(RuntimeError) as raised:
        await call_asgi(app, http_scope("/anything"))

    assert raised.value is error
    assert requests_total("GET", UNMATCHED_ROUTE, "500") == 1.0
    assert (
        REGISTRY.get_sample_value(
            "errors_total", {"error_type": "RuntimeError", "endpoint": UNMATCHED_ROUTE}
        )
        == 1.0
    )


async def test_head_and_options_are_labelled_with_their_own_method() -> None:
    async def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    starlette_app = instrument(Starlette(routes=[Route("/hello", hello)]), settings())
    async with client(starlette_app) as http:
        head = await http.head("/hello")
        options = await http.options("/hello")
    async with client(build_app()) as http:
        fastapi_head = await http.head("/api/v1/items/1")

    # Starlette answers HEAD for GET routes; neither answers OPTIONS without CORS;
    # FastAPI routes declare GET only, so HEAD is a 405 there.
    assert (head.status_code, options.status_code, fastapi_head.status_code) == (200, 405, 405)
    assert requests_total("HEAD", "/hello", "200") == 1.0
    assert requests_total("OPTIONS", "/hello", "405") == 1.0
    assert requests_total("HEAD", "/api/v1/items/{item_id}", "405") == 1.0


async def test_client_disconnect_during_a_stream_is_recorded_not_an_error() -> None:
    app = build_app(request_id_enabled=False)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            raise OSError("client went away")  # what ASGI servers raise (spec 2.4)
        sent.append(message)

    scope = http_scope("/stream", asgi={"version": "3.0", "spec_version": "2.4"})
    # Starlette >= 0.42 turns the server's OSError into ClientDisconnect (ASGI spec 2.4);
    # older releases let it out of their streaming task group.
    if sys.version_info >= (3, 11):
        group = BaseExceptionGroup  # noqa: F821 (a builtin from 3.11)
    else:  # pragma: no cover
        from exceptiongroup import BaseExceptionGroup as group
    with pytest.raises((ClientDisconnect, group)) as raised:
        await app(scope, receive, send)
    if isinstance(raised.value, group):
        assert [type(each) for each in raised.value.exceptions] == [OSError]

    assert [m["type"] for m in sent] == ["http.response.start"]
    assert requests_total("GET", "/stream", "200") == 1.0
    assert series("errors_total") == set()
    assert in_progress_total() == 0.0


async def test_unknown_methods_and_random_paths_keep_the_series_count_bounded() -> None:
    """5,000 scanner-like requests produce one series per normalised method, no more."""
    app = build_app(request_id_enabled=False)
    rng = random.Random(20260101)
    methods = [*sorted(KNOWN_METHODS), "PROPFIND", "BREW", "X-SCAN", "get"]
    deadline = time.monotonic() + 60
    for n in range(5000):
        assert time.monotonic() < deadline, f"only {n} requests in 60 s"
        path = "/" + "/".join(f"{rng.getrandbits(40):x}" for _ in range(rng.randint(1, 4)))
        method = rng.choice(methods)
        messages = await call_asgi(app, http_scope(path, method=method))
        assert messages[0]["status"] == 404

    expected = {
        (("endpoint", UNMATCHED_ROUTE), ("method", m), ("status", "404"))
        for m in [*KNOWN_METHODS, "_OTHER"]
    }
    assert series("http_requests_total") == expected
    total = sum(
        requests_total(m, UNMATCHED_ROUTE, "404") or 0.0 for m in [*KNOWN_METHODS, "_OTHER"]
    )
    assert total == 5000.0
    assert len(series("http_request_duration_seconds_count")) == 10
    assert len(series("http_requests_in_progress")) == 10


async def test_duration_observations_carry_the_trace_as_exemplar() -> None:
    set_trace_ids_getter(lambda: (TRACE_ID, SPAN_ID))
    async with client(build_app()) as http:
        await http.get("/api/v1/items/1")
        scrape = await http.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )

    exemplars = [
        sample.exemplar.labels
        for metric in REGISTRY.collect()
        for sample in metric.samples
        if sample.name == "http_request_duration_seconds_bucket" and sample.exemplar
    ]
    assert exemplars == [{"trace_id": TRACE_ID, "span_id": SPAN_ID}]
    exemplar_lines = [line for line in scrape.text.splitlines() if " # {" in line]
    assert len(exemplar_lines) == 1
    assert exemplar_lines[0].startswith('http_request_duration_seconds_bucket{endpoint="/api')
    assert f'# {{span_id="{SPAN_ID}",trace_id="{TRACE_ID}"}}' in exemplar_lines[0]


async def test_without_a_sampled_trace_there_is_no_exemplar() -> None:
    set_trace_ids_getter(lambda: None)
    async with client(build_app()) as http:
        await http.get("/api/v1/items/1")

    assert [s for m in REGISTRY.collect() for s in m.samples if s.exemplar is not None] == []


async def test_configured_buckets_shape_the_duration_histogram() -> None:
    async with client(build_app(metrics_buckets="0.5,1,2")) as http:
        await http.get("/health")

    buckets = {
        s.labels["le"]
        for m in REGISTRY.collect()
        for s in m.samples
        if s.name == "http_request_duration_seconds_bucket"
    }
    assert buckets == {"0.5", "1.0", "2.0", "+Inf"}


async def test_metrics_disabled_serves_no_endpoint_and_measures_nothing() -> None:
    async with client(build_app(metrics_enabled=False)) as http:
        assert (await http.get("/metrics")).status_code == 404
        await http.get("/health")

    assert series("http_requests_total") == set()


async def test_several_apps_in_one_process_share_the_catalogue() -> None:
    """Building and instrumenting apps repeatedly never raises 'Duplicated timeseries'."""
    apps = [build_app() for _ in range(3)]
    for app in apps:
        async with client(app) as http:
            await http.get("/health")

    assert requests_total("GET", "/health", "200") == 3.0


# --- /metrics ---------------------------------------------------------------------------


async def test_metrics_endpoint_speaks_classic_text_by_default() -> None:
    async with client(build_app()) as http:
        await http.get("/health")
        response = await http.get("/metrics", headers={"accept-encoding": "identity"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "content-encoding" not in response.headers
    assert (
        'http_requests_total{endpoint="/health",method="GET",status="200"} 1.0'
        in response.text.splitlines()
    )


async def test_metrics_endpoint_speaks_openmetrics_when_asked() -> None:
    from prometheus_client.exposition import choose_encoder

    accept = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
    async with client(build_app()) as http:
        response = await http.get("/metrics", headers={"accept": accept})

    # prometheus-client >= 0.22 adds "; escaping=underscores"; the header is the client's.
    assert response.headers["content-type"] == choose_encoder(accept)[1]
    assert response.headers["content-type"].startswith(
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )
    assert response.text.endswith("# EOF\n")


async def test_metrics_endpoint_gzips_when_the_scraper_allows_it() -> None:
    async with client(build_app()) as http:
        await http.get("/health")
        response = await http.get("/metrics", headers={"accept-encoding": "gzip"})
        refused = await http.get("/metrics", headers={"accept-encoding": "gzip;q=0"})

    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) < len(response.content)
    assert response.text == gzip.decompress(gzip.compress(response.content)).decode()
    assert "content-encoding" not in refused.headers


async def test_head_on_metrics_has_headers_but_no_body_and_post_is_refused() -> None:
    async with client(build_app()) as http:
        head = await http.head("/metrics", headers={"accept-encoding": "identity"})
        post = await http.post("/metrics")

    assert (head.status_code, head.content) == (200, b"")
    assert int(head.headers["content-length"]) > 0
    assert (post.status_code, post.headers["allow"]) == (405, "GET, HEAD")


async def test_a_service_own_metrics_appear_on_the_same_endpoint() -> None:
    payment_failures = Counter(
        "payment_failures_total",
        "Payment processing failures",
        ["payment_provider", "error_type"],
    )
    try:
        payment_failures.labels(payment_provider="fincra", error_type="timeout").inc()
        async with client(build_app()) as http:
            response = await http.get("/metrics", headers={"accept-encoding": "identity"})
    finally:
        REGISTRY.unregister(payment_failures)

    line = 'payment_failures_total{error_type="timeout",payment_provider="fincra"} 1.0'
    assert line in response.text.splitlines()


async def test_metrics_path_is_configurable_and_not_in_the_openapi_schema() -> None:
    async with client(build_app(metrics_path="/internal/prometheus")) as http:
        moved = await http.get("/internal/prometheus")
        old = await http.get("/metrics")
        schema = (await http.get("/openapi.json")).json()

    assert moved.status_code == 200
    assert old.status_code == 404
    assert "/internal/prometheus" not in schema["paths"]
    assert requests_total("GET", UNMATCHED_ROUTE, "404") == 1.0


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        (basic("scraper", "s3cret"), 200),
        (basic("scraper", "wrong"), 401),
        (basic("other", "s3cret"), 401),
        ("Basic not-base64!", 401),
        ("Bearer t0ken-abc", 200),
        ("bearer t0ken-abc", 200),
        ("Bearer t0ken-abd", 401),
        ("Digest whatever", 401),
    ],
)
async def test_protected_metrics_need_basic_or_bearer_credentials(
    authorization: str | None, status: int
) -> None:
    app = build_app(
        metrics_username="scraper", metrics_password="s3cret", metrics_bearer_token="t0ken-abc"
    )
    headers = {} if authorization is None else {"authorization": authorization}
    async with client(app) as http:
        response = await http.get("/metrics", headers=headers)

    assert response.status_code == status
    if status == 401:
        assert response.headers.get_list("www-authenticate") == [
            'Basic realm="metrics", charset="UTF-8"',
            'Bearer realm="metrics"',
        ]
        assert "s3cret" not in response.text
        assert "t0ken" not in response.text


def test_bearer_only_protection_challenges_with_bearer() -> None:
    endpoint = MetricsEndpoint(bearer_token="abc")
    messages = asyncio.run(call_asgi(endpoint, http_scope("/metrics")))

    assert messages[0]["status"] == 401
    assert response_headers(messages)["www-authenticate"] == 'Bearer realm="metrics"'


def test_exposition_passes_promtool_check_metrics() -> None:
    promtool = require_binary("promtool")

    async def scrape() -> bytes:
        set_trace_ids_getter(lambda: (TRACE_ID, SPAN_ID))
        async with client(build_app()) as http:
            await http.get("/api/v1/items/1")
            await http.get("/nope")
            await http.get("/boom")
            await http.request("BREW", "/coffee")
            response = await http.get("/metrics", headers={"accept-encoding": "identity"})
        return response.content

    text = asyncio.run(scrape())
    assert b'http_requests_total{endpoint="/boom",method="GET",status="500"} 1.0' in text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=30
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_render_of_a_private_registry_matches_generate_latest() -> None:
    from prometheus_client import generate_latest

    registry = CollectorRegistry()
    counter = Counter("things_total", "Things.", ["kind"], registry=registry)
    counter.labels("a").inc(3)
    body, content_type, gzipped = MetricsEndpoint(registry=registry).render()

    assert (body, content_type, gzipped) == (
        generate_latest(registry),
        "text/plain; version=0.0.4; charset=utf-8",
        False,
    )


async def test_behind_a_root_path_the_metrics_path_and_templates_are_app_relative() -> None:
    app = build_app()
    scope = http_scope("/prefix/api/v1/items/5", root_path="/prefix")
    messages = await call_asgi(app, scope)
    scrape = await call_asgi(app, http_scope("/prefix/metrics", root_path="/prefix"))

    assert (messages[0]["status"], scrape[0]["status"]) == (200, 200)
    assert requests_total("GET", "/api/v1/items/{item_id}", "200") == 1.0
    assert b'endpoint="/api/v1/items/{item_id}"' in scrape[1]["body"]


async def test_the_middleware_alone_uses_the_catalogue_and_serves_metrics() -> None:
    from amani_observability.metrics import PrometheusMiddleware

    async def hello(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("hi", status_code=202)(scope, receive, send)

    app = PrometheusMiddleware(hello)
    answered = await call_asgi(app, http_scope("/hello", method="POST"))
    scrape = await call_asgi(app, http_scope("/metrics"))

    assert answered[0]["status"] == 202
    assert requests_total("POST", UNMATCHED_ROUTE, "202") == 1.0
    assert scrape[0]["status"] == 200


async def test_multiproc_dir_set_too_late_warns_and_serves_this_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from amani_observability.metrics._concern import MULTIPROC_TOO_LATE

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    try:
        async with client(build_app()) as http:
            await http.get("/health")
            scrape = await http.get("/metrics", headers={"accept-encoding": "identity"})
    finally:
        # Before the registry reset, which prometheus_client refuses in multiprocess mode.
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")

    assert [r.getMessage() for r in caplog.records if r.name == "amani_observability.metrics"] == [
        MULTIPROC_TOO_LATE
    ]
    line = 'http_requests_total{endpoint="/health",method="GET",status="200"} 1.0'
    assert line in scrape.text.splitlines()


async def test_an_exemplar_prometheus_refuses_still_records_the_observation() -> None:
    set_trace_ids_getter(lambda: ("f" * 100, "e" * 100))  # over the 128-character limit
    async with client(build_app()) as http:
        assert (await http.get("/health")).status_code == 200

    assert duration("GET", "/health") == 1.0
    assert requests_total("GET", "/health", "200") == 1.0


async def test_pathsend_is_the_final_message_of_a_file_response() -> None:
    async def send_file(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.pathsend", "path": "/etc/hostname"})
        await asyncio.sleep(0.3)  # a background task after the response

    app = instrument(send_file, settings(request_id_enabled=False))
    messages = await call_asgi(app, http_scope("/download"))

    assert [m["type"] for m in messages] == ["http.response.start", "http.response.pathsend"]
    assert requests_total("GET", UNMATCHED_ROUTE, "200") == 1.0
    assert duration("GET", UNMATCHED_ROUTE, "sum") < 0.2


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/items/3", "/items/{item_id}"),
        ("/items/orders", "/{tenant}/orders"),  # not an int: the next route, as in the router
        ("/acme/orders", "/{tenant}/orders"),
        ("/prices/1.5", "/prices/{amount}"),
        ("/prices/x", UNMATCHED_ROUTE),
        ("/files/a/b/c.txt", "/files/{path}"),
        ("/", "/"),
        ("/items", UNMATCHED_ROUTE),
        ("/acme/invoices", UNMATCHED_ROUTE),
    ],
)
def test_in_progress_route_prediction_follows_the_route_table(path: str, template: str) -> None:
    from amani_observability.metrics._middleware import _RoutePredictor

    async def endpoint(request: Any) -> PlainTextResponse:
        return PlainTextResponse("")

    app = Starlette(
        routes=[
            Route("/", endpoint),
            Route("/items/{item_id:int}", endpoint),
            Route("/{tenant}/orders", endpoint),
            Route("/prices/{amount:float}", endpoint),
            Mount("/files", app=endpoint),
        ]
    )

    assert _RoutePredictor().predict(app, path) == template


async def test_an_unreadable_route_table_degrades_the_gauge_not_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from amani_observability._routes import ROUTE_TABLE_UNREADABLE

    class Exotic:
        @property
        def path(self) -> str:
            raise RuntimeError("computed elsewhere")

    app = build_app()
    app.router.routes.append(Exotic())
    async with client(app) as http:
        response = await http.get("/api/v1/items/1")

    assert response.status_code == 200
    assert requests_total("GET", "/api/v1/items/{item_id}", "200") == 1.0
    assert series("http_requests_in_progress") == {
        (("endpoint", UNMATCHED_ROUTE), ("method", "GET"))
    }
    assert [r.getMessage() for r in caplog.records if r.name == "amani_observability.routes"] == [
        ROUTE_TABLE_UNREADABLE
    ]
