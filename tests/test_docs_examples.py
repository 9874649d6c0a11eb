"""Every ```python block in README.md and docs/**/*.md runs, so the documentation cannot rot.

The convention (also in docs/contributing.md):

- A fenced block tagged `python` is executed; tag anything else by its language (`bash`,
  `promql`, `yaml`, `json`, `text`, ...). A fence without a language, or tagged `py` or
  `python3`, fails the test, so an example cannot escape by accident. There is no skip
  marker: what cannot run is not Python.
- A page's blocks run in order in one namespace, like cells of a notebook, each in a fresh
  Python process per page (so one page's global state, such as a Sentry client, a tracer
  provider or logging handlers, can never leak into another page or into the other tests).
- Top-level `await` works (blocks are compiled with `ast.PyCF_ALLOW_TOP_LEVEL_AWAIT`); all the
  page's blocks share one event loop. Use `await`, not `asyncio.run()`, in examples.
  `__name__` is not "__main__", so `if __name__ == "__main__": uvicorn.run(...)` is inert.
- The working directory is an empty temporary directory. None of the library's environment
  variables are set except these, which point at a recording HTTP stand-in on 127.0.0.1:
  SENTRY_DSN, SLACK_WEBHOOK_URL, PAGERDUTY_API_KEY, PAGERDUTY_EVENTS_URL (answers 202),
  ALERT_WEBHOOK_URL, ALERTMANAGER_URL (two instances' base URLs); OTLP_ENDPOINT points at
  a closed loopback port. Examples read their
  settings from the environment (`ObservabilitySettings()`), as a service would.
- Warnings are errors, with the filters of [tool.pytest.ini_options] in pyproject.toml.
- A page gets PAGE_TIMEOUT seconds. Every request an example makes must reach one of the
  stand-in's paths; anything else (a typo in a URL, a DSN pointing elsewhere) fails the page.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import re
import subprocess
import sys
import threading
import types
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LIBRARY_PREFIXES, free_port

ROOT = Path(__file__).resolve().parent.parent
PAGE_TIMEOUT = 120
PAGERDUTY_API_KEY = "0123456789abcdef0123456789abcdef"
# The library's variables are cleared for the example process, whatever the caller has set.
OUR_PREFIXES = (*LIBRARY_PREFIXES, "BACKUP_")

PYTHON_ALIASES = frozenset({"python", "py", "py3", "python3"})
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    language: str
    line: int  # 1-based line of the first line of code, in the Markdown file
    source: str


def fenced_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, dedented to their fence's indentation."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        index += 1
        if opening is None:
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0]
        start, body = index, []
        while index < len(lines):
            line = lines[index]
            index += 1
            if line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
                break
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
        blocks.append(Block(language, start + 1, "\n".join(body) + "\n"))
    return blocks


def documentation_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]


def page_id(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


PAGES = documentation_pages()
PAGES_WITH_PYTHON = [
    page
    for page in PAGES
    if any(b.language == "python" for b in fenced_blocks(page.read_text("utf-8")))
]


# --- the recording stand-in for Sentry, Slack, PagerDuty and a generic webhook -------------


@dataclass
class Recorded:
    method: str
    path: str
    body: bytes


@dataclass
class StandIn:
    port: int
    requests: list[Recorded] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def unexpected(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests if _route(r.path) is None]


def _route(path: str) -> tuple[int, bytes, str] | None:
    """The stand-in's answer for a path: (status, body, content type), or None if unknown."""
    path = path.split("?", 1)[0]
    if path == "/slack":
        return 200, b"ok", "text/plain"
    if path == "/pagerduty":
        body = {"status": "success", "message": "Event processed", "dedup_key": "docs"}
        return 202, json.dumps(body).encode(), "application/json"
    if path in ("/webhook", "/am-0/api/v2/alerts", "/am-1/api/v2/alerts"):
        return 200, b"{}", "application/json"
    if path in ("/api/1/envelope/", "/api/1/store/"):  # Sentry, project 1
        return 200, b"{}", "application/json"
    return None


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server_port = free_port()
    recorder = StandIn(port=server_port)

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            recorder.requests.append(Recorded(self.command, self.path, body))
            status, payload, content_type = _route(self.path) or (404, b"not found", "text/plain")
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass  # recorded above; the test output stays readable

    server = ThreadingHTTPServer(("127.0.0.1", server_port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield recorder
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def example_environment(stand_in: StandIn) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(OUR_PREFIXES)}
    env.update(
        {
            "SENTRY_DSN": f"http://key@127.0.0.1:{stand_in.port}/1",
            "SLACK_WEBHOOK_URL": f"{stand_in.base}/slack",
            "PAGERDUTY_API_KEY": PAGERDUTY_API_KEY,
            "PAGERDUTY_EVENTS_URL": f"{stand_in.base}/pagerduty",
            "ALERT_WEBHOOK_URL": f"{stand_in.base}/webhook",
            "ALERTMANAGER_URL": f"{stand_in.base}/am-0,{stand_in.base}/am-1",
            # Nothing listens there: exporting fails, which must not break an example.
            "OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


# --- the tests -------------------------------------------------------------------------------


def run_examples(page: Path, stand_in: StandIn, cwd: Path) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-m", "tests.test_docs_examples", str(page)],
            cwd=cwd,
            env=example_environment(stand_in),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=PAGE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{page}: examples still running after {PAGE_TIMEOUT} s\n{exc}")


@pytest.mark.parametrize("page", PAGES_WITH_PYTHON, ids=page_id)
def test_python_examples_run(page: Path, stand_in: StandIn, tmp_path: Path) -> None:
    """The page's Python blocks run, in order, in one namespace, without an error."""
    result = run_examples(page, stand_in, tmp_path)

    output = (result.stdout + result.stderr)[-8000:]
    assert result.returncode == 0, f"{page_id(page)} examples failed:\n{output}"
    assert stand_in.unexpected() == [], "requests to paths the stand-in does not serve"


def test_examples_reach_the_stand_in_through_the_environment(
    stand_in: StandIn, tmp_path: Path
) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nimport os\n\nimport httpx\n\n"
        "async with httpx.AsyncClient() as client:\n"
        "    pd = await client.post(os.environ['PAGERDUTY_EVENTS_URL'], json={'a': 1})\n"
        "    slack = await client.post(os.environ['SLACK_WEBHOOK_URL'], content=b'hi')\n"
        "    typo = await client.get(os.environ['ALERT_WEBHOOK_URL'] + 'x')\n"
        "assert (pd.status_code, slack.status_code, typo.status_code) == (202, 200, 404)\n"
        "assert len(os.environ['PAGERDUTY_API_KEY']) == 32\n"
        "assert 'LOG_LEVEL' not in os.environ\n"
        "```\n",
        encoding="utf-8",
    )

    result = run_examples(page, stand_in, tmp_path)

    assert result.returncode == 0, result.stderr
    assert [(r.method, r.path, r.body) for r in stand_in.requests] == [
        ("POST", "/pagerduty", b'{"a":1}'),
        ("POST", "/slack", b"hi"),
        ("GET", "/webhookx", b""),
    ]
    assert stand_in.unexpected() == ["GET /webhookx"]


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_fence_names_its_language(page: Path) -> None:
    """An untagged fence would hide a Python example from the docs test: tag every block."""
    blocks = fenced_blocks(page.read_text("utf-8"))
    untagged = [b.line - 1 for b in blocks if not b.language]
    assert untagged == [], f"{page_id(page)}: fences without a language on lines {untagged}"
    # Only `python` runs: another spelling would silently leave an example untested.
    aliases = [
        b.line - 1
        for b in blocks
        if b.language != "python" and b.language.lower() in PYTHON_ALIASES
    ]
    assert aliases == [], f"{page_id(page)}: tag Python blocks `python` (lines {aliases})"


PAGES_WITH_YAML = [
    page
    for page in PAGES
    if any(b.language in ("yaml", "yml") for b in fenced_blocks(page.read_text("utf-8")))
]


def yaml_documents(page: Path) -> list[Any]:
    """Every document of every ```yaml block of a page, parsed."""
    import yaml

    blocks = fenced_blocks(page.read_text("utf-8"))
    return [
        document
        for block in blocks
        if block.language in ("yaml", "yml")
        for document in yaml.safe_load_all(block.source)
    ]


@pytest.mark.parametrize("page", PAGES_WITH_YAML, ids=page_id)
def test_yaml_examples_parse(page: Path) -> None:
    """A YAML block that does not parse would fail on the reader's `kubectl apply`."""
    import yaml

    for block in fenced_blocks(page.read_text("utf-8")):
        if block.language in ("yaml", "yml"):
            try:
                documents = list(yaml.safe_load_all(block.source))
            except yaml.YAMLError as exc:
                pytest.fail(f"{page_id(page)}:{block.line}: {exc}")
            assert all(isinstance(document, dict) for document in documents), block.line


def test_the_kubernetes_page_keeps_probes_out_of_the_signals_and_lists_every_alertmanager() -> None:
    """The Deployment's probe paths are excluded, by the library's own settings, from
    metrics, access log, traces and Sentry; ALERTMANAGER_URL names each Alertmanager pod;
    the Collector pipeline batches, retries and tail-samples."""
    from amani_observability import ObservabilitySettings
    from amani_observability._asgi import compile_paths

    page = ROOT / "docs" / "kubernetes.md"
    documents = {doc.get("kind", "collector"): doc for doc in yaml_documents(page)}
    pod = documents["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    settings = ObservabilitySettings(
        **{
            name.lower(): value
            for name, value in env.items()
            if value is not None and (name.lower() in ObservabilitySettings.model_fields)
        }
    )
    probes = [container[probe]["httpGet"]["path"] for probe in ("livenessProbe", "readinessProbe")]
    assert probes == ["/health", "/ready"]
    for excluded in (
        settings.metrics_excluded_paths,
        settings.access_log_excluded_paths,
        settings.tracing_excluded_paths,
        settings.sentry_excluded_paths,
    ):
        assert [compile_paths(excluded)(path) for path in probes] == [True, True], excluded
    assert env["PROMETHEUS_MULTIPROC_DIR"] == container["volumeMounts"][0]["mountPath"]
    assert pod["volumes"][0]["emptyDir"]["medium"] == "Memory"
    assert pod["terminationGracePeriodSeconds"] == 45
    alertmanager = documents["Alertmanager"]
    assert settings.alertmanager_url == [
        f"http://alertmanager-{alertmanager['metadata']['name']}-{n}.alertmanager-operated."
        f"{alertmanager['metadata']['namespace']}.svc:9093"
        for n in range(alertmanager["spec"]["replicas"])
    ]
    collector = documents["collector"]
    assert settings.otlp_endpoint == "http://otel-gateway.observability.svc:4317"
    assert collector["service"]["pipelines"]["traces"] == {
        "receivers": ["otlp"],
        "processors": ["memory_limiter", "tail_sampling", "batch"],
        "exporters": ["otlp"],
    }
    assert collector["exporters"]["otlp"]["retry_on_failure"]["enabled"] is True
    service = documents["Service"]
    assert service["spec"]["ports"][0]["name"] == container["ports"][0]["name"] == "http"


def test_fenced_blocks_keep_markdown_line_numbers_and_dedent_list_items() -> None:
    text = (
        "# t\n\n```python\nx = 1\n```\n\n1. item\n\n"
        "   ```bash\n   echo hi\n   ```\n~~~\nplain\n~~~\n"
    )

    assert fenced_blocks(text) == [
        Block("python", 4, "x = 1\n"),
        Block("bash", 10, "echo hi\n"),
        Block("", 13, "plain\n"),
    ]


def test_runner_supports_top_level_await_and_shares_the_namespace(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nimport asyncio\nvalue = await asyncio.sleep(0, result=41)\n```\n"
        "text\n\n```python\nvalue += 1\nassert __name__ != '__main__'\n```\n"
        "```python\nassert value == 42, value\nraise RuntimeError('boom')\n```\n",
        encoding="utf-8",
    )

    result = subprocess.run(
        [sys.executable, "-m", "tests.test_docs_examples", str(page)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 1
    # The traceback points at the Markdown file and line, and shows the line.
    assert f'File "{page}", line 13' in result.stderr
    assert "raise RuntimeError('boom')" in result.stderr
    assert result.stderr.rstrip().endswith("RuntimeError: boom")


# --- the runner, executed in a fresh process per page ----------------------------------------


def _apply_pytest_warning_filters() -> None:
    """Warnings are errors, as under pytest, with the project's declared exceptions."""
    from _pytest.config import parse_warning_filter

    try:
        import tomllib
    except ImportError:  # Python 3.10: no TOML reader in the standard library
        warnings.simplefilter("error")
        return
    config = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    filters = config["tool"]["pytest"]["ini_options"].get("filterwarnings", ["error"])
    for spec in filters:
        warnings.filterwarnings(*parse_warning_filter(spec, escape=False))


def run_page(page: Path) -> None:
    """Execute a page's Python blocks in order, in one module namespace and one event loop."""
    _apply_pytest_warning_filters()
    blocks = [b for b in fenced_blocks(page.read_text("utf-8")) if b.language == "python"]
    # A real module, so that pydantic, dataclasses and FastAPI can resolve annotations.
    module = types.ModuleType("docs_example")
    module.__file__ = str(page)
    sys.modules[module.__name__] = module
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        for block in blocks:
            # Padding keeps line numbers those of the Markdown file, so a traceback (which
            # reads the .md through linecache) shows the failing line of the page itself.
            source = "\n" * (block.line - 1) + block.source
            code = compile(
                source, str(page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
            )
            if code.co_flags & inspect.CO_COROUTINE:
                loop.run_until_complete(eval(code, module.__dict__))
            else:
                exec(code, module.__dict__)
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


if __name__ == "__main__":
    run_page(Path(sys.argv[1]))
