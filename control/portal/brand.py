"""The operator's brand on every portal page (docs/portal.md, "Your brand").

Contract:
- `Brand.of(settings)`: the product name, accent colour, logo and support address of
  control/settings/brand.py (validated there at start-up).
- `render(page, brand)` (pure) fills a page's placeholders, each value HTML-escaped:
  `{{product}}` the name (titles, headings), `{{brand}}` the header's logo and name,
  `{{support}}` a "Questions? Write to …" line (empty without SUPPORT_EMAIL),
  `{{support_email}}` the bare address (for a `data-` attribute a script reads).
- `install_brand(app)` puts the Brand under `BRAND` and adds a middleware that renders
  every HTML response a `/portal` route answers (not the files under
  `/portal/static/`), so no page can miss its brand and no script needs to fetch it;
  `GET /portal/brand.css` is the accent colour as a stylesheet (the CSP forbids inline
  styles) with a text colour picked for contrast (`accent_ink`); with a local logo
  file, `GET /portal/brand/logo.png` (or `.svg`) serves it.
- `content_security_policy(logo_origin)`: the portal's CSP; an external logo's origin
  (scheme, host and port, nothing wider) is the only addition, to `img-src`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from control.appkeys import SETTINGS
from control.errors import NotFound
from control.settings import Settings

STRIPE_CHECKOUT_ORIGIN = "https://checkout.stripe.com"
LOGO_ROUTE = "/portal/brand/logo"
_PLACEHOLDER = re.compile(r"\{\{(product|brand|support|support_email)\}\}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Brand:
    name: str
    accent: str  # #rrggbb
    logo: str  # "", an https URL, or a local file's absolute path
    support_email: str

    @classmethod
    def of(cls, settings: Settings) -> Brand:
        return cls(
            settings.portal_product_name,
            settings.portal_accent_color,
            settings.portal_logo,
            settings.support_email,
        )

    @property
    def logo_is_url(self) -> bool:
        return self.logo.startswith("https://")

    @property
    def logo_src(self) -> str | None:
        if not self.logo:
            return None
        return self.logo if self.logo_is_url else LOGO_ROUTE + Path(self.logo).suffix.lower()

    @property
    def logo_origin(self) -> str | None:
        if not self.logo_is_url:
            return None
        parts = urlsplit(self.logo)
        return f"{parts.scheme}://{parts.netloc}"


BRAND: web.AppKey[Brand] = web.AppKey("portal_brand", Brand)


def content_security_policy(logo_origin: str | None) -> str:
    images = f"img-src 'self' {logo_origin}; " if logo_origin else ""
    return (
        f"default-src 'self'; {images}base-uri 'none'; "
        f"form-action 'self' {STRIPE_CHECKOUT_ORIGIN}; "
        "frame-ancestors 'none'; object-src 'none'"
    )


def render(page: str, brand: Brand) -> str:
    name = html.escape(brand.name)
    email = html.escape(brand.support_email)
    logo = brand.logo_src
    image = f'<img class="brand-logo" src="{html.escape(logo)}" alt="">' if logo else ""
    support = (
        f'<p class="support">Questions? Write to <a href="mailto:{email}">{email}</a>.</p>'
        if email
        else ""
    )
    values = {
        "product": name,
        "brand": f'<div class="brand">{image}<span class="brand-name">{name}</span></div>',
        "support": support,
        "support_email": email,
    }
    return _PLACEHOLDER.sub(lambda found: values[found.group(1)], page)


def accent_ink(color: str) -> str:
    """White or black, whichever contrasts more with `color` (WCAG relative luminance)."""
    channels = [int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "#ffffff" if 1.05 / (luminance + 0.05) >= (luminance + 0.05) / 0.05 else "#000000"


def stylesheet(brand: Brand) -> str:
    return f":root {{ --accent: {brand.accent}; --accent-ink: {accent_ink(brand.accent)}; }}\n"


def install_brand(app: web.Application) -> None:
    app[BRAND] = Brand.of(app[SETTINGS])
    app.middlewares.append(_brand_pages)
    app.router.add_get("/portal/brand.css", _stylesheet)
    app.router.add_get(LOGO_ROUTE + ".{kind:png|svg}", _logo)


@web.middleware
async def _brand_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    path = request.path
    if (
        isinstance(response, web.Response)
        and response.content_type == "text/html"
        and (path == "/portal" or path.startswith("/portal/"))
        and not path.startswith("/portal/static/")
        and response.text is not None
    ):
        response.text = render(response.text, request.app[BRAND])
    return response


async def _stylesheet(request: web.Request) -> web.Response:
    return web.Response(text=stylesheet(request.app[BRAND]), content_type="text/css")


async def _logo(request: web.Request) -> web.FileResponse:
    brand = request.app[BRAND]
    if brand.logo_src != f"{LOGO_ROUTE}.{request.match_info['kind']}" or brand.logo_is_url:
        raise NotFound("no logo here")
    return web.FileResponse(brand.logo)
