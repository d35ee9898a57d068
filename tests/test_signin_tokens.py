"""shared/signin.py: tickets and sessions are bound to one user, one key and a time."""

from __future__ import annotations

import pytest

from shared import signin

KEY = signin.signin_key("gateway-token-of-alice")
OTHER = signin.signin_key("gateway-token-of-bob")
NONCE = "0" * 32


def test_key_is_per_token_and_stable() -> None:
    assert KEY == signin.signin_key("gateway-token-of-alice")
    assert KEY != OTHER and len(KEY) == 64


def test_a_ticket_opens_exactly_its_user_until_it_expires() -> None:
    ticket = signin.make_ticket(KEY, "alice", 1000, NONCE)
    assert signin.check_ticket(KEY, "alice", ticket, now=1000) == NONCE
    assert signin.check_ticket(KEY, "alice", ticket, now=1001) is None  # expired
    assert signin.check_ticket(KEY, "bob", ticket, now=900) is None  # another user
    assert signin.check_ticket(OTHER, "alice", ticket, now=900) is None  # rotated key


def test_a_session_is_not_a_ticket_and_vice_versa() -> None:
    session = signin.make_session(KEY, "alice", 1000, NONCE)
    ticket = signin.make_ticket(KEY, "alice", 1000, NONCE)
    assert signin.check_session(KEY, "alice", session, now=10)
    assert signin.check_ticket(KEY, "alice", session, now=10) is None
    assert not signin.check_session(KEY, "alice", ticket, now=10)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"),  # signature
        lambda t: t.replace(".1000.", ".9999."),  # extended expiry
        lambda t: t.replace("alice", "alicf"),  # another user, same mac
        lambda t: t + "\n",
        lambda t: "é" + t,
        lambda t: "",
        lambda t: t.upper(),
    ],
)
def test_tampered_values_are_invalid(mutate: object) -> None:
    ticket = signin.make_ticket(KEY, "alice", 1000, NONCE)
    session = signin.make_session(KEY, "alice", 1000, NONCE)
    assert callable(mutate)
    assert signin.check_ticket(KEY, "alice", mutate(ticket), now=10) is None
    assert not signin.check_session(KEY, "alice", mutate(session), now=10)


def test_no_key_opens_nothing() -> None:
    ticket = signin.make_ticket(KEY, "alice", 1000, NONCE)
    assert signin.check_ticket("", "alice", ticket, now=10) is None
