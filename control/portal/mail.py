"""The portal's outgoing mail: a returning customer's one-time sign-in link, over SMTP.

Contract:
- `signin_message(settings, to, url, minutes)` is pure: the plain-text message, From
  MAIL_FROM under the product's name (PORTAL_PRODUCT_NAME, also in the subject and the
  text, always on one line), that carries the link and says how long it works, what to
  do when the customer did not ask for it and, with SUPPORT_EMAIL, whom to ask.
- `Mailer(settings)` sends with aiosmtplib per MailSettings (control/settings/mail.py):
  SMTP_TLS `tls` connects with TLS, `starttls` requires the upgrade (a server that
  does not offer it is an error, never a plain-text fallback), `none` sends in plain
  text; SMTP_USER/SMTP_PASSWORD log in when set. Every send is bounded by SMTP_TIMEOUT.
- `Mailer.send_later(message)` sends in the background, so a request that asks for a
  link answers as fast whether or not the address is known and a mail was sent (no
  timing oracle); a failure is logged with the SMTP error's class and code, never
  the message (it holds a credential). `Mailer.close()` waits for sends under way.
- Nothing here logs a link, a token or an address.
"""

from __future__ import annotations

import asyncio
import logging
from email.headerregistry import Address
from email.message import EmailMessage

import aiosmtplib

from control.settings import Settings

log = logging.getLogger(__name__)


def signin_message(settings: Settings, to: str, url: str, minutes: int) -> EmailMessage:
    product = one_line(settings.portal_product_name)
    message = EmailMessage()
    message["From"] = Address(display_name=product, addr_spec=settings.mail_from)
    message["To"] = to
    message["Subject"] = f"Your sign-in link for {product}"
    support = settings.support_email
    help_line = f"\nQuestions? Write to {support}.\n" if support else ""
    message.set_content(
        "Hello,\n\n"
        f"Open this link to sign in to your {product} account. It works once, "
        f"for {minutes} minutes:\n\n{url}\n\n"
        "If you did not ask to sign in, ignore this message: nothing happens "
        "unless the link is opened.\n" + help_line
    )
    return message


def one_line(text: str) -> str:
    """Whitespace runs (line breaks included) as one space: the settings refuse control
    characters at start-up, and this keeps a header one header whatever reaches it."""
    return " ".join(text.split())


class Mailer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._sending: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"Mailer({self.settings.smtp_host}:{self.settings.smtp_port})"

    @property
    def enabled(self) -> bool:
        return self.settings.mail_enabled

    async def send(self, message: EmailMessage) -> None:
        s = self.settings
        await aiosmtplib.send(
            message,
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_user or None,
            password=s.smtp_password or None,
            use_tls=s.smtp_tls == "tls",
            start_tls=s.smtp_tls == "starttls",
            timeout=s.smtp_timeout,
        )

    def send_later(self, message: EmailMessage) -> None:
        task = asyncio.create_task(self._send_logged(message), name="portal-mail")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_logged(self, message: EmailMessage) -> None:
        try:
            await self.send(message)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            code = getattr(exc, "code", "")
            log.error(
                "portal mail: sending a sign-in link failed (%s %s)", type(exc).__name__, code
            )

    async def close(self) -> None:
        """Waits for the sends under way (each bounded by SMTP_TIMEOUT)."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
