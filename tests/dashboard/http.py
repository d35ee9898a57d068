"""Plain-HTTP helpers for dashboard tests: sign in, and call with a session cookie.

Cookies are handled by hand (aiohttp's jar ignores cookies for IP addresses), which
also lets the tests see every attribute the server sets."""

from __future__ import annotations

import json as jsonlib
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any

from control.api.sessions import COOKIE_NAME, CSRF_HEADER
from tests.fixtures import ControlPlane


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    set_cookies: list[str]
    text: str

    def json(self) -> Any:
        return jsonlib.loads(self.text)


@dataclass
class Signed:
    session_id: str
    csrf_token: str

    @property
    def cookie(self) -> dict[str, str]:
        return {"Cookie": f"{COOKIE_NAME}={self.session_id}"}

    def headers(self, csrf: bool = True) -> dict[str, str]:
        return {**self.cookie, **({CSRF_HEADER: self.csrf_token} if csrf else {})}


async def call(
    control: ControlPlane,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    data: Any = None,
    json: Any = None,
) -> Reply:
    async with control.session.request(
        method,
        control.url + path,
        headers=headers or {},
        data=data,
        json=json,
        allow_redirects=False,
    ) as r:
        return Reply(
            r.status,
            {k: v for k, v in r.headers.items()},
            r.headers.getall("Set-Cookie", []),
            await r.text(),
        )


def session_cookie(reply: Reply) -> str | None:
    for header in reply.set_cookies:
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        if COOKIE_NAME in jar:
            return jar[COOKIE_NAME].value
    return None


async def sign_in(control: ControlPlane, token: str | None = None) -> tuple[Reply, Signed | None]:
    reply = await call(
        control, "POST", "/dashboard/login", data={"token": token or control.admin_token}
    )
    session_id = session_cookie(reply)
    if session_id is None:
        return reply, None
    info = await call(
        control, "GET", "/dashboard/api/session", headers={"Cookie": f"{COOKIE_NAME}={session_id}"}
    )
    assert info.status == 200, info.text
    return reply, Signed(session_id, info.json()["csrf_token"])
