"""JSON logs: one object per line, with the request ID and trace of the current request.

`configure_logging()` installs one handler on the root logger (replacing its own on a
second call, so lines are never duplicated) and routes uvicorn's loggers through it;
with `LOG_JSON=false` the handler writes plain text lines, still naming the request.
`AccessLog` writes one line per request (_access_log.py).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import IO, TYPE_CHECKING, Any

from ._access_log import ACCESS_LOGGER, AccessLog, AccessLogMiddleware
from ._correlation import current_trace_ids, request_id_var
from ._losses import count_dropped
from ._redaction import REDACTED, Redactor, redactor_for

__all__ = [
    "ACCESS_LOGGER",
    "AccessLog",
    "AccessLogMiddleware",
    "JSONFormatter",
    "PlainFormatter",
    "RequestContextFilter",
    "configure_logging",
]

if TYPE_CHECKING:
    from .settings import ObservabilitySettings


# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime"}
)
# Set by RequestContextFilter; written as top-level keys, not repeated as extras.
_CONTEXT_ATTRS = ("request_id", "trace_id", "span_id")
# Written by uvicorn for its coloured console output; noise in JSON.
_SKIPPED_ATTRS = _RECORD_ATTRS | set(_CONTEXT_ATTRS) | {"color_message"}


class RequestContextFilter(logging.Filter):
    """Put `request_id`, `trace_id` and `span_id` of the current request on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            request_id = request_id_var.get()
            if request_id is None and record.exc_info and record.exc_info[1] is not None:
                # The server's "Exception in ASGI application" line, logged after the
                # request's context was reset: the request ID hooks tagged the exception.
                request_id = getattr(record.exc_info[1], "amani_request_id", None)
            record.request_id = request_id
        if getattr(record, "trace_id", None) is None:
            ids = current_trace_ids()
            if ids is not None:
                record.trace_id, record.span_id = ids
        return True


# Characters JSON allows raw in strings that still break lines or terminals downstream:
# DEL and the C1 controls (NEL, U+0085, ends a line for some readers) and the Unicode line
# and paragraph separators (JavaScript line terminators). json.dumps escapes only C0.
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u2028\u2029]")


def _escape_unsafe(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


class JSONFormatter(logging.Formatter):
    """Format a record as one JSON object on one line.

    Values of `extra=` keys the redaction policy names (`password`, `api_key`, ...) are
    written as `[redacted]`.
    """

    def __init__(self, *, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._secret_key = (redactor or redactor_for(())).secret_key

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _CONTEXT_ATTRS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        for key, value in record.__dict__.items():
            if key not in _SKIPPED_ATTRS and not key.startswith("_"):
                entry[key] = REDACTED if self._secret_key(key) else value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        line = json.dumps(entry, default=str, ensure_ascii=False)
        # Only inside strings can such characters occur, so an escape keeps the JSON valid.
        return _UNSAFE_IN_JSON.sub(_escape_unsafe, line)


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class PlainFormatter(logging.Formatter):
    """`LOG_JSON=false`: one readable line per record, naming the request ("-" outside one)."""

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "request_id", None) is None:
            record.request_id = "-"
        return super().format(record)


class _RedactQueries(logging.Filter):
    """On `uvicorn.access`: the request target's query redacted, as in our access log."""

    def __init__(self) -> None:
        super().__init__()
        self.redactor = redactor_for(())

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and "?" in a for a in args):
            record.args = tuple(
                self._target(a) if isinstance(a, str) and "?" in a else a for a in args
            )
        return True

    def _target(self, target: str) -> str:
        path, _, query = target.partition("?")
        return path + "?" + self.redactor.query(query)


_uvicorn_queries = _RedactQueries()


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler configure_logging() installed, so a second call replaces it."""

    def handleError(self, record: logging.LogRecord) -> None:
        # The stream refused the line (closed pipe, full disk): it is lost, so count it.
        count_dropped("log_lines", "write_error")
        super().handleError(record)


def configure_logging(
    settings: ObservabilitySettings | None = None, *, stream: IO[str] | None = None
) -> logging.Handler:
    """Send every log record to `stream` (default stderr) as JSON lines (plain text lines
    when `settings.log_json` is false).

    Idempotent: a second call replaces the handler the first one installed. uvicorn's
    loggers are routed through the same handler; `uvicorn.access` is quietened when
    our own access log is on, since it would repeat every line, and left as the server
    set it otherwise (`--no-access-log` stays off).
    """
    if settings is None:
        from .settings import ObservabilitySettings

        settings = ObservabilitySettings()
    handler = _OurHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        JSONFormatter(redactor=redactor_for(tuple(settings.redact_keys)))
        if settings.log_json
        else PlainFormatter()
    )
    handler.addFilter(RequestContextFilter())

    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _OurHandler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level)

    # uvicorn's own access lines, where a server keeps them, follow the same query rule.
    _uvicorn_queries.redactor = redactor_for(tuple(settings.redact_keys))
    uvicorn_access = logging.getLogger("uvicorn.access")
    if _uvicorn_queries not in uvicorn_access.filters:
        uvicorn_access.addFilter(_uvicorn_queries)

    names: tuple[str, ...] = ("uvicorn", "uvicorn.error")
    if settings.access_log_enabled:
        names += ("uvicorn.access",)
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    for name in names:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    return handler
