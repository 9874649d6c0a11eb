"""Forking a request's Sentry scopes without `Scope.__copy__()`'s generic copy calls.

Every request forks two blank scopes (see sentry.py). sentry-sdk's `Scope.__copy__()`
copies the breadcrumbs with `copy.copy()` and the feature flags with `copy.deepcopy()`
even when there are none: those two generic functions run more Python than the rest of
the fork, a fifth of the whole stack's per-request bytecode. `fork_scope()` does what
`__copy__()` does, field by field, with the containers' own `copy()`.

It is written against the fields sentry-sdk's `Scope` has today. `scope_copier()`
checks it against `Scope.__copy__()` once (the same fields; in a fork of a scope that
holds data in every container, the same values, and the same fields copied or shared)
and returns `Scope.__copy__` itself where they differ, as in a sentry-sdk that adds a field.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from typing import Any

from sentry_sdk.scope import Scope, ScopeType

ScopeCopier = Callable[[Scope], Scope]

# Every field fork_scope() sets: Scope.__slots__ as of sentry-sdk 2.75.
_FIELDS = frozenset(
    {
        "_level", "_name", "_fingerprint", "_transaction", "_transaction_info", "_user",
        "_tags", "_contexts", "_extras", "_breadcrumbs", "_n_breadcrumbs_truncated",
        "_gen_ai_original_message_count", "_gen_ai_conversation_id", "_event_processors",
        "_error_processors", "_should_capture", "_span", "_server_segment_span", "_session",
        "_attachments", "_force_auto_session_tracking", "_profile", "_propagation_context",
        "client", "_type", "_last_event_id", "_flags", "_attributes",
    }
)  # fmt: skip

_new = object.__new__

# Whether this sentry-sdk's Scope has exactly the fields fork_scope() copies (2.75 and
# the releases that keep its fields); elsewhere every fork is Scope.__copy__().
SCOPE_FIELDS_KNOWN = frozenset(getattr(Scope, "__slots__", ())) == _FIELDS


def fork_scope(scope: Scope) -> Scope:
    """A copy of `scope` with copies of its containers, as `Scope.__copy__()` makes."""
    fork: Any = _new(Scope)
    fork._type = scope._type
    fork.client = scope.client
    fork._level = scope._level
    fork._name = scope._name
    fork._fingerprint = scope._fingerprint
    fork._transaction = scope._transaction
    fork._transaction_info = scope._transaction_info.copy()
    fork._user = scope._user
    fork._tags = scope._tags.copy()
    fork._contexts = scope._contexts.copy()
    fork._extras = scope._extras.copy()
    fork._breadcrumbs = scope._breadcrumbs.copy()
    fork._n_breadcrumbs_truncated = scope._n_breadcrumbs_truncated
    fork._gen_ai_original_message_count = scope._gen_ai_original_message_count.copy()
    fork._gen_ai_conversation_id = scope._gen_ai_conversation_id
    fork._event_processors = scope._event_processors.copy()
    fork._error_processors = scope._error_processors.copy()
    fork._propagation_context = scope._propagation_context
    fork._should_capture = scope._should_capture
    fork._span = scope._span
    fork._server_segment_span = scope._server_segment_span
    fork._session = scope._session
    fork._force_auto_session_tracking = scope._force_auto_session_tracking
    fork._attachments = scope._attachments.copy()
    fork._profile = scope._profile
    fork._last_event_id = scope._last_event_id
    flags = scope._flags
    fork._flags = None if flags is None else deepcopy(flags)
    fork._attributes = scope._attributes.copy()
    return fork  # type: ignore[no-any-return]


def scope_copier() -> ScopeCopier:
    """fork_scope where it forks as `Scope.__copy__()` does, else `Scope.__copy__`."""
    if frozenset(getattr(Scope, "__slots__", ())) != _FIELDS:
        return Scope.__copy__
    try:
        probe = _probe_scope()
        theirs, ours = probe.__copy__(), fork_scope(probe)
        if not all(_same_field(probe, theirs, ours, name) for name in _FIELDS):
            return Scope.__copy__
    except Exception:  # a Scope we do not know: its own copy is the right one
        return Scope.__copy__
    return fork_scope


def _probe_scope() -> Scope:
    """A scope with something in every container a request's scope may fill."""
    probe = Scope(ty=ScopeType.ISOLATION)
    probe.set_tag("tag", "value")
    probe.set_context("context", {"key": "value"})
    probe.set_extra("extra", "value")
    probe.set_level("warning")
    # Not set_user(): it also updates the session of the isolation scope current here.
    probe._user = {"id": "user"}
    probe.add_event_processor(_keep)
    probe.add_error_processor(_keep_error)
    probe.add_attachment(bytes=b"attachment", filename="probe.txt")
    probe.set_attribute("attribute", "value")
    # add_breadcrumb() keeps nothing without an active client.
    probe._breadcrumbs.append({"message": "probe", "type": "default"})
    probe.flags.set("flag", True)
    probe.set_transaction_name("probe")
    return probe


def _same_field(probe: Scope, theirs: Scope, ours: Scope, name: str) -> bool:
    original, copied, forked = (getattr(each, name) for each in (probe, theirs, ours))
    if type(copied) is not type(forked) or (copied is original) != (forked is original):
        return False
    if name == "_flags" and copied is not None:
        # A flag buffer has no equality: compare what it reports.
        return bool(copied.get() == forked.get())
    return bool(copied == forked)


def _keep(event: Any, hint: Any) -> Any:
    return event


def _keep_error(event: Any, exc_info: Any) -> Any:
    return event
