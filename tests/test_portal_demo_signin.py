"""The `make run` demo's sign-in without a mail server: with PROVIDER=local, no
SMTP_HOST and no Stripe key, the one-time link is printed in the log, marked DEMO, and
signs the customer in; in every production-like configuration (Hetzner, a Stripe key,
live mode, an SMTP server) it never is."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest

from control.portal import demo_mail
from control.portal.customers import MAILER
from control.portal.mail import Mailer
from control.settings import Settings
from tests.dashboard.http import call
from tests.fixtures import ControlPlane
from tests.portal_customers import add_customer, ask_link, cookie_of, redeem

BASE = {
    "ADMIN_TOKEN": "a" * 40,
    "INTERNAL_SECRET": "b" * 40,
    "PUBLIC_URL": "https://fleet.example.com",
}
HETZNER = {"PROVIDER": "hetzner", "HETZNER_API_TOKEN": "h" * 64}
SMTP = {"SMTP_HOST": "127.0.0.1", "MAIL_FROM": "agents@example.com"}
DEMO_LINE = re.compile(r"DEMO sign-in link for (\S+) .*: (http://\S+/portal/signin/link)#(\S+)$")


@pytest.mark.parametrize(
    ("env", "demo"),
    [
        ({}, True),  # `make run`
        (HETZNER, False),  # a real deployment: live Stripe unless told otherwise
        ({**HETZNER, "STRIPE_LIVEMODE": "test"}, False),  # even in test mode
        ({"STRIPE_SECRET_KEY": "sk_test_x"}, False),
        ({"STRIPE_SECRET_KEY": "rk_live_x"}, False),
        ({"STRIPE_LIVEMODE": "live"}, False),
        (SMTP, False),  # a mail server: the link is mailed, never logged
        ({**HETZNER, **SMTP, "STRIPE_SECRET_KEY": "sk_live_x"}, False),
    ],
)
def test_only_the_local_demo_logs_links(env: dict[str, str], demo: bool) -> None:
    settings = Settings.from_env({**BASE, **env})
    assert demo_mail.enabled(settings) is demo
    mailer = demo_mail.mailer_for(settings)
    assert isinstance(mailer, demo_mail.DemoMailer) is demo
    assert type(mailer) is (demo_mail.DemoMailer if demo else Mailer)


async def test_the_demo_signs_in_with_the_logged_link(
    control_factory: Callable[..., ControlPlane], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    plane = control_factory()  # PROVIDER=local, no SMTP_HOST, no Stripe key
    await plane.start()
    assert plane.app is not None
    assert "DEMO: no SMTP_HOST" in caplog.text  # start-up says where links go
    await add_customer(plane, "alice", "alice@example.com")
    reply = await ask_link(plane, "alice@example.com")
    assert reply.status == 202, reply.text
    assert reply.json()["message"] == demo_mail.SENT
    await plane.app[MAILER].close()  # the "send" runs in the background, as a mail would
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("DEMO sign")]
    found = DEMO_LINE.search(line)
    assert found is not None, line
    assert found.group(1) == "alice@example.com"
    assert found.group(2) == f"{plane.url}/portal/signin/link"
    spent = await redeem(plane, found.group(3))
    assert spent.status == 200, spent.text
    session_id = cookie_of(spent)
    assert session_id is not None
    account = await call(
        plane, "GET", "/portal/api/account", headers={"Cookie": f"clawfleet_portal={session_id}"}
    )
    assert [a["user_id"] for a in account.json()["agents"]] == ["alice"]
    # An unknown address gets the same answer and nothing in the log.
    caplog.clear()
    assert (await ask_link(plane, "mallory@example.com")).json()["message"] == demo_mail.SENT
    await plane.app[MAILER].close()
    assert "DEMO sign" not in caplog.text


@pytest.mark.parametrize(
    "overrides",
    [{"stripe_secret_key": "sk_test_x"}, {"stripe_livemode": True}],
)
async def test_no_link_is_logged_outside_the_demo(
    control_factory: Callable[..., ControlPlane],
    caplog: pytest.LogCaptureFixture,
    overrides: dict[str, object],
) -> None:
    caplog.set_level(logging.DEBUG)
    plane = control_factory(**overrides)
    await plane.start()
    assert plane.app is not None
    await add_customer(plane, "alice", "alice@example.com")
    reply = await ask_link(plane, "alice@example.com")
    assert reply.status == 503 and reply.json()["error"]["code"] == "mail_off"
    await plane.app[MAILER].close()
    assert "DEMO" not in caplog.text and "/portal/signin/link" not in caplog.text
