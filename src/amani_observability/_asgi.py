"""ASGI plumbing shared by the middlewares: types, header lookup, path matchers."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The nine standard methods; anything else is labelled "_OTHER" so that a client
# inventing methods cannot create new series or span names.
KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
OTHER_METHOD = "_OTHER"

# Every request that matched no route shares this label value.
UNMATCHED_ROUTE = "<unmatched>"


def header_value(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case bytes), or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def app_path(scope: Scope) -> tuple[str, str]:
    """(the path relative to the app, the root path it was found under).

    Behind a proxy prefix (uvicorn --root-path) paths are matched app-relative.
    """
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        return path[len(root_path) :], root_path
    return path, root_path


def normalise_method(method: str) -> str:
    return method if method in KNOWN_METHODS else OTHER_METHOD


def compile_paths(patterns: Iterable[str]) -> Callable[[str], bool]:
    """One matcher for a list of path regexes (full match); never matches when empty."""
    patterns = list(patterns)
    if not patterns:
        return _never
    regex = re.compile("|".join(f"(?:{p})" for p in patterns))
    fullmatch = regex.fullmatch

    def matches(path: str) -> bool:
        return fullmatch(path) is not None

    return matches


def _never(path: str) -> bool:
    return False
