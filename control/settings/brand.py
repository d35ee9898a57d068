"""The operator's brand on the customer's pages and mail (docs/portal.md, "Your brand"),
declared like every other setting.

Contract: `BrandSettings` is a frozen, keyword-only dataclass that PortalSettings
inherits (the settings module has no room left under the 400-line rule). Each value is
checked when it is parsed, at start-up, with an error naming the variable:
- PORTAL_PRODUCT_NAME: 1-40 characters of letters, digits, spaces and `. , ' & ! ? : ( ) + / -`,
  starting with a letter or digit: no line break or other control character can reach
  an e-mail header, and no `<`, `>` or `"` a page would have to escape.
- PORTAL_LOGO: empty (no logo), an https URL (no user name or password, no quotes or
  spaces; the portal's CSP then allows images from exactly that origin), or a path to a
  local PNG or SVG file of at most 512 KiB whose content is what its name says; the path
  is made absolute against the working directory at start-up.
- PORTAL_ACCENT_COLOR: `#rrggbb` (lower-cased).
- SUPPORT_EMAIL: empty (the pages say "contact support" without an address) or an
  e-mail address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from shared.config import Invalid, matching, optional, setting
from shared.names import EMAIL

NAME = re.compile(r"[^\W_][\w .,'&!?:()+/-]{0,39}")
COLOR = re.compile(r"#[0-9a-f]{6}")
LOGO_MAX_BYTES = 512 * 1024
_URL_FORBIDDEN = re.compile(r"[\s\"'<>\\`]")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def product_name(value: str) -> str:
    if not NAME.fullmatch(value) or "_" in value:
        raise Invalid(
            "expected 1-40 letters, digits, spaces or . , ' & ! ? : ( ) + / - "
            f"starting with a letter or digit, got {value!r}"
        )
    return value


def logo(value: str) -> str:
    """An https URL as it is, or a local PNG/SVG file's absolute path."""
    if value.startswith(("https:", "http:")):
        return _logo_url(value)
    path = Path(value).absolute()
    if path.suffix.lower() not in (".png", ".svg"):
        raise Invalid(f"expected an https URL or a .png or .svg file, got {value!r}")
    try:
        with path.open("rb") as file:
            head = file.read(LOGO_MAX_BYTES + 1)
    except OSError as exc:
        raise Invalid(f"cannot read the logo file {str(path)!r}: {exc.strerror}") from None
    if len(head) > LOGO_MAX_BYTES:
        raise Invalid(f"the logo file {str(path)!r} is larger than 512 KiB")
    is_png = head.startswith(_PNG_MAGIC)
    if is_png != (path.suffix.lower() == ".png") or (not is_png and b"<svg" not in head):
        raise Invalid(f"the logo file {str(path)!r} is not the PNG or SVG image its name says")
    return str(path)


def _logo_url(value: str) -> str:
    parts = urlsplit(value)
    if (
        parts.scheme != "https"
        or not parts.hostname
        or parts.username is not None
        or _URL_FORBIDDEN.search(value)
    ):
        raise Invalid(f"expected an https URL without credentials, quotes or spaces, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class BrandSettings:
    portal_product_name: str = setting(
        "PORTAL_PRODUCT_NAME",
        "Agent Hosting",
        product_name,
        "The product's name on the customer portal's pages (titles and headers) and in its e-mail (From name, subject, text): 1-40 letters, digits, spaces and . , ' & ! ? : ( ) + / - (docs/portal.md).",
    )
    portal_logo: str = setting(
        "PORTAL_LOGO",
        "",
        optional(logo),
        "The logo in the portal pages' header: an https URL (the portal's CSP then allows images from exactly that origin) or the path of a local PNG or SVG file (at most 512 KiB) that the portal serves itself; empty: no logo.",
    )
    portal_accent_color: str = setting(
        "PORTAL_ACCENT_COLOR",
        "#2f5bea",
        matching(COLOR.fullmatch, "a colour as #rrggbb", fold=str.lower),
        "The portal's accent colour (buttons, links, the chosen plan), as #rrggbb; its text colour (white or black) is picked for contrast.",
    )
    support_email: str = setting(
        "SUPPORT_EMAIL",
        "",
        optional(matching(EMAIL.fullmatch, "an e-mail address")),
        "The address the portal's pages and e-mail give customers for help; empty: they say to contact support without an address.",
    )
