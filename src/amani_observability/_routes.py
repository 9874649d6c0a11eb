"""The route template of a request, from the application's own router, on every Starlette.

Starlette >= 1.7 (and FastAPI's `APIRoute` on every release) leave the matched route in
`scope["route"]`; every Starlette release leaves the matched endpoint in
`scope["endpoint"]`. Neither gives the full template of a route below a `Mount` or below a
router included with a prefix (`root_path` grows by the raw values, `/orgs/acme`), so each
application's route table is walked once into an index from route object and from endpoint
to the full template. A request then costs a dictionary look-up; a route or endpoint found
in more than one place (one router mounted under two prefixes) is told apart by matching
the path against each place's template. Unknown routes are never labelled by their path.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

import starlette
from starlette.convertors import CONVERTOR_TYPES
from starlette.routing import Host, Mount

logger = logging.getLogger("amani_observability.routes")


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


# Starlette >= 1.7 sets scope["route"] for every route; older ones leave only the endpoint
# (FastAPI's APIRoute sets it itself). Both are read either way: this says which is common.
ROUTER_SETS_ROUTE = _release(starlette.__version__) >= (1, 7)

ROUTE_TABLE_UNREADABLE = (
    "Could not read the application's routes; its requests are labelled by the route "
    "Starlette reports, without mount prefixes, or as unmatched"
)

# (the application whose routes are consulted, root_path at entry, and the route and
# endpoint the scope already held at entry: set by an outer router, not by this app's).
RouteEntry = tuple[Any, str, Any, Any]

# How deep Mounts are followed: deeper trees are someone's mistake, not an application.
_MAX_DEPTH = 8
# Applications whose route index is kept (tests build many; services have one or two).
_MAX_TABLES = 64
# Routes and endpoints remembered as absent from their application's index.
_MAX_UNKNOWN = 1024


def route_entry(scope: Any, app: Any) -> RouteEntry:
    """What route_template() needs to know about the request when it enters our layer.

    `app` is the application the layer wraps, used when the scope names none (an app
    instrumented outside of Starlette's own middleware stack).
    """
    return (
        scope.get("app") or app,
        scope.get("root_path", ""),
        scope.get("route"),
        scope.get("endpoint"),
    )


def route_template(scope: Any, entry: RouteEntry) -> str | None:
    """The full template of the route that handled this scope; None when none matched.

    Read after the application returned, from what its router left in the scope.
    """
    app, root_path, route_at_entry, endpoint_at_entry = entry
    route = scope.get("route")
    if route is route_at_entry:
        route = None
    endpoint = scope.get("endpoint")
    if endpoint is endpoint_at_entry:
        endpoint = None
    if route is None and endpoint is None:
        return None
    held = _tables.tables.get(id(app))
    table = held[1] if held is not None and held[0] is app else _tables.build(app)
    if table is not None:
        places = table.places(route, endpoint)
        if places is not None and len(places) == 1:
            return places[0][0]  # the common case: one look-up, no matching
        template = _tables.template(app, route, endpoint, _relative(scope["path"], root_path))
        if template is not None:
            return template
    # A route outside the application's table (a router of the service's own making):
    # its own template, which at least never holds a path value.
    path_format = getattr(route, "path_format", None)
    return path_format if isinstance(path_format, str) else None


def _relative(path: str, root_path: str) -> str:
    if root_path and path.startswith(root_path):
        return path[len(root_path) :]
    return path


# A place a route is found at: its full template and the matcher of its full path.
_Place = tuple[str, Callable[[str], "re.Match[str] | None"]]


class _Table:
    """One application's routes: route object and endpoint to the places they are found."""

    __slots__ = ("by_endpoint", "by_route", "keep", "ordered")

    def __init__(self, routes: list[Any]) -> None:
        self.by_route: dict[int, list[_Place]] = {}
        self.by_endpoint: dict[int, list[_Place]] = {}
        # The keyed objects, alive as long as the table, so that their ids stay theirs.
        self.keep: list[Any] = []
        # (template, regex of the full path) of every place, in the order the router tries.
        self.ordered: list[tuple[str, str]] = []
        _walk(routes, "", "", self, 0)

    def add(self, route: Any, endpoint: Any, template: str, regex: str) -> None:
        self.ordered.append((template, regex))
        place: _Place = (template, re.compile(regex).fullmatch)
        self.by_route.setdefault(id(route), []).append(place)
        self.keep.append(route)
        if endpoint is not None:
            self.by_endpoint.setdefault(id(endpoint), []).append(place)
            self.keep.append(endpoint)

    def places(self, route: Any, endpoint: Any) -> list[_Place] | None:
        places = self.by_route.get(id(route)) if route is not None else None
        if places is None and endpoint is not None:
            places = self.by_endpoint.get(id(endpoint))
        return places

    def template(self, route: Any, endpoint: Any, path: str) -> str | None:
        places = self.places(route, endpoint)
        if places is None:
            return None
        if len(places) == 1:
            return places[0][0]
        for template, matches in places:
            if matches(path) is not None:
                return template
        return places[0][0]


class _Tables:
    """The route index of each application seen.

    Rebuilt when a request names a route or endpoint the index lacks (routes added after
    the first request), at most once per such route: the request path never pays for a
    look at the route list itself.
    """

    def __init__(self) -> None:
        # id(app) -> (app, its table or None where its routes could not be read)
        self.tables: dict[int, tuple[Any, _Table | None]] = {}
        # Routes and endpoints a rebuild did not find either: not looked for again.
        self.unknown: set[int] = set()

    def get(self, app: Any) -> _Table | None:
        held = self.tables.get(id(app))
        if held is not None and held[0] is app:
            return held[1]
        return self.build(app)

    def build(self, app: Any) -> _Table | None:
        routes = getattr(app, "routes", None)
        table: _Table | None = None
        if isinstance(routes, list):
            try:
                table = _Table(routes)
            except Exception:
                # An exotic route table must not break requests: said once per build.
                logger.warning(ROUTE_TABLE_UNREADABLE, exc_info=True)
        if len(self.tables) >= _MAX_TABLES:
            self.tables.clear()
        self.tables[id(app)] = (app, table)
        return table

    def template(self, app: Any, route: Any, endpoint: Any, path: str) -> str | None:
        table = self.get(app)
        if table is None:
            return None
        template = table.template(route, endpoint, path)
        if template is not None:
            return template
        key = id(route if route is not None else endpoint)
        if key in self.unknown:
            return None
        # Not in the index: routes added since it was built, or one from elsewhere.
        if len(self.unknown) >= _MAX_UNKNOWN:
            self.unknown.clear()
        self.unknown.add(key)
        table = self.build(app)
        return None if table is None else table.template(route, endpoint, path)


_tables = _Tables()


def table_of(app: Any) -> _Table | None:
    """The route index of `app`; None when it has no route list or one we cannot read."""
    return _tables.get(app)


def _walk(
    routes: Iterable[Any], regex_prefix: str, template_prefix: str, table: _Table, depth: int
) -> None:
    for entry in flatten_routes(routes):
        # FastAPI >= 0.16x keeps included routers lazily; its RouteContext wraps each route
        # with the template the inclusion gives it, and the router names the original.
        route = getattr(entry, "route", entry) if _is_route_context(entry) else entry
        if isinstance(route, Host):
            if depth < _MAX_DEPTH:
                _walk(route.routes, regex_prefix, template_prefix, table, depth + 1)
            continue
        path = getattr(entry, "path", None)
        path_format = getattr(entry, "path_format", None)
        if not isinstance(path, str) or not isinstance(path_format, str):
            continue
        if isinstance(route, Mount):
            inner = route.routes if depth < _MAX_DEPTH else []
            if inner:
                _walk(
                    inner,
                    regex_prefix + path_regex(path),
                    template_prefix + path_template(path),
                    table,
                    depth + 1,
                )
            # The Mount itself is the route of a request its app answers (StaticFiles, an
            # app without routes) and of one its sub-router finds nothing for.
            table.add(
                route,
                route.app,
                template_prefix + path_format,
                regex_prefix + path_regex(path) + "/.*",
            )
            continue
        table.add(
            route,
            getattr(entry, "endpoint", None),
            template_prefix + path_format,
            regex_prefix + path_regex(path),
        )


def flatten_routes(routes: Iterable[Any]) -> Iterable[Any]:
    """The routes as the router tries them; FastAPI >= 0.16x's included routers unrolled."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # no FastAPI, or one whose routers are already flat
        return routes
    return iter_route_contexts(list(routes))


def _is_route_context(entry: Any) -> bool:
    return type(entry).__name__ == "RouteContext"


PARAM = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)(?::([a-zA-Z_][a-zA-Z0-9_]*))?\}")


def path_template(path: str) -> str:
    """The template of a Starlette path: /orgs/{org:int} is /orgs/{org}."""
    return PARAM.sub(r"{\1}", path)


def _convertor_regex(name: str) -> str:
    """The convertor's own regex (int: [0-9]+ ...), its groups made non-capturing."""
    convertor = CONVERTOR_TYPES.get(name)
    regex = getattr(convertor, "regex", None)
    if not isinstance(regex, str):
        return "[^/]+"
    return "(?:" + re.sub(r"(?<!\\)\((?!\?)", "(?:", regex) + ")"


def path_regex(path: str) -> str:
    """A regex without capturing groups for a Starlette path such as /items/{id:int}."""
    parts: list[str] = []
    position = 0
    for param in PARAM.finditer(path):
        parts.append(re.escape(path[position : param.start()]))
        parts.append(_convertor_regex(param.group(2) or "str"))
        position = param.end()
    parts.append(re.escape(path[position:]))
    return "".join(parts)
