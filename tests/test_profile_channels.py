"""Chat-app tokens among the settings a customer may change (issue 15, point 4): the
OpenClaw profile lists the Telegram bot token next to the model-provider keys, each
with the label and hint a buyer reads (`[secrets.about]`, refused at load when
malformed); the customer's page lists them so; and a token set there restarts the
agent with it in its secret file only: never in a reply, the page, a log, or the
container's env, labels or command (what `docker inspect` would show). The real
gateway picking it up: tests/test_profile_channels_gateway.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from control.settings import profiles
from shared.config import Invalid
from tests.dashboard.http import Reply, call
from tests.fakes.stripe_api import StripeFake, stripe_fake_fixture  # noqa: F401
from tests.fixtures import ControlPlane
from tests.portal_customers import Inbox, Signed, add_customer, portal_plane, sign_in, smtp  # noqa: F401
from tests.test_protocol import registered

TOKEN = "7712345678:AAH-portal-" + "t3l3gr4m" * 4  # a value no log line has by chance
AGENT = "/portal/api/account/agents/alice"
HEAD = "min_memory_mb = 64\n[volumes]\nstate = '/d'\n[secrets]\nvolume = 'state'\npath = '.env'\n"
NAMES = "names = ['A_KEY', 'B_KEY']\n"


def test_the_openclaw_profile_offers_the_telegram_token_with_words_for_a_buyer() -> None:
    profile = profiles.load("openclaw")
    assert "TELEGRAM_BOT_TOKEN" in profile.secret_names
    assert [f.name for f in profile.secret_fields] == list(profile.secret_names)
    for field in profile.secret_fields:  # every name has a label that is not the name
        assert field.label != field.name and field.hint, field
    telegram = next(f for f in profile.secret_fields if f.name == "TELEGRAM_BOT_TOKEN")
    assert telegram.label == "Telegram bot token" and "@BotFather" in telegram.hint


def test_a_name_without_words_is_labelled_by_itself(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(HEAD + NAMES + "[secrets.about]\nB_KEY = {label = 'Bee'}\n")
    fields = profiles.load(str(path)).secret_fields
    assert fields == (
        profiles.SecretField("A_KEY", "A_KEY", ""),
        profiles.SecretField("B_KEY", "Bee", ""),
    )


@pytest.mark.parametrize(
    ("about", "fragment"),
    [
        ("C_KEY = {label = 'Sea'}", "secrets.about.C_KEY: not one of secrets.names"),
        ("A_KEY = {hint = 'h'}", "secrets.about.A_KEY.label: required"),
        ("A_KEY = {label = 'A', colour = 'red'}", "secrets.about.A_KEY.colour: unknown key"),
        ("A_KEY = 'A'", "secrets.about.A_KEY: expected a table"),
        ("A_KEY = {label = 1}", "secrets.about.A_KEY.label: expected str"),
        ("A_KEY = {label = ''}", "secrets.about.A_KEY.label: expected one line of 1-60"),
        ("A_KEY = {label = '  '}", "secrets.about.A_KEY.label: expected one line of 1-60"),
        ('A_KEY = {label = "a\\nb"}', "secrets.about.A_KEY.label: expected one line"),
        (f"A_KEY = {{label = '{'x' * 61}'}}", "secrets.about.A_KEY.label: expected one line"),
        (
            f"A_KEY = {{label = 'A', hint = '{'x' * 201}'}}",
            "A_KEY.hint: expected one line of 1-200",
        ),
        ('A_KEY = {label = "A", hint = "tab\\there"}', "secrets.about.A_KEY.hint"),
    ],
)
def test_malformed_words_are_refused_at_load(tmp_path: Path, about: str, fragment: str) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(HEAD + NAMES + "[secrets.about]\n" + about + "\n")
    with pytest.raises(Invalid) as info:
        profiles.load(str(path))
    assert str(info.value).startswith(f"{path}: ") and fragment in str(info.value)


def test_about_must_be_a_table(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(HEAD + NAMES + "about = ['A_KEY']\n")
    with pytest.raises(Invalid, match=r"secrets\.about: expected dict"):
        profiles.load(str(path))


@pytest.fixture
async def plane(
    control_factory: Callable[..., ControlPlane],
    smtp: tuple[Inbox, int],  # noqa: F811
    stripe_fake: StripeFake,
) -> ControlPlane:
    cp = portal_plane(control_factory, smtp[1], stripe_fake)
    await cp.start()
    await add_customer(cp, "alice", "alice@example.com", "cus_alice")
    return cp


async def on(
    plane: ControlPlane, who: Signed, method: str, path: str, body: object = None
) -> Reply:
    return await call(plane, method, path, headers=who.headers(), json=body)


async def test_the_page_lists_each_setting_with_its_label_and_hint(
    plane: ControlPlane,
    smtp: tuple[Inbox, int],  # noqa: F811
) -> None:
    await registered(plane)
    alice = await sign_in(plane, smtp[0], "alice@example.com")
    settings = (await on(plane, alice, "GET", AGENT)).json()["settings"]
    expected = [
        {"name": f.name, "label": f.label, "hint": f.hint}
        for f in plane.settings.tenant_profile.secret_fields
    ]
    assert settings["fields"] == expected
    assert "TELEGRAM_BOT_TOKEN" in settings["allowed"] and settings["set"] == []


async def test_a_telegram_token_restarts_the_agent_with_it_and_is_shown_nowhere(
    plane: ControlPlane,
    smtp: tuple[Inbox, int],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    worker = await registered(plane)
    alice = await sign_in(plane, smtp[0], "alice@example.com")
    before = next(c for c in (await worker.assignments()).body["containers"])
    reply = await on(plane, alice, "PUT", AGENT + "/settings", {"TELEGRAM_BOT_TOKEN": TOKEN})
    assert reply.status == 200 and reply.json()["set"] == ["TELEGRAM_BOT_TOKEN"]
    spec = next(c for c in (await worker.assignments()).body["containers"])
    assert spec["user_id"] == "alice" and spec["spec_hash"] != before["spec_hash"]
    assert spec["secret_files"] == [
        {
            "volume": "clawfleet-alice-state",
            "path": ".env",
            "content": f"TELEGRAM_BOT_TOKEN={TOKEN}\n",
        }
    ]
    # What Docker is given besides the file: env, labels, command.
    visible = json.dumps([spec["env"], spec["labels"], spec["command"]])
    seen = {
        "reply": reply.text,
        "agent view": (await on(plane, alice, "GET", AGENT)).text,
        "account": (await on(plane, alice, "GET", "/portal/api/account")).text,
        "page": (await on(plane, alice, "GET", "/portal/account")).text,
        "container's env, labels, command": visible,
        "log": caplog.text,
    }
    assert [where for where, text in seen.items() if TOKEN in text] == []
