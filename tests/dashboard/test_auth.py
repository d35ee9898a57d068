"""Dashboard sign-in, sessions, CSRF and security headers over plain HTTP."""

from __future__ import annotations

from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path

import pytest

from control.api.sessions import COOKIE_NAME, CSRF_HEADER, SessionStore
from tests.dashboard.http import call, session_cookie, sign_in
from tests.fixtures import ControlPlane
from tests.test_protocol import registered

PAGES = ["/dashboard", "/dashboard/users", "/dashboard/events", "/dashboard/servers/srv-x"]


async def test_root_redirects_to_the_dashboard(control: ControlPlane) -> None:
    reply = await call(control, "GET", "/")
    assert reply.status == 302 and reply.headers["Location"] == "/dashboard"


@pytest.mark.parametrize("path", PAGES)
async def test_pages_redirect_to_sign_in_without_a_session(
    control: ControlPlane, path: str
) -> None:
    reply = await call(control, "GET", path)
    assert reply.status == 302
    assert reply.headers["Location"] == f"/dashboard/login?next={path}"
    assert "dashboard.js" not in reply.text
    forged = await call(control, "GET", path, headers={"Cookie": f"{COOKIE_NAME}=forged"})
    assert forged.status == 302


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/dashboard/api/session"),
        ("GET", "/v1/servers"),
        ("GET", "/v1/users"),
        ("GET", "/v1/events"),
        ("POST", "/v1/users/alice/suspend"),
    ],
)
async def test_api_is_401_without_a_session(control: ControlPlane, method: str, path: str) -> None:
    for headers in ({}, {"Cookie": f"{COOKIE_NAME}=not-a-session"}):
        reply = await call(control, method, path, headers=headers)
        assert reply.status == 401, reply.text
        assert reply.json()["error"]["code"] == "unauthorized"


async def test_a_wrong_token_is_refused_and_starts_no_session(control: ControlPlane) -> None:
    for wrong in ("wrong", control.admin_token + "x", control.admin_token[:-1], ""):
        reply, signed = await sign_in(control, wrong) if wrong else (None, None)
        if reply is None:
            reply = await call(control, "POST", "/dashboard/login", data={"token": ""})
        assert reply.status == 401
        assert signed is None and session_cookie(reply) is None
        assert "not the admin token" in reply.text
    assert await _store(control).count() == 0


async def test_sign_in_sets_a_strict_httponly_cookie_and_the_api_accepts_it(
    control: ControlPlane,
) -> None:
    reply, signed = await sign_in(control)
    assert reply.status == 303 and reply.headers["Location"] == "/dashboard"
    assert signed is not None
    morsel = SimpleCookie(reply.set_cookies[0])[COOKIE_NAME]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/"
    assert not morsel["secure"]  # plain HTTP on 127.0.0.1
    assert len(signed.session_id) >= 43 and signed.session_id not in signed.csrf_token
    page = await call(control, "GET", "/dashboard", headers=signed.cookie)
    assert page.status == 200 and "/dashboard/static/dashboard.js" in page.text
    servers = await call(control, "GET", "/v1/servers", headers=signed.cookie)
    assert servers.status == 200 and servers.json()["servers"] == []
    info = await call(control, "GET", "/dashboard/api/session", headers=signed.cookie)
    assert info.json()["base_domain"] == control.settings.base_domain


@pytest.mark.parametrize(
    "headers", [{"X-Forwarded-Proto": "https"}, {"Forwarded": 'for=192.0.2.1;proto="https"'}]
)
async def test_secure_cookie_behind_an_https_proxy(
    control: ControlPlane, headers: dict[str, str]
) -> None:
    reply = await call(
        control, "POST", "/dashboard/login", data={"token": control.admin_token}, headers=headers
    )
    assert SimpleCookie(reply.set_cookies[0])[COOKIE_NAME]["secure"] is True


async def test_an_https_public_url_alone_makes_the_cookie_secure(
    control_factory: Callable[..., ControlPlane],
) -> None:
    """A proxy that sends no X-Forwarded-Proto must not leave the cookie on plain HTTP."""
    control = control_factory(public_url="https://fleet.example.com")
    await control.start()
    reply = await call(control, "POST", "/dashboard/login", data={"token": control.admin_token})
    assert reply.status == 303
    assert SimpleCookie(reply.set_cookies[0])[COOKIE_NAME]["secure"] is True
    out = await call(control, "POST", "/dashboard/logout")
    assert SimpleCookie(out.set_cookies[0])[COOKIE_NAME]["secure"] is True


async def test_a_session_survives_a_restart_and_the_database_holds_no_raw_id(
    control_factory: Callable[..., ControlPlane], tmp_path: Path
) -> None:
    control = control_factory()
    await control.start()
    await control.admin("POST", "/v1/users", {"user_id": "rae", "subdomain": "rae"})
    _, signed = await sign_in(control)
    assert signed is not None
    await control.stop()
    await control.start()  # same SQLite file, same port: a process restart
    page = await call(control, "GET", "/dashboard", headers=signed.cookie)
    assert page.status == 200 and "/dashboard/static/dashboard.js" in page.text
    info = await call(control, "GET", "/dashboard/api/session", headers=signed.cookie)
    assert info.status == 200 and info.json()["csrf_token"] == signed.csrf_token
    acted = await call(control, "POST", "/v1/users/rae/suspend", headers=signed.headers())
    assert acted.status == 200, acted.text
    await control.stop()
    files = list(tmp_path.glob("clawfleet.db*"))
    assert files
    for path in files:
        raw = path.read_bytes()
        assert signed.session_id.encode() not in raw, path
        assert signed.csrf_token.encode() not in raw, path


@pytest.mark.parametrize(
    ("next_page", "landing"),
    [
        ("/dashboard/users", "/dashboard/users"),
        ("/dashboard/servers/srv-1", "/dashboard/servers/srv-1"),
        ("//evil.example/dashboard", "/dashboard"),
        ("https://evil.example/", "/dashboard"),
        ("/dashboard/../v1/users", "/dashboard"),
        ("/dashboard/login", "/dashboard"),
        ("/dashboard%0A", "/dashboard"),  # "$" matched before a trailing newline
        ("/dashboard/users%0D%0ASet-Cookie:%20x=1", "/dashboard"),
        ("/dashboard/%09", "/dashboard"),
    ],
)
async def test_sign_in_returns_only_to_dashboard_pages(
    control: ControlPlane, next_page: str, landing: str
) -> None:
    reply = await call(
        control,
        "POST",
        "/dashboard/login?next=" + next_page,
        data={"token": control.admin_token},
    )
    assert reply.status == 303 and reply.headers["Location"] == landing


async def test_cookie_actions_need_the_csrf_token(control: ControlPlane) -> None:
    worker = await registered(control)
    status, _ = await control.admin("POST", "/v1/users", {"user_id": "ann", "subdomain": "ann"})
    assert status == 201
    _, signed = await sign_in(control)
    assert signed is not None
    for headers in (signed.headers(csrf=False), {**signed.cookie, CSRF_HEADER: "forged"}):
        for path in ("/v1/users/ann/suspend", f"/v1/servers/{worker.key_id}/cordon"):
            reply = await call(control, "POST", path, headers=headers)
            assert reply.status == 403, reply.text
            assert reply.json()["error"]["code"] == "csrf_failed"
        reply = await call(control, "DELETE", "/v1/users/ann", headers=headers)
        assert reply.status == 403
    _, user = await control.admin("GET", "/v1/users/ann")
    assert user["state"] == "provisioning"  # nothing happened
    _, srv = await control.admin("GET", f"/v1/servers/{worker.key_id}")
    assert srv["cordoned"] is False
    reply = await call(control, "POST", "/v1/users/ann/suspend", headers=signed.headers())
    assert reply.status == 200 and reply.json()["state"] == "suspended"


async def test_bearer_token_still_works_without_csrf(control: ControlPlane) -> None:
    await control.admin("POST", "/v1/users", {"user_id": "bo", "subdomain": "bo"})
    status, body = await control.admin("POST", "/v1/users/bo/suspend")
    assert status == 200 and body["state"] == "suspended"


async def test_a_wrong_bearer_token_is_not_rescued_by_a_session_cookie(
    control: ControlPlane,
) -> None:
    _, signed = await sign_in(control)
    assert signed is not None
    headers = {**signed.headers(), "Authorization": "Bearer wrong"}
    reply = await call(control, "GET", "/v1/users", headers=headers)
    assert reply.status == 401  # a guess counts as a guess, whatever else is sent


async def test_a_csrf_token_of_another_session_is_refused(control: ControlPlane) -> None:
    await control.admin("POST", "/v1/users", {"user_id": "cy", "subdomain": "cy"})
    _, first = await sign_in(control)
    _, second = await sign_in(control)
    assert first is not None and second is not None
    assert first.csrf_token != second.csrf_token and first.session_id != second.session_id
    headers = {**first.cookie, CSRF_HEADER: second.csrf_token}
    reply = await call(control, "POST", "/v1/users/cy/suspend", headers=headers)
    assert reply.status == 403


async def test_logout_needs_csrf_then_ends_the_session(control: ControlPlane) -> None:
    _, signed = await sign_in(control)
    assert signed is not None
    refused = await call(control, "POST", "/dashboard/logout", headers=signed.cookie)
    assert refused.status == 403 and refused.json()["error"]["code"] == "csrf_failed"
    assert (await call(control, "GET", "/v1/users", headers=signed.cookie)).status == 200
    reply = await call(
        control,
        "POST",
        "/dashboard/logout",
        headers=signed.cookie,
        data={"csrf_token": signed.csrf_token},
    )
    assert reply.status == 303 and reply.headers["Location"] == "/dashboard/login"
    cleared = SimpleCookie(reply.set_cookies[0])[COOKIE_NAME]
    assert cleared.value == "" and cleared["max-age"] == "0"
    assert (await call(control, "GET", "/v1/users", headers=signed.cookie)).status == 401
    assert (await call(control, "GET", "/dashboard", headers=signed.cookie)).status == 302


async def test_a_new_sign_in_drops_the_old_session(control: ControlPlane) -> None:
    _, old = await sign_in(control)
    assert old is not None
    reply = await call(
        control, "POST", "/dashboard/login", data={"token": control.admin_token}, headers=old.cookie
    )
    assert reply.status == 303 and session_cookie(reply) not in (None, old.session_id)
    assert (await call(control, "GET", "/v1/users", headers=old.cookie)).status == 401


@pytest.mark.parametrize(
    "path", ["/dashboard/login", "/dashboard", "/dashboard/static/dashboard.js"]
)
async def test_dashboard_responses_carry_the_security_headers(
    control: ControlPlane, path: str
) -> None:
    _, signed = await sign_in(control)
    assert signed is not None
    headers = {} if path == "/dashboard/login" else signed.cookie
    reply = await call(control, "GET", path, headers=headers)
    assert reply.status == 200
    assert "default-src 'self'" in reply.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in reply.headers["Content-Security-Policy"]
    assert reply.headers["X-Frame-Options"] == "DENY"
    assert reply.headers["X-Content-Type-Options"] == "nosniff"


async def test_static_assets_hold_no_inline_script_and_no_external_url(
    control: ControlPlane,
) -> None:
    for name in ("login.html", "index.html", "dashboard.js", "dashboard.css", "icon.svg"):
        reply = await call(control, "GET", f"/dashboard/static/{name}")
        assert reply.status == 200, name
        lowered = reply.text.lower()
        assert "innerhtml" not in lowered and "eval(" not in lowered
        for remote in ("http://", "//cdn", "@import"):
            assert remote not in lowered.replace("http://www.w3.org/2000/svg", ""), name
        if name.endswith(".html"):
            assert (
                "<script>" not in lowered
                and " style=" not in lowered
                and " on" + "click=" not in lowered
            )
    traversal = await call(control, "GET", "/dashboard/static/../sessions.py")
    assert traversal.status in (403, 404)
    assert "SessionStore" not in traversal.text


def _store(control: ControlPlane) -> SessionStore:
    from control.appkeys import SESSIONS

    assert control.app is not None
    return control.app[SESSIONS]
