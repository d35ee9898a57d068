"""The `make run` demo's stand-in for a mail server: a returning customer's sign-in link
is printed in the control plane's log, marked DEMO, instead of mailed (docs/portal.md,
README's demo), so a newcomer can sign in again without setting up SMTP.

Contract:
- `enabled(settings)` is pure: PROVIDER=local, no SMTP_HOST, no STRIPE_SECRET_KEY and
  Stripe in test mode, all four. Never with PROVIDER=hetzner, a Stripe key or live mode
  (which a Hetzner deployment without a key is: control/settings/rules.py
  `stripe_livemode`), so a real deployment's links never reach a log; with an
  SMTP_HOST they are always mailed.
- `mailer_for(settings)` is what control/portal/customers.py puts under `MAILER`: a
  `DemoMailer` when `enabled` (and one WARNING line at start-up saying so), its
  settings' MAIL_FROM `DEMO_FROM` when unset (the message needs a From), else the
  SMTP `Mailer` (control/portal/mail.py).
- `DemoMailer` is a `Mailer` that is always on and whose `send` logs, at WARNING on
  this module's logger, one line starting `DEMO`: the recipient and the message's
  links. Nothing else in it differs (the sign-in route, its limits and its answer's
  timing are the real ones); the route answers `SENT` instead of saying it mailed.
"""

from __future__ import annotations

import logging
import re
from email.message import EmailMessage

from control.portal.mail import Mailer
from control.settings import Settings

log = logging.getLogger(__name__)
_URL = re.compile(r"https?://\S+")
DEMO_FROM = "demo@example.com"
SENT = (
    "Demo without a mail server: if that address has an agent here, its sign-in link "
    "is printed in the control plane's log (the terminal running make run), marked DEMO."
)


def enabled(settings: Settings) -> bool:
    return (
        settings.provider == "local"
        and not settings.smtp_host
        and not settings.stripe_secret_key
        and not settings.stripe_livemode
    )


def mailer_for(settings: Settings) -> Mailer:
    if not enabled(settings):
        return Mailer(settings)
    log.warning(
        "DEMO: no SMTP_HOST, so customers' sign-in links are printed in this log instead "
        "of mailed (only ever with PROVIDER=local and no Stripe key; set SMTP_HOST to mail them)"
    )
    return DemoMailer(settings.with_overrides(mail_from=settings.mail_from or DEMO_FROM))


class DemoMailer(Mailer):
    def __repr__(self) -> str:
        return "DemoMailer(log)"

    @property
    def enabled(self) -> bool:
        return True

    async def send(self, message: EmailMessage) -> None:
        body = message.get_body(("plain",))
        text = body.get_content() if body is not None else ""
        links = " ".join(_URL.findall(text)) or "(no link)"
        log.warning("DEMO sign-in link for %s (not mailed: no SMTP_HOST): %s", message["To"], links)
