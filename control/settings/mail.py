"""The outgoing mail variables (customers' sign-in links, docs/portal.md), declared like
every other setting.

Contract: `MailSettings` is a frozen, keyword-only dataclass that `Settings` inherits
(like BackupSettings: the settings module has no room left under the 400-line rule).
An empty SMTP_HOST turns sign-in by email off: the portal's sign-in page says so and
sends nothing. With a host, `check_mail` requires MAIL_FROM, and a user and a password
together or neither. SMTP_TLS is `starttls` (upgrade after connecting, usually port
587), `tls` (TLS from the first byte, usually 465) or `none` (plain: only for a relay
on this machine or a test server). SMTP_PASSWORD is a secret: never in repr, errors or
the docs' values.
"""

from __future__ import annotations

from dataclasses import dataclass

from control.settings.rules import SettingsError
from shared.config import choice, matching, number, optional, port, setting, text
from shared.names import EMAIL

_TLS_DOC = (
    "How the SMTP connection is encrypted: starttls (upgrade after connecting, usually "
    "port 587), tls (TLS from the first byte, usually 465) or none (plain text: only for "
    "a relay on this machine)."
)


@dataclass(frozen=True, kw_only=True)
class MailSettings:
    smtp_host: str = setting(
        "SMTP_HOST",
        "",
        text,
        "SMTP server that sends customers their one-time sign-in links (docs/portal.md); empty: sign-in by email is off.",
    )
    smtp_port: int = setting("SMTP_PORT", "587", port, "Port of SMTP_HOST.")
    smtp_tls: str = setting(
        "SMTP_TLS", "starttls", choice("starttls", "tls", "none", fold=str.lower), _TLS_DOC
    )
    smtp_user: str = setting("SMTP_USER", "", text, "SMTP user name; empty: no authentication.")
    smtp_password: str = setting(
        "SMTP_PASSWORD", "", text, "SMTP password of SMTP_USER.", secret=True
    )
    smtp_timeout: float = setting(
        "SMTP_TIMEOUT",
        "30",
        number(1, 300),
        "Seconds one message may take to send before it counts as failed.",
    )
    mail_from: str = setting(
        "MAIL_FROM",
        "",
        optional(matching(EMAIL.fullmatch, "an e-mail address")),
        "The From address of the portal's mail (required with SMTP_HOST).",
    )

    @property
    def mail_enabled(self) -> bool:
        return bool(self.smtp_host)

    def check_mail(self) -> None:
        """With a host, the mail must have a sender, and credentials come in pairs."""
        if not self.mail_enabled:
            return
        if not self.mail_from:
            raise SettingsError("MAIL_FROM: required when SMTP_HOST is set")
        if bool(self.smtp_user) != bool(self.smtp_password):
            raise SettingsError("SMTP_USER and SMTP_PASSWORD: set both or neither")
