"""The portal's mail settings and its SMTP client against a real SMTP server: the rules
across variables, a login when a user is set, and STARTTLS never falling back to
plain text."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import aiosmtplib
import pytest

from control.portal.mail import Mailer, signin_message
from control.settings import Settings, SettingsError
from tests.fixtures import make_settings
from tests.portal_customers import MAIL_FROM, Inbox, smtp  # noqa: F401

BASE = {"ADMIN_TOKEN": "a" * 32, "INTERNAL_SECRET": "b" * 32}


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({}, None),  # no SMTP_HOST: sign-in by e-mail is off
        ({"SMTP_HOST": "smtp.example.com", "MAIL_FROM": MAIL_FROM}, None),
        ({"SMTP_HOST": "smtp.example.com"}, "MAIL_FROM: required"),
        ({"SMTP_HOST": "h", "MAIL_FROM": MAIL_FROM, "SMTP_USER": "u"}, "SMTP_USER and"),
        ({"SMTP_HOST": "h", "MAIL_FROM": MAIL_FROM, "SMTP_PASSWORD": "p" * 9}, "SMTP_USER and"),
        ({"MAIL_FROM": "not an address"}, "MAIL_FROM: expected an e-mail address"),
        ({"SMTP_TLS": "ssl"}, "SMTP_TLS: expected one of starttls, tls, none"),
    ],
)
def test_mail_settings(env: dict[str, str], error: str | None) -> None:
    if error is None:
        Settings.from_env({**BASE, **env})
        return
    with pytest.raises(SettingsError, match=error) as caught:
        Settings.from_env({**BASE, **env})
    assert "p" * 9 not in str(caught.value)


def _mailer(tmp_path: Path, port: int, **more: object) -> Mailer:
    settings = make_settings(
        tmp_path, smtp_host="127.0.0.1", smtp_port=port, mail_from=MAIL_FROM, **more
    )
    return Mailer(settings)


async def test_starttls_never_falls_back_to_plain_text(
    tmp_path: Path,
    smtp: tuple[Inbox, int],  # noqa: F811
) -> None:
    inbox, port = smtp
    mailer = _mailer(tmp_path, port, smtp_tls="starttls")
    message = signin_message(mailer.settings, "a@example.com", "http://x/#t", 15)
    with pytest.raises(aiosmtplib.SMTPException):
        await mailer.send(message)  # this server offers no STARTTLS
    assert inbox.messages.empty()
    plain = dataclasses.replace(mailer.settings, smtp_tls="none")
    await Mailer(plain).send(message)
    recipients, received = await inbox.next()
    assert recipients == ["a@example.com"] and "http://x/#t" in received.get_content()


async def test_a_failed_send_is_logged_without_the_link(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.ports import free_port

    mailer = _mailer(tmp_path, free_port(), smtp_tls="none", smtp_timeout=5.0)
    mailer.send_later(signin_message(mailer.settings, "a@example.com", "http://x/#secret", 15))
    await mailer.close()
    (record,) = [r for r in caplog.records if r.name == "control.portal.mail"]
    assert "sign-in link failed" in record.getMessage()
    assert "secret" not in record.getMessage() and "a@example.com" not in record.getMessage()
