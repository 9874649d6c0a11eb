"""The request scopes' fork: what Scope.__copy__() makes, checked against it at start-up."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import Context
from typing import Any

import pytest
from sentry_sdk.scope import Scope, _current_scope, _isolation_scope

from amani_observability import _sentry_fork
from amani_observability._sentry_fork import SCOPE_FIELDS_KNOWN, fork_scope, scope_copier


def test_the_installed_sentry_sdk_gets_the_fork_its_scope_fields_allow() -> None:
    """The fast fork where Scope has the fields it copies (newest leg), else the SDK's."""
    assert scope_copier() is (fork_scope if SCOPE_FIELDS_KNOWN else Scope.__copy__)


@pytest.mark.skipif(not SCOPE_FIELDS_KNOWN, reason="this sentry-sdk's Scope has other fields")
def test_a_fork_equals_the_sdks_copy_and_owns_its_containers() -> None:
    probe = _sentry_fork._probe_scope()
    theirs, ours = probe.__copy__(), fork_scope(probe)
    assert type(ours) is Scope
    for name in Scope.__slots__:
        assert _sentry_fork._same_field(probe, theirs, ours, name), name
    ours.set_tag("request", "own")
    ours._breadcrumbs.append({"message": "own"})
    ours.flags.set("own", False)
    assert probe._tags == {"tag": "value"}
    assert list(probe._breadcrumbs) == [{"message": "probe", "type": "default"}]
    assert probe.flags.get() == [{"flag": "flag", "result": True}]
    assert ours.flags.get() == [{"flag": "flag", "result": True}, {"flag": "own", "result": False}]


def test_a_scope_with_another_field_keeps_the_sdks_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    # As in a sentry-sdk whose Scope gained a field that fork_scope() would not copy.
    monkeypatch.setattr(_sentry_fork, "_FIELDS", _sentry_fork._FIELDS - {"_attributes"})
    assert scope_copier() is Scope.__copy__


def _sharing_tags(fork: Any, scope: Scope) -> None:
    fork._tags = scope._tags  # the request's tags would land on the blank scope


def _dropping_level(fork: Any, scope: Scope) -> None:
    fork._level = None


@pytest.mark.parametrize("mistake", [_sharing_tags, _dropping_level])
def test_a_fork_unlike_the_sdks_copy_is_not_used(
    monkeypatch: pytest.MonkeyPatch, mistake: Callable[[Any, Scope], None]
) -> None:
    real_fork = _sentry_fork.fork_scope

    def wrong_fork(scope: Scope) -> Any:
        fork: Any = real_fork(scope)
        mistake(fork, scope)
        return fork

    monkeypatch.setattr(_sentry_fork, "fork_scope", wrong_fork)
    assert scope_copier() is Scope.__copy__


def test_the_start_up_check_leaves_the_current_scopes_alone() -> None:
    def check() -> list[Any]:
        scope_copier()
        return [_isolation_scope.get(), _current_scope.get()]

    # In a context without scopes (as a uvicorn request's is) the check makes none.
    assert Context().run(check) == [None, None]
