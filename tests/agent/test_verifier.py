"""The sign-in verifier (agent/verifier.py) served on a real port, asked by a real
HTTP client the way Traefik asks it; the clock is injected."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from msgspec.structs import replace

from agent.verifier import MAX_NONCES, Verifier, serve
from shared import signin
from shared.protocol import ContainerSpec
from tests.agent.specs import make_spec
from tests.ports import free_port

ALICE, BOB = "alice", "bob"
HOST_A, HOST_B = "alice.clawfleet.test", "bob.clawfleet.test"
KEY_A, KEY_B = signin.signin_key("gw-token-alice"), signin.signin_key("gw-token-bob")
HEADER = "X-Clawfleet-User"
NOW = 1_900_000_000.0


@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class Served:
    url: str
    http: aiohttp.ClientSession
    clock: Clock
    verifier: Verifier

    async def get(self, path: str, host: str, **headers: str) -> aiohttp.ClientResponse:
        response = await self.http.get(
            self.url + path,
            headers={"X-Forwarded-Host": host, **headers},
            allow_redirects=False,
        )
        await response.read()
        return response


def specs() -> list[ContainerSpec]:
    base = [make_spec(ALICE, "img", route_host=HOST_A), make_spec(BOB, "img", route_host=HOST_B)]
    keyed = [
        replace(base[0], signin_key=KEY_A, identity_header=HEADER),
        replace(base[1], signin_key=KEY_B, identity_header=HEADER),
    ]
    ungated = make_spec("carol", "img", route_host="carol.clawfleet.test")
    return [*keyed, ungated]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    clock = Clock()
    verifier = Verifier(clock)
    verifier.set_specs(specs())
    port = free_port()
    runner = await serve(verifier, port)
    # A cookie jar that keeps nothing: each test passes cookies explicitly, per host.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        yield Served(f"http://127.0.0.1:{port}", http, clock, verifier)
    await runner.cleanup()


def ticket(key: str = KEY_A, user: str = ALICE, expires: float = NOW + 300, nonce: str = "") -> str:
    return signin.make_ticket(key, user, int(expires), nonce or signin.new_nonce())


async def sign_in(
    served: Served, t: str, host: str = HOST_A, **headers: str
) -> aiohttp.ClientResponse:
    return await served.get(f"/_clawfleet/signin?ticket={t}", host, **headers)


def session_of(response: aiohttp.ClientResponse) -> str:
    return response.cookies[signin.COOKIE].value


async def test_a_ticket_signs_in_once_with_a_host_only_cookie(served: Served) -> None:
    t = ticket()
    first = await sign_in(served, t)
    assert first.status == 303 and first.headers["Location"] == "/"
    raw = first.headers["Set-Cookie"]
    attrs = {a.strip().split("=", 1)[0].lower() for a in raw.split(";")}
    assert "domain" not in attrs  # host-only: no other subdomain ever gets it
    assert {"httponly", "path", "samesite"} <= attrs and "secure" not in attrs
    assert "SameSite=Lax" in raw and "Path=/" in raw
    assert signin.check_session(KEY_A, ALICE, session_of(first), NOW)

    again = await sign_in(served, t)
    assert again.status == 403 and "Set-Cookie" not in again.headers


async def test_secure_cookie_behind_https(served: Served) -> None:
    response = await sign_in(served, ticket(), **{"X-Forwarded-Proto": "https"})
    assert response.status == 303
    assert "secure" in response.headers["Set-Cookie"].lower()


async def test_expired_ticket_is_refused(served: Served) -> None:
    t = ticket(expires=NOW + 300)
    served.clock.now = NOW + 301
    assert (await sign_in(served, t)).status == 403
    served.clock.now = NOW + 300
    assert (await sign_in(served, t)).status == 303


@pytest.mark.parametrize(
    ("key", "user", "host"),
    [
        (KEY_B, BOB, HOST_A),  # bob's ticket on alice's host
        (KEY_B, ALICE, HOST_A),  # signed with another key
        (KEY_A, BOB, HOST_A),  # alice's key, bob's name
    ],
)
async def test_a_ticket_for_another_user_or_key_is_refused(
    served: Served, key: str, user: str, host: str
) -> None:
    assert (await sign_in(served, ticket(key, user), host)).status == 403


async def test_oversized_and_malformed_tickets_are_refused(served: Served) -> None:
    assert (await sign_in(served, "t1." + "a" * 5000)).status in (403, 414, 400)
    assert (await sign_in(served, "garbage")).status == 403
    assert (await sign_in(served, "")).status == 403


async def test_auth_accepts_this_hosts_session_and_names_the_user(served: Served) -> None:
    cookie = session_of(await sign_in(served, ticket()))
    ok = await served.get("/_clawfleet/auth", HOST_A, Cookie=f"{signin.COOKIE}={cookie}")
    assert ok.status == 200 and ok.headers[HEADER] == ALICE


async def test_auth_refuses_no_cookie_and_another_users_cookie(served: Served) -> None:
    bob_cookie = session_of(await sign_in(served, ticket(KEY_B, BOB), HOST_B))
    for headers in ({}, {"Cookie": f"{signin.COOKIE}={bob_cookie}"}):
        refused = await served.get("/_clawfleet/auth", HOST_A, **headers)
        assert refused.status == 401 and HEADER not in refused.headers
        body = await refused.text()
        assert "sign-in link" in body and ALICE not in body and BOB not in body
    # The same cookie is fine on its own host.
    own = await served.get("/_clawfleet/auth", HOST_B, Cookie=f"{signin.COOKIE}={bob_cookie}")
    assert own.status == 200 and own.headers[HEADER] == BOB


async def test_sessions_expire_and_end_when_the_key_rotates(served: Served) -> None:
    cookie = session_of(await sign_in(served, ticket()))
    headers = {"Cookie": f"{signin.COOKIE}={cookie}"}
    served.verifier.set_specs(
        [
            replace(s, signin_key=signin.signin_key("rotated")) if s.user_id == ALICE else s
            for s in specs()
        ]
    )
    assert (await served.get("/_clawfleet/auth", HOST_A, **headers)).status == 401
    served.verifier.set_specs(specs())
    assert (await served.get("/_clawfleet/auth", HOST_A, **headers)).status == 200
    served.clock.now = NOW + signin.SESSION_SECONDS + 1
    assert (await served.get("/_clawfleet/auth", HOST_A, **headers)).status == 401


@pytest.mark.parametrize("host", ["nobody.clawfleet.test", "carol.clawfleet.test", ""])
async def test_unknown_or_ungated_host_is_404(served: Served, host: str) -> None:
    for path in ("/_clawfleet/auth", f"/_clawfleet/signin?ticket={ticket()}"):
        assert (await served.get(path, host)).status == 404


async def test_host_falls_back_to_host_header_and_ignores_port_and_case(served: Served) -> None:
    response = await served.http.get(
        served.url + f"/_clawfleet/signin?ticket={ticket()}",
        headers={"Host": "Alice.Clawfleet.Test:8000"},
        allow_redirects=False,
    )
    assert response.status == 303


async def test_nonce_memory_is_bounded(served: Served) -> None:
    used = served.verifier._used  # the bound is the point of the test
    for i in range(MAX_NONCES - 1):
        used[f"{i:032x}"] = NOW + 300
    used["f" * 32] = NOW - 1  # expired: makes room
    assert (await sign_in(served, ticket())).status == 303
    assert len(used) == MAX_NONCES
    full = await sign_in(served, ticket())
    assert full.status == 503  # never forgets a live nonce to make room
    served.clock.now = NOW + 301
    assert (await sign_in(served, ticket(expires=NOW + 600))).status == 303
    assert len(used) == 1


async def test_oversized_headers_are_refused(served: Served) -> None:
    response = await served.get("/_clawfleet/auth", HOST_A, Cookie="x=" + "a" * 20000)
    assert response.status in (400, 431)


def test_the_app_serves_only_the_two_paths() -> None:
    paths = {r.resource.canonical for r in Verifier().app().router.routes() if r.resource}
    assert paths == {"/_clawfleet/signin", "/_clawfleet/auth"}
    assert isinstance(Verifier().app(), web.Application)


async def test_a_link_used_before_a_restart_stays_used(tmp_path: Path) -> None:
    """The spent nonces outlive the agent: a new Verifier on the same file refuses a ticket
    the old one accepted, forgets nonces whose tickets have expired, and keeps the file
    private."""
    spent = tmp_path / "signin-spent"
    clock = Clock()
    first = Verifier(clock, spent=spent)
    first.set_specs(specs())
    used, fresh = ticket(), ticket()
    port = free_port()
    runner = await serve(first, port)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        served = Served(f"http://127.0.0.1:{port}", http, clock, first)
        assert (await sign_in(served, used)).status == 303
    await runner.cleanup()
    assert spent.stat().st_mode & 0o777 == 0o600

    spent.write_text(spent.read_text() + f"{'ab' * 16} {int(NOW) - 1}\ngarbage line\n")
    second = Verifier(clock, spent=spent)
    second.set_specs(specs())
    port = free_port()
    runner = await serve(second, port)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        served = Served(f"http://127.0.0.1:{port}", http, clock, second)
        assert (await sign_in(served, used)).status == 403
        assert (await sign_in(served, fresh)).status == 303
    await runner.cleanup()
    lines = spent.read_text().splitlines()
    assert len(lines) == 2 and not any("ab" * 16 in line or "garbage" in line for line in lines)


async def test_a_link_whose_use_cannot_be_recorded_is_refused_and_stays_usable(
    tmp_path: Path,
) -> None:
    """Recording the spent nonce fails (here the file is a directory): no cookie, a 503,
    and the link is not burnt, so it works once the file can be written again."""
    spent = tmp_path / "signin-spent"
    clock = Clock()
    verifier = Verifier(clock, spent=spent)
    verifier.set_specs(specs())
    spent.unlink()
    spent.mkdir()
    t = ticket()
    port = free_port()
    runner = await serve(verifier, port)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        served = Served(f"http://127.0.0.1:{port}", http, clock, verifier)
        refused = await sign_in(served, t)
        assert refused.status == 503 and "Set-Cookie" not in refused.headers
        spent.rmdir()
        assert (await sign_in(served, t)).status == 303
        assert (await sign_in(served, t)).status == 403
    await runner.cleanup()
