"""The sign-up and status pages and their JSON (docs/portal.md)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).with_name("static")

signup_routes = web.RouteTableDef()


def _html(name: str) -> web.Response:
    text = (STATIC_DIR / name).read_text(encoding="utf-8")
    return web.Response(text=text, content_type="text/html", charset="utf-8")


@signup_routes.get("/portal/signup")
async def signup_page(request: web.Request) -> web.Response:
    return _html("signup.html")
