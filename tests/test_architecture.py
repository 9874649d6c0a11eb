"""The package's shape: a pinned public surface per module, internals underscored or in
private modules, and no import cycles, at runtime or for type checking."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import amani_observability

SOURCE = Path(amani_observability.__file__).parent

# Adding or removing a public name is a deliberate change: it is made here too.
SURFACES: dict[str, list[str]] = {
    "amani_observability": [
        "ConfigurationError", "ObservabilityError", "ObservabilitySettings", "__version__",
        "configure_logging", "get_request_id", "instrument",
    ],
    "amani_observability.alerts": [
        "ACTIONS", "OUTCOMES", "SEND_ACTIONS", "SEVERITIES", "Action", "Alert", "AlertChannel",
        "AlertDispatcher", "AlertResult", "Backoff", "ChannelRequest", "Outcome", "Severity",
        "get_dispatcher", "send_alert", "send_pagerduty_alert", "send_slack_alert",
    ],
    "amani_observability.assets": [
        "ALERT_RULES_FILE", "DEFAULT_JOB", "DEFAULT_MEMORY_LIMIT_BYTES", "DOCS_RUNBOOKS_URL",
        "GRAFANA_DASHBOARD_FILE", "KUBERNETES_FILES", "KubernetesOptions", "alert_names",
        "alert_rules", "check_job", "export_assets", "grafana_dashboard",
        "kubernetes_manifests", "runbook_url",
    ],
    "amani_observability.cli": ["main"],
    "amani_observability.exceptions": ["ConfigurationError", "ObservabilityError"],
    "amani_observability.logs": [
        "ACCESS_LOGGER", "AccessLog", "AccessLogMiddleware", "JSONFormatter", "PlainFormatter",
        "RequestContextFilter", "configure_logging",
    ],
    "amani_observability.metrics": [
        "MetricsEndpoint", "PrometheusMiddleware", "db_connections_active",
        "db_query_duration_seconds", "errors_total", "event_loop_lag_seconds",
        "event_loop_stalls_total", "http_request_duration_seconds", "http_requests_in_progress",
        "http_requests_total", "instrument_sqlalchemy", "mark_process_dead", "track_db_query",
    ],
    "amani_observability.request_id": [
        "RequestIDMiddleware", "current_request_id", "get_request_id", "new_request_id",
    ],
    "amani_observability.sentry": [
        "SentryMiddleware", "add_breadcrumb", "before_send_handler", "capture_exception",
        "flush_sentry", "http_status_of", "init_sentry",
    ],
    "amani_observability.settings": [
        "DEFAULT_BUCKETS", "ObservabilitySettings", "parse_buckets", "parse_otlp_headers",
    ],
    "amani_observability.slo": [
        "BURN_ALERTS", "RATE_WINDOWS", "RUNBOOK_PAGE", "SLO", "SLO_RULES_FILE", "BurnAlert",
        "SLOFile", "error_ratio_expr", "error_ratio_record", "load_slos", "parse_slos",
        "recorded_error_ratio", "slo_dashboard_panels", "slo_rules", "window_error_ratio_expr",
    ],
    "amani_observability.tracing": [
        "REQUEST_ID_ATTRIBUTE", "TracingMiddleware", "add_span_attributes", "get_tracer",
    ],
}  # fmt: skip
# Shared plumbing every concern may use; it uses no concern.
LEAVES = ("_asgi", "_correlation", "_lifecycle", "_pipeline")
CONCERNS = ("metrics", "tracing", "sentry", "alerts", "request_id", "logs", "cli", "slo")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, whether it is a package)."""
    found = {}
    for path in SOURCE.rglob("*.py"):
        parts = ["amani_observability", *path.relative_to(SOURCE).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def _imports(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere: at the top, under TYPE_CHECKING
    or inside a function. Importing `a.b` runs `a` first, so `a` counts too (but not a
    package a module itself belongs to: Python has imported it already)."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
                for alias in node.names:
                    submodule = f"{target}.{alias.name}"
                    imported = submodule if submodule in modules else target
                    parts = imported.split(".")
                    for end in range(2, len(parts) + 1):
                        ancestor = ".".join(parts[:end])
                        inside = name.startswith(ancestor + ".") and ancestor != imported
                        if ancestor in modules and ancestor != name and not inside:
                            graph[name].add(ancestor)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("amani_observability") for a in node.names), (
                    f"{name}: relative imports only"
                )
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                found.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                visit(imported)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


@pytest.mark.parametrize("module_name", sorted(SURFACES))
def test_each_public_module_exports_its_pinned_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__all__ == SURFACES[module_name]
    for name in module.__all__:
        assert hasattr(module, name), name


@pytest.mark.parametrize("module_name", sorted(SURFACES))
def test_what_a_public_module_defines_is_public_or_underscored(module_name: str) -> None:
    """Internals of a public module start with "_"; the rest of them live in private
    modules (names starting with "_") next to it."""
    module = importlib.import_module(module_name)
    defined = {
        name
        for name, value in vars(module).items()
        if (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == module_name
        and not name.startswith("_")
    }
    assert sorted(defined - set(module.__all__)) == []


def test_there_are_no_import_cycles() -> None:
    assert _cycles(_imports(_modules())) == []


def test_the_shared_plumbing_uses_no_concern() -> None:
    graph = _imports(_modules())
    used = {
        (leaf, imported.removeprefix("amani_observability."))
        for leaf in LEAVES
        for imported in graph[f"amani_observability.{leaf}"]
        if imported.removeprefix("amani_observability.").split(".")[0] in CONCERNS
    }
    assert used == set()


def test_a_cycle_is_found_where_there_is_one() -> None:
    """The check itself: a two-module cycle and a package importing its child that imports
    the package's names are both reported."""
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]
    assert _cycles({"p": {"p.c"}, "p.c": {"p"}, "q": set()}) == [["p", "p.c", "p"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
