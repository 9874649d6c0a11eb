"""One redaction policy for everything that leaves the process (docs/security.md).

Access log, span attributes, Sentry events and breadcrumbs, alert contexts, `check` output
and error texts all go through a `Redactor`. A key is secret when, normalised (camelCase
split, lower case, `-` and `.` read as `_`), it is on the denylist or ends with `_` plus a
denylisted word: `stripe_api_key`, `X-Auth-Token` and `sessionToken` are secret, `page`,
`keyboard` and `monkey` are not. A secret key keeps its name; its value becomes
`[redacted]`. URL userinfo (`https://user:pass@host`) is always masked.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import unquote_plus, urlsplit

REDACTED = "[redacted]"

# Key names whose values never leave the process; REDACT_KEYS adds to them.
DEFAULT_REDACT_KEYS = frozenset(
    {
        "password", "passwd", "pwd", "secret", "token", "access_token", "refresh_token",
        "api_key", "apikey", "key", "authorization", "auth", "cookie", "session",
        "session_id", "sessionid", "sig", "signature", "credential", "credentials",
        "private_key", "card_number", "cvv", "iban", "dsn", "jwt", "csrf", "xsrf",
    }
)  # fmt: skip

# Text longer than this is cut there before it is read (a bound on the cost).
_TEXT_LIMIT = 256 * 1024
_CUT_MARKER = "…[truncated]"
_MAX_DEPTH = 32
_CACHE_SIZE = 1024
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SEPARATORS = str.maketrans({"-": "_", ".": "_", " ": "_"})
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s]*@")
# `"key": value` inside text that no longer parses (Sentry cuts long values short).
_QUOTED_PAIR = re.compile(
    r"""(?P<quote>["'])(?P<key>[^"'\\\n]{1,128})(?P=quote)(?P<colon>\s*:\s*)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"?|'(?:[^'\\]|\\.)*'?|[^,{}\[\]\s"']*)"""
)
_URL_IN_TEXT = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+")


def normalise(key: str) -> str:
    """`X-Api-Key` → `x_api_key`, `stripeApiKey` → `stripe_api_key`."""
    return _CAMEL.sub("_", key.strip()).lower().translate(_SEPARATORS)


def mask_userinfo(text: str) -> str:
    """Every `scheme://user:pass@` in `text` shown as `scheme://[redacted]@`."""
    if "@" not in text:
        return text
    return _USERINFO.sub(r"\1" + REDACTED + "@", text)


def url_origin(url: str) -> str:
    """A URL that is a credential as a whole (a webhook) shown as scheme and host only."""
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.hostname:
        return REDACTED
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/{REDACTED}"


class Redactor:
    """Applies the policy: which keys are secret, and what a value looks like redacted."""

    __slots__ = ("_verdicts", "keys")

    def __init__(self, extra_keys: Iterable[str] = ()) -> None:
        self.keys = DEFAULT_REDACT_KEYS | {normalise(key) for key in extra_keys if key.strip()}
        self._verdicts: dict[str | bytes, bool] = {}

    def secret_key(self, key: str | bytes) -> bool:
        verdict = self._verdicts.get(key)
        if verdict is None:
            text = key.decode("latin-1") if isinstance(key, bytes) else key
            if len(text) > 2 and text[-1] in "'\"" and text[0] in "b'\"":
                # A key as Sentry serialises it: repr(b"authorization").
                text = text[text.index(text[-1]) + 1 : -1]
            name = normalise(text)
            keys = self.keys
            verdict = name in keys or any(
                name[at + 1 :] in keys for at, char in enumerate(name) if char == "_"
            )
            # Keys come from requests (query parameters, headers): keep the memo bounded.
            if len(self._verdicts) >= _CACHE_SIZE:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    def query(self, query: str) -> str:
        """`a=1&token=x` → `a=1&token=[redacted]`; anything else kept byte for byte."""
        pairs = query.split("&")
        changed = False
        for index, pair in enumerate(pairs):
            name, separator, _ = pair.partition("=")
            # Decoded first: `p%61ssword=` is a password too.
            if separator and self.secret_key(unquote_plus(name)):
                pairs[index] = name + "=" + REDACTED
                changed = True
        return "&".join(pairs) if changed else query

    def url(self, url: str) -> str:
        """Userinfo masked, secret query parameters redacted."""
        url = mask_userinfo(url)
        head, separator, query = url.partition("?")
        if not separator:
            return url
        query, hash_mark, fragment = query.partition("#")
        return head + "?" + self.query(query) + hash_mark + fragment

    def urls_in(self, text: str) -> str:
        """Free text (a message, an error) with every URL in it redacted."""
        if "://" not in text:
            return text
        return _URL_IN_TEXT.sub(lambda match: self.url(match.group()), text)

    def text(self, text: str) -> str:
        """A string that may hold a secret: JSON, a Python literal, a query string or URL."""
        if len(text) > _TEXT_LIMIT:
            text = text[:_TEXT_LIMIT] + _CUT_MARKER
        first = text.lstrip()[:1]
        if first and (first in "{['\"" or text.startswith(("b'", 'b"'))):
            parsed, as_json = _parse(text)
            if parsed is _UNPARSED:
                return self._pairs_in(text)
            redacted = self.data(parsed)
            if redacted == parsed:
                return text
            if as_json:
                return json.dumps(redacted, ensure_ascii=False)
            return repr(redacted)
        if "://" in text:
            text = self.urls_in(text)
        if "=" in text:
            text = self.query(text)
        if "':" in text or '":' in text:
            # A dict's repr() or JSON inside a message: "failed for {'token': ...}".
            text = self._pairs_in(text)
        return text

    def _pairs_in(self, text: str) -> str:
        """Structured text that does not parse (cut short, say): `"key": value` pairs."""

        def pair(match: re.Match[str]) -> str:
            if not self.secret_key(match["key"]):
                return match.group()
            quote = match["quote"]
            return f"{quote}{match['key']}{quote}{match['colon']}{quote}{REDACTED}{quote}"

        return _QUOTED_PAIR.sub(pair, text)

    def data(self, value: Any, depth: int = 0) -> Any:
        """`value` with every secret key's value redacted, however deeply nested.

        Mappings become dicts, bytes are read as text, pydantic models and dataclasses
        as their fields; (key, value) pairs such as ASGI headers count as keys.
        """
        if depth > _MAX_DEPTH:
            return REDACTED
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {
                key: REDACTED
                if isinstance(key, (str, bytes)) and self.secret_key(key)
                else self.data(item, depth + 1)
                for key, item in value.items()
            }
        if isinstance(value, (list, tuple)):
            if len(value) == 2 and isinstance(value[0], (str, bytes)) and self.secret_key(value[0]):
                return [value[0], REDACTED] if isinstance(value, list) else (value[0], REDACTED)
            items = [self.data(item, depth + 1) for item in value]
            return items if isinstance(value, list) else tuple(items)
        if isinstance(value, (set, frozenset)):
            return [self.data(item, depth + 1) for item in value]
        if isinstance(value, (bytes, bytearray, memoryview)):
            raw = bytes(value)
            try:
                decoded = raw.decode("utf-8")
            except UnicodeDecodeError:
                return value
            redacted = self.text(decoded)
            return value if redacted == decoded else redacted.encode("utf-8")
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return self._object(value, depth)

    def _object(self, value: Any, depth: int) -> Any:
        # A model's repr() would show every field: read its fields instead.
        fields: Any = None
        try:
            if hasattr(type(value), "model_fields") and callable(
                getattr(value, "model_dump", None)
            ):
                fields = value.model_dump()
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                fields = dataclasses.asdict(value)
        except Exception:  # a broken model must not stop redaction of the rest
            return REDACTED
        if fields is None:
            return value
        return self.data(fields, depth + 1)


_UNPARSED = object()


def _parse(text: str) -> tuple[Any, bool]:
    """The value `text` spells as JSON (True) or as a Python literal (False)."""
    try:
        return json.loads(text), True
    except ValueError:
        pass
    try:
        # Sentry serialises frame variables with repr(): "b'{...}'", "{'password': ...}".
        return ast.literal_eval(text), False
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _UNPARSED, False


@lru_cache(maxsize=16)
def redactor_for(extra_keys: tuple[str, ...]) -> Redactor:
    """The Redactor of a REDACT_KEYS value, shared by every output built from it."""
    return Redactor(extra_keys)
