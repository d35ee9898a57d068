"""Installs the customer portal on the app (docs/portal.md).

Contract: `install_portal(app)` adds every portal route and the static files under
`/portal/static/` (files in control/portal/static/, no data, no session) and makes
every `/portal` response carry the security headers below: a strict CSP (scripts,
styles and fetches from this origin only, forms to this origin and Stripe's hosted
Checkout, no framing, no plugins), `X-Frame-Options: DENY`, nosniff,
`Referrer-Policy: no-referrer` (the status page's URL holds its secret token), and
`Cache-Control: no-store` on everything but the static files. `create_app` calls it
once.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from control.portal.signup_routes import signup_routes

STATIC_DIR = Path(__file__).with_name("static")
STRIPE_CHECKOUT_ORIGIN = "https://checkout.stripe.com"
CSP = (
    "default-src 'self'; base-uri 'none'; "
    f"form-action 'self' {STRIPE_CHECKOUT_ORIGIN}; "
    "frame-ancestors 'none'; object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def install_portal(app: web.Application) -> None:
    app.add_routes(signup_routes)
    app.router.add_static("/portal/static", STATIC_DIR)
    app.on_response_prepare.append(_security_headers)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == "/portal" or request.path.startswith("/portal/"):
        response.headers.update(SECURITY_HEADERS)
        if not request.path.startswith("/portal/static/"):
            response.headers["Cache-Control"] = "no-store"
