"""What the command line prints: every line with its URLs redacted."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from ._redaction import Redactor, redactor_for

# REDACT_KEYS of the settings `check` read, once it has read them.
_redactor: Redactor = redactor_for(())


def use_redaction(keys: Iterable[str]) -> None:
    global _redactor
    _redactor = redactor_for(tuple(keys))


def write(line: str, *, error: bool = False) -> None:
    stream = sys.stderr if error else sys.stdout
    # Every URL printed (settings, arguments, errors, Prometheus' answers) is redacted.
    stream.write(_redactor.urls_in(line) + "\n")
    stream.flush()
