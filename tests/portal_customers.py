"""Returning-customer test parts: a real SMTP server (aiosmtpd) on 127.0.0.1, a control
plane that mails through it and bills through the fake Stripe API, customers made as
the sign-up makes them (a checkout for the address, then its user), and sign-in
through the mailed link, exactly as a browser would do it."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from http.cookies import SimpleCookie
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from control.appkeys import STORE
from control.db.store import Store
from control.portal import checkouts
from control.portal.customer_sessions import COOKIE_NAME, CSRF_HEADER
from control.settings import profiles
from control.users import records
from tests.dashboard.http import Reply, call
from tests.fakes.stripe_api import StripeFake
from tests.fixtures import ControlPlane
from tests.ports import free_port

MAIL_FROM = "agents@example.com"
_LINK = re.compile(r"(http://\S+/portal/signin/link)#([A-Za-z0-9_-]+)")


class Inbox:
    """What the SMTP server received, handed to the test's loop as it arrives."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.messages: asyncio.Queue[tuple[list[str], EmailMessage]] = asyncio.Queue()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        item = (list(envelope.rcpt_tos), parsed)
        self.loop.call_soon_threadsafe(self.messages.put_nowait, item)
        return "250 OK"

    async def next(self, timeout: float = 10.0) -> tuple[list[str], EmailMessage]:
        async with asyncio.timeout(timeout):
            return await self.messages.get()


@pytest.fixture
async def smtp() -> AsyncIterator[tuple[Inbox, int]]:
    inbox = Inbox(asyncio.get_running_loop())
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    await asyncio.to_thread(controller.start)
    try:
        yield inbox, port
    finally:
        await asyncio.to_thread(controller.stop)


def portal_plane(
    control_factory: Callable[..., ControlPlane], smtp_port: int, stripe: StripeFake, **more: Any
) -> ControlPlane:
    return control_factory(
        tenant_profile=profiles.load("openclaw"),
        smtp_host="127.0.0.1",
        smtp_port=smtp_port,
        smtp_tls="none",
        mail_from=MAIL_FROM,
        stripe_secret_key=stripe.api_key,
        stripe_api_base=stripe.url,
        **more,
    )


def status_token(user_id: str) -> str:
    """The status page token `add_customer` gives the user's checkout (43 characters,
    as secrets.token_urlsafe(32) makes them)."""
    return (user_id + "t" * 43)[:43]


async def add_customer(
    plane: ControlPlane, user_id: str, address: str, customer_id: str | None = None
) -> None:
    """A paid sign-up: the checkout for `address`, then the user the webhook creates."""
    assert plane.app is not None
    store: Store = plane.app[STORE]
    now = time.time()
    row: dict[str, str | float] = {
        "id": "co_" + user_id,
        "token_hash": checkouts.token_hash(status_token(user_id)),
        "user_id": user_id,
        "subdomain": user_id,
        "plan": "default",
        "email": address,
        "expires_at": now + 1800,
    }
    await store.write(lambda conn: checkouts.reserve(conn, row, now))
    status, body = await plane.admin(
        "POST", "/v1/users", {"user_id": user_id, "subdomain": user_id}
    )
    assert status == 201, body
    if customer_id is not None:
        sub = "sub_" + user_id
        await store.write(lambda c: records.link_billing(c, user_id, customer_id, sub, now))


@dataclass
class Signed:
    session_id: str
    csrf_token: str

    def headers(self, csrf: bool = True) -> dict[str, str]:
        cookie = {"Cookie": f"{COOKIE_NAME}={self.session_id}"}
        return {**cookie, **({CSRF_HEADER: self.csrf_token} if csrf else {})}


def cookie_of(reply: Reply) -> str | None:
    for header in reply.set_cookies:
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        if COOKIE_NAME in jar and jar[COOKIE_NAME].value:
            return jar[COOKIE_NAME].value
    return None


def link_in(message: EmailMessage) -> tuple[str, str]:
    body = message.get_body(("plain",))
    assert body is not None
    found = _LINK.search(body.get_content())
    assert found is not None, body.get_content()
    return found.group(1), found.group(2)


async def ask_link(plane: ControlPlane, address: str, **headers: str) -> Reply:
    return await call(plane, "POST", "/portal/api/signin", json={"email": address}, headers=headers)


async def redeem(plane: ControlPlane, token: str) -> Reply:
    return await call(plane, "POST", "/portal/api/signin/redeem", json={"token": token})


async def sign_in(plane: ControlPlane, inbox: Inbox, address: str) -> Signed:
    reply = await ask_link(plane, address)
    assert reply.status == 202, reply.text
    _, message = await inbox.next()
    _, token = link_in(message)
    spent = await redeem(plane, token)
    assert spent.status == 200, spent.text
    session_id = cookie_of(spent)
    assert session_id is not None
    headers = {"Cookie": f"{COOKIE_NAME}={session_id}"}
    account = await call(plane, "GET", "/portal/api/account", headers=headers)
    assert account.status == 200, account.text
    return Signed(session_id, account.json()["csrf_token"])
