"""The operator's brand on the customer portal (control/settings/brand.py,
control/portal/brand.py): the settings refused at start-up, every page carrying the
name, logo and support address escaped, the accent colour as a stylesheet, the CSP
widened by exactly an external logo's origin, and the sign-in mail, through a real SMTP
server, under the product's name."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from control.portal.brand import Brand, accent_ink, content_security_policy, render
from control.portal.install import CSP
from control.portal.mail import signin_message
from control.portal.progress import Boot, Facts, progress
from control.settings import Settings, SettingsError
from tests.fakes.stripe_api import StripeFake
from tests.fixtures import ControlPlane, make_settings
from tests.portal_customers import (  # noqa: F401
    MAIL_FROM,
    Inbox,
    add_customer,
    portal_plane,
    sign_in,
    smtp,
)
from tests.portal_signup import call

BASE = {"ADMIN_TOKEN": "a" * 32, "INTERNAL_SECRET": "b" * 32}
NAME = "Tom's & Co"  # an apostrophe and an ampersand: both must be escaped in HTML
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>'
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
PAGES = ["/portal/signup", "/portal/signin", "/portal/signin/link", "/portal/status/" + "t" * 43]


def _file(tmp_path: Path, name: str, content: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def _env_cases(tmp_path: Path) -> list[tuple[dict[str, str], str | None]]:
    return [
        ({}, None),
        ({"PORTAL_PRODUCT_NAME": NAME, "PORTAL_ACCENT_COLOR": "#A0B1C2"}, None),
        ({"PORTAL_PRODUCT_NAME": "Agentür 24"}, None),
        ({"PORTAL_PRODUCT_NAME": "Acme\nBcc: x@evil.example"}, "PORTAL_PRODUCT_NAME: expected"),
        ({"PORTAL_PRODUCT_NAME": "Acme\rX"}, "PORTAL_PRODUCT_NAME: expected"),
        ({"PORTAL_PRODUCT_NAME": "<b>Acme</b>"}, "PORTAL_PRODUCT_NAME: expected"),
        ({"PORTAL_PRODUCT_NAME": "x" * 41}, "PORTAL_PRODUCT_NAME: expected 1-40"),
        ({"PORTAL_PRODUCT_NAME": "_hidden"}, "PORTAL_PRODUCT_NAME: expected"),
        ({"PORTAL_ACCENT_COLOR": "blue"}, "PORTAL_ACCENT_COLOR: expected a colour as #rrggbb"),
        ({"PORTAL_ACCENT_COLOR": "#fff"}, "PORTAL_ACCENT_COLOR: expected a colour"),
        ({"PORTAL_ACCENT_COLOR": "#12345g"}, "PORTAL_ACCENT_COLOR: expected a colour"),
        ({"SUPPORT_EMAIL": "help@example.com"}, None),
        ({"SUPPORT_EMAIL": "help at example"}, "SUPPORT_EMAIL: expected an e-mail address"),
        ({"SUPPORT_EMAIL": "a@b.com\nBcc: c@d.com"}, "SUPPORT_EMAIL: expected an e-mail"),
        ({"PORTAL_LOGO": "https://cdn.example.com/logo.svg"}, None),
        ({"PORTAL_LOGO": "http://cdn.example.com/logo.svg"}, "PORTAL_LOGO: expected an https"),
        ({"PORTAL_LOGO": "https://u:p@cdn.example.com/l.png"}, "PORTAL_LOGO: expected an https"),
        ({"PORTAL_LOGO": 'https://cdn.example.com/"x.png'}, "PORTAL_LOGO: expected an https"),
        ({"PORTAL_LOGO": _file(tmp_path, "logo.svg", SVG)}, None),
        ({"PORTAL_LOGO": _file(tmp_path, "logo.png", PNG)}, None),
        ({"PORTAL_LOGO": str(tmp_path / "missing.png")}, "PORTAL_LOGO: cannot read the logo"),
        ({"PORTAL_LOGO": _file(tmp_path, "logo.gif", b"GIF89a")}, "PORTAL_LOGO: expected an"),
        ({"PORTAL_LOGO": _file(tmp_path, "fake.png", SVG)}, "is not the PNG or SVG image"),
        ({"PORTAL_LOGO": _file(tmp_path, "big.svg", b"<svg" + b" " * 600_000)}, "512 KiB"),
    ]


def test_brand_settings_are_checked_at_start_up(tmp_path: Path) -> None:
    for env, error in _env_cases(tmp_path):
        if error is None:
            Settings.from_env({**BASE, **env})
            continue
        with pytest.raises(SettingsError, match=re.escape(error)):
            Settings.from_env({**BASE, **env})


def test_defaults_are_neutral() -> None:
    settings = Settings.from_env(BASE)
    brand = Brand.of(settings)
    assert brand == Brand("Agent Hosting", "#2f5bea", "", "")
    assert content_security_policy(brand.logo_origin) == CSP


@pytest.mark.parametrize(
    ("color", "ink"),
    [
        ("#2f5bea", "#ffffff"),
        ("#000000", "#ffffff"),
        ("#ffffff", "#000000"),
        ("#ffd966", "#000000"),
        ("#1d7a46", "#ffffff"),
    ],
)
def test_accent_ink_contrasts(color: str, ink: str) -> None:
    assert accent_ink(color) == ink


def test_render_escapes_every_value() -> None:
    brand = Brand(
        "A<b>&'\"", "#123456", 'https://cdn.example.com/a.svg?x=1&y="2', "a&b@example.com"
    )
    page = render(
        '<title>{{product}}</title>{{brand}}<body data-s="{{support_email}}">{{support}}', brand
    )
    assert "<b>" not in page and "A&lt;b&gt;&amp;&#x27;&quot;" in page
    assert 'src="https://cdn.example.com/a.svg?x=1&amp;y=&quot;2"' in page
    assert 'data-s="a&amp;b@example.com"' in page
    assert '<a href="mailto:a&amp;b@example.com">' in page
    assert "{{" not in page
    assert "{{support}}" not in render("{{support}}", dataclasses.replace(brand, support_email=""))
    assert render("{{support}}", dataclasses.replace(brand, support_email="")) == ""


def test_stopped_agent_names_the_support_address() -> None:
    facts = Facts("paid", "suspended", False, None, Boot(60, "x"), 0.0, "help@example.com")
    assert progress(facts).message.endswith("Please contact support at help@example.com.")
    without = dataclasses.replace(facts, support_email="")
    assert progress(without).message.endswith("Please contact support.")


def test_mail_headers_stay_one_line_whatever_the_name(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path, mail_from=MAIL_FROM, portal_product_name="Acme\r\nBcc: victim@example.com"
    )
    message = signin_message(settings, "a@example.com", "http://x/#t", 15)
    raw = message.as_bytes()
    assert b"\nBcc:" not in raw and message["Bcc"] is None
    assert message["Subject"] == "Your sign-in link for Acme Bcc: victim@example.com"


async def test_every_page_carries_the_brand_escaped(
    control_factory: Callable[..., ControlPlane], tmp_path: Path
) -> None:
    plane = control_factory(
        portal_product_name=NAME,
        portal_accent_color="#c0ffee",
        portal_logo=_file(tmp_path, "logo.svg", SVG),
        support_email="help@example.com",
    )
    await plane.start()
    for path in PAGES:
        reply = await call(plane, "GET", path)
        assert reply.status == 200, path
        page = reply.body
        assert "{{" not in page, path
        assert re.search(r"<title>[^<]* · Tom&#x27;s &amp; Co</title>", page), path
        assert '<span class="brand-name">Tom&#x27;s &amp; Co</span>' in page, path
        assert '<img class="brand-logo" src="/portal/brand/logo.svg" alt="">' in page, path
        assert '<a href="mailto:help@example.com">help@example.com</a>' in page, path
        assert '<link rel="stylesheet" href="/portal/brand.css">' in page, path
        assert reply.headers["Content-Security-Policy"] == CSP
    css = await call(plane, "GET", "/portal/brand.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    assert "--accent: #c0ffee; --accent-ink: #000000;" in css.body
    async with plane.session.get(plane.url + "/portal/brand/logo.svg") as logo:
        assert logo.status == 200 and logo.content_type == "image/svg+xml"
        assert await logo.read() == SVG
    assert (await call(plane, "GET", "/portal/brand/logo.png")).status == 404
    raw = await call(plane, "GET", "/portal/static/signup.html")  # a file, not a page
    assert "{{product}}" in raw.body


async def test_an_external_logo_widens_the_csp_by_its_origin_only(
    control_factory: Callable[..., ControlPlane],
) -> None:
    plane = control_factory(portal_logo="https://cdn.example.com:8443/brand/logo.png")
    await plane.start()
    reply = await call(plane, "GET", "/portal/signup")
    assert 'src="https://cdn.example.com:8443/brand/logo.png"' in reply.body
    csp = reply.headers["Content-Security-Policy"]
    assert "img-src 'self' https://cdn.example.com:8443;" in csp
    assert csp.replace("img-src 'self' https://cdn.example.com:8443; ", "") == CSP
    assert (await call(plane, "GET", "/portal/brand/logo.png")).status == 404


async def test_the_signin_mail_and_account_page_carry_the_brand(
    control_factory: Callable[..., ControlPlane],
    smtp: tuple[Inbox, int],  # noqa: F811
    stripe_fake: StripeFake,
) -> None:
    inbox, port = smtp
    plane = portal_plane(
        control_factory,
        port,
        stripe_fake,
        portal_product_name=NAME,
        support_email="help@example.com",
    )
    await plane.start()
    await add_customer(plane, "alice", "alice@example.com")
    signed = await sign_in(plane, inbox, "alice@example.com")
    # sign_in read the mail; ask for another to look at it whole.
    await call(plane, "POST", "/portal/api/signin", {"email": "alice@example.com"})
    _, message = await inbox.next()
    assert message["Subject"] == f"Your sign-in link for {NAME}"
    assert message["From"].addresses[0].display_name == NAME
    assert message["From"].addresses[0].addr_spec == MAIL_FROM
    text = message.get_content()
    assert f"sign in to your {NAME} account" in text
    assert "Questions? Write to help@example.com." in text
    account = await call(plane, "GET", "/portal/account", headers=signed.headers(csrf=False))
    assert account.status == 200
    assert '<body data-support="help@example.com">' in account.body
    assert "Your account · Tom&#x27;s &amp; Co" in account.body
