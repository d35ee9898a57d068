"""Installs the customer portal on the app (docs/portal.md).

Contract: `install_portal(app)` puts the portal's state under `PORTAL`
(control/portal/state.py: Stripe Checkout through the library, or its local stand-in
when control/portal/stand_in.py says it is on, the limit of
PORTAL_CHECKOUTS_PER_HOUR per client address), adds every portal route and the
static files under
`/portal/static/` (files in control/portal/static/, no data, no session) and makes
every `/portal` response carry the security headers below: a strict CSP (scripts,
styles and fetches from this origin only, forms to this origin and Stripe's hosted
Checkout, no framing, no plugins; images also from PORTAL_LOGO's origin when it is an
https URL: control/portal/brand.py, which also renders the operator's brand into every
page), `X-Frame-Options: DENY`, nosniff,
`Referrer-Policy: no-referrer` (the status page's URL holds its secret token), and
`Cache-Control: no-store` on everything but the static files. `create_app` calls it
once.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from control.api import edge
from control.api.ratelimit import FailureLimiter
from control.appkeys import SETTINGS
from control.portal.account_routes import account_routes
from control.portal.backup_download import backup_download_routes
from control.portal.brand import BRAND, content_security_policy, install_brand
from control.portal.customers import install_customers
from control.portal.plan_prices import install_plan_prices
from control.portal.signin_routes import signin_routes
from control.portal.signup_routes import signup_routes
from control.portal.stand_in import install_stand_in
from control.portal.state import PORTAL, Portal
from control.portal.status_routes import status_routes
from control.portal.stripe_checkout import StripeCheckout

STATIC_DIR = Path(__file__).with_name("static")
# Without an external logo; PORTAL_LOGO's https origin adds exactly itself to img-src.
CSP = content_security_policy(None)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def install_portal(app: web.Application) -> None:
    settings = app[SETTINGS]
    per_hour = settings.portal_checkouts_per_hour
    app[PORTAL] = Portal(
        # Without a Stripe key in test mode (`make run`), the local stand-in's page instead.
        checkout=install_stand_in(app)
        or StripeCheckout(settings.stripe_secret_key, settings.stripe_api_base),
        checkout_limiter=FailureLimiter(burst=per_hour, refill_seconds=3600 / per_hour),
        behind_proxy=edge.behind_proxy(settings.public_url, settings.listen_port),
    )
    app.add_routes(signup_routes)
    app.add_routes(status_routes)
    install_customers(app)  # returning customers: sessions, mail, limits
    app.add_routes(signin_routes)
    app.add_routes(account_routes)
    app.add_routes(backup_download_routes(app))  # the customer's backups, as tar downloads
    app.router.add_static("/portal/static", STATIC_DIR)
    install_brand(app)  # the operator's name, logo and colour on every page
    install_plan_prices(app)  # the sign-up page's plan names and prices, from Stripe
    app.on_response_prepare.append(_security_headers)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    if request.path == "/portal" or request.path.startswith("/portal/"):
        response.headers.update(SECURITY_HEADERS)
        logo_origin = request.app[BRAND].logo_origin
        if logo_origin:
            response.headers["Content-Security-Policy"] = content_security_policy(logo_origin)
        if not request.path.startswith("/portal/static/"):
            response.headers["Cache-Control"] = "no-store"
