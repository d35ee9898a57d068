"""Protocol fuzzer: at least 10,000 mutated signed requests against the real app on
127.0.0.1 with a real SQLite file, written byte by byte on a raw HTTP/1.1 connection
so that nothing (client library, URL normaliser) cleans them up first.

The oracle is independent of the control plane's code paths. A request is *validly
signed* when each `X-Clawfleet-*` header appears exactly once, no query parameter is
named twice, and the signature recomputed here from the bytes actually sent
(docs/protocol.md's canonical string; tests/test_protocol_doc.py pins
shared/signing.py to the page) equals the one sent.
Three counts must stay 0:
  (a) forgeries: a 2xx for a request that is not validly signed, that reuses a
      (key, nonce) already accepted, or that comes from a revoked or deleted key;
  (b) dirty rejections: an answer other than 2xx/304 after which the database changed
      (a digest of servers, users, tokens, nonces and events, taken after every request);
  (c) 5xx answers.
Every mutation category is counted and must have been produced, so the test can fail.
Seeded (random.Random), one app, one connection; bounded to run in seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import pytest

from control.appkeys import FLEET
from control.capacity.scaler import Scaler
from control.workers.auth import AgentCaller
from shared import protocol, signing
from tests.fixtures import ControlPlane
from tests.worker import RESOURCES, FakeWorker

SEED = 20261127
MUTATED_REQUESTS = 10_000
SIGNED = [h.encode() for h in signing.SIGNED_HEADERS]
BOUNDARY_INTS = [
    2**63,
    2**63 - 1,
    2**64,
    2**64 + 1,
    -(2**63),
    -(2**63) - 1,
    -1,
    0,
    2**31,
    2**31 - 1,
    2**32,
    2**53,
    2**53 + 1,
    10**30,
    4096,
    4097,
]
NON_ASCII = ["é", "ü" * 40, "\u0663\u0661", "\ufeff", "\U0001f600", "\udcff"]
USERS = ("alice", "bob")


@dataclass
class Request:
    method: str
    target: bytes  # path and query exactly as sent
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def wire(self) -> bytes:
        lines = [f"{self.method} ".encode() + self.target + b" HTTP/1.1", b"Host: 127.0.0.1"]
        lines += [name + b": " + value for name, value in self.headers]
        if self.body or self.method == "POST":
            lines += [b"Content-Type: application/json", b"Content-Length: %d" % len(self.body)]
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body

    def header(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class RawClient:
    """One keep-alive HTTP/1.1 connection; reconnects when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None

    async def send(self, request: Request) -> tuple[int, bytes]:
        return await asyncio.wait_for(self._exchange(request.wire()), 10)

    async def _exchange(self, raw: bytes) -> tuple[int, bytes]:
        for attempt in range(2):
            if self._conn is None:
                self._conn = await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = self._conn
            try:
                writer.write(raw)
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()  # the server closed an idle keep-alive: once more
                if attempt:
                    raise
                continue
            status, length, close = _parse_head(head)
            body = await (reader.readexactly(length) if length >= 0 else reader.read())
            if close or length < 0:
                await self.close()
            return status, body
        raise AssertionError("unreachable")


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {
        k.strip().lower(): v.strip().lower() for k, _, v in (x.partition(":") for x in lines[1:])
    }
    length = int(fields.get("content-length", "0" if status in (204, 304) else "-1"))
    return status, length, fields.get("connection") == "close"


def validly_signed(req: Request, secrets: dict[str, str]) -> bool:
    values = [req.header(name) for name in SIGNED]
    if any(len(v) != 1 for v in values):
        return False
    try:
        key, ts, nonce, sig = (v[0].decode("ascii") for v in values)
        target = req.target.decode("ascii")
    except UnicodeDecodeError:
        return False
    secret = secrets.get(key)
    if secret is None:
        return False
    path, _, query = target.partition("?")
    names = [part.partition("=")[0] for part in query.split("&") if part]
    if len(names) != len({unquote(n) for n in names}):
        return False  # a parameter named twice has no one meaning to sign (docs/protocol.md)
    canonical = signing.canonical_string(req.method, path, query, ts, nonce, key, req.body)
    return signing.signature(secret, canonical) == sig


@dataclass
class Fuzz:
    control: ControlPlane
    rng: random.Random
    client: RawClient
    secrets: dict[str, str] = field(default_factory=dict)  # worker ids and token ids
    live: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)  # unconsumed token ids
    revoked: set[str] = field(default_factory=set)
    accepted_nonces: set[tuple[str, str]] = field(default_factory=set)
    replayable: list[Request] = field(default_factory=list)
    categories: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    forgeries: list[str] = field(default_factory=list)
    dirty: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    valid_refused: list[str] = field(default_factory=list)
    digest: bytes = b""
    scaler_ran: asyncio.Event = field(default_factory=asyncio.Event)

    # --- signing ------------------------------------------------------------------
    def nonce(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def sign(
        self, key: str, method: str, path: str, query: str = "", body: bytes = b"", ts: int = 0
    ) -> Request:
        stamp, nonce = str(ts or int(time.time())), self.nonce()
        canonical = signing.canonical_string(method, path, query, stamp, nonce, key, body)
        sig = signing.signature(self.secrets[key], canonical)
        headers = [(n, v.encode()) for n, v in zip(SIGNED, (key, stamp, nonce, sig), strict=True)]
        target = (path + (f"?{query}" if query else "")).encode()
        return Request(method, target, headers, body)

    def heartbeat_body(self, **changes: Any) -> dict[str, Any]:
        containers = [
            {
                "user_id": self.rng.choice(USERS),
                "state": self.rng.choice(["running", "exited", "pulling", "missing"]),
                "health": self.rng.choice(["healthy", "starting", "none"]),
                "image_id": "sha256:" + "ab" * 32,
                "started_at": "2026-11-27T10:00:00Z",
                "restart_count": self.rng.randrange(5),
                "error": self.rng.choice([None, "pull failed: timeout"]),
            }
            for _ in range(self.rng.randrange(3))
        ]
        body: dict[str, Any] = {
            "agent_version": "0.1.0",
            "applied_generation": self.rng.randrange(10),
            "resources": dict(RESOURCES),
            "containers": containers,
            "host": {"docker_version": "26.1.5", "metadata_blocked": True},
        }
        body.update(changes)
        return body

    def base(self, kind: str | None = None, key: str | None = None) -> Request:
        """A validly signed, fresh request of one of the three kinds."""
        kind = kind or self.rng.choice(["heartbeat", "heartbeat", "assignments", "register"])
        if kind == "register":
            body = {
                "protocol": 1,
                "agent_version": "0.1.0",
                "hostname": "fz",
                "resources": RESOURCES,
            }
            token = key or self.rng.choice(self.tokens)
            return self.sign(token, "POST", "/v1/agent/register", body=json.dumps(body).encode())
        key = key or self.rng.choice(self.live)
        if kind == "assignments":
            query = signing.encode_pairs([("after", str(self.rng.randrange(3))), ("wait", "0")])
            return self.sign(key, "GET", "/v1/agent/assignments", query)
        return self.sign(
            key, "POST", "/v1/agent/heartbeat", body=json.dumps(self.heartbeat_body()).encode()
        )

    # --- sending and judging ------------------------------------------------------
    def mutations(self) -> int:
        """Requests that were not plain valid traffic (the poisoned batches are not HTTP)."""
        return sum(n for c, n in self.categories.items() if c not in ("valid", "poisoned_batch"))

    def take_digest(self) -> bytes:
        # Autocommit reads on a WAL database: never blocks, never waits for the writer.
        db = sqlite3.connect(self.control.settings.database_path, timeout=10)
        try:
            h = hashlib.sha256()
            for sql in (
                "SELECT * FROM servers ORDER BY id",
                "SELECT * FROM users ORDER BY id",
                "SELECT * FROM bootstrap_tokens ORDER BY id",
                "SELECT COUNT(*), MAX(rowid) FROM nonces",
                "SELECT COUNT(*), MAX(id) FROM events",
            ):
                h.update(repr(db.execute(sql).fetchall()).encode())
            return h.digest()
        finally:
            db.close()

    async def send(self, category: str, req: Request, *, expect_ok: bool = False) -> int:
        self.categories[category] += 1
        status, body = await self.client.send(req)
        self.statuses[status] += 1
        what = f"{category}: {req.method} {req.target!r} -> {status} {body[:200]!r}"
        key = (req.header(SIGNED[0]) or [b""])[0].decode("latin-1")
        nonce = (req.header(SIGNED[2]) or [b""])[0].decode("latin-1").lower()
        ok = 200 <= status < 300
        if ok:
            if key in self.tokens:  # a registration within bounds: the token is used up
                self.tokens.remove(key)
            signed_ok = validly_signed(req, self.secrets)
            if not signed_ok or (key, nonce) in self.accepted_nonces or key in self.revoked:
                self.forgeries.append(what)
            self.accepted_nonces.add((key, nonce))
            if len(self.replayable) < 400:
                self.replayable.append(req)
        if status >= 500:
            self.server_errors.append(what)
        if expect_ok and not (ok or status == 304):
            self.valid_refused.append(what)
        after = self.take_digest()
        if not ok and status != 304 and after != self.digest:
            self.dirty.append(what)
        self.digest = after
        return status

    async def refresh(self) -> None:
        """After writes the fuzzer itself makes (not a request under test)."""
        self.digest = await asyncio.to_thread(self.take_digest)


# --- mutations: each takes a fresh validly signed request --------------------------------
def flip_bits(rng: random.Random, data: bytes) -> bytes:
    """1 to 3 distinct bits flipped: never the same bit twice, so never a no-op."""
    out = bytearray(data)
    for bit in rng.sample(range(len(out) * 8), rng.randint(1, 3)):
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def body_bitflip(fz: Fuzz) -> Request:
    req = fz.base(fz.rng.choice(["heartbeat", "register"]))
    return Request(req.method, req.target, req.headers, flip_bits(fz.rng, req.body))


def header_bitflip(fz: Fuzz) -> Request:
    req = fz.base()
    i = fz.rng.randrange(4)
    name, value = req.headers[i]
    # CR and LF would end the header line: that is framing, not a header value.
    flipped = flip_bits(fz.rng, value).replace(b"\r", b"\x0c").replace(b"\n", b"\x0b")
    req.headers[i] = (name, flipped)
    return req


def non_ascii(fz: Fuzz) -> Request:
    text = fz.rng.choice(NON_ASCII)
    encoded = text.encode("utf-8", "surrogateescape" if "\udcff" in text else "strict")
    choice = fz.rng.randrange(4)
    if choice == 0:  # in a signed header
        req = fz.base()
        i = fz.rng.randrange(4)
        name, value = req.headers[i]
        req.headers[i] = (name, fz.rng.choice([encoded, value + encoded, encoded + value]))
        return req
    if choice == 1:  # raw in the request target, after signing
        req = fz.base("assignments")
        return Request(req.method, req.target + encoded, req.headers, req.body)
    if choice == 2:  # percent-encoded in a signed query
        key = fz.rng.choice(fz.live)
        query = signing.encode_pairs([("after", text.encode("utf-8", "surrogatepass"))])
        return fz.sign(key, "GET", "/v1/agent/assignments", query)
    # In a signed body, where an identifier is expected.
    key = fz.rng.choice(fz.live)
    body = fz.heartbeat_body(agent_version=f"0.1.{text}")
    if fz.rng.random() < 0.5:
        body["containers"] = [{"user_id": f"al{text}", "state": "running", "health": "healthy"}]
    raw = json.dumps(body, ensure_ascii=fz.rng.random() < 0.5).encode("utf-8", "surrogatepass")
    return fz.sign(key, "POST", "/v1/agent/heartbeat", body=raw)


def dup_header(fz: Fuzz) -> Request:
    req = fz.base()
    i = fz.rng.randrange(4)
    name, value = req.headers[i]
    other = fz.rng.choice([value, b"0" * len(value), fz.nonce().encode(), b""])
    pair = [(name, value), (name.lower(), other)]
    fz.rng.shuffle(pair)
    req.headers[i : i + 1] = pair
    return req


def dup_query(fz: Fuzz) -> Request:
    key = fz.rng.choice(fz.live)
    name = fz.rng.choice(["after", "wait"])
    values = [str(fz.rng.randrange(10)) for _ in range(fz.rng.randint(2, 3))]
    pairs = [(name, v) for v in values] + [("wait", "0")] * (name == "after")
    if fz.rng.random() < 0.5:  # signed as such: the signature is fine, the request is not
        return fz.sign(key, "GET", "/v1/agent/assignments", signing.encode_pairs(pairs))
    req = fz.base("assignments", key)  # a duplicate appended after signing
    return Request(req.method, req.target + f"&{name}={values[0]}".encode(), req.headers)


def path_variant(fz: Fuzz) -> Request:
    req = fz.base()
    path, sep, query = req.target.partition(b"?")
    variants: list[Callable[[bytes], bytes]] = [
        lambda p: p + b"/",
        lambda p: p.upper(),
        lambda p: p.replace(b"/agent/", b"/Agent/"),
        lambda p: b"/" + p,
        lambda p: p.replace(b"/v1/", b"/v1//"),
        lambda p: p.replace(b"agent", b"%61gent"),
        lambda p: p.replace(b"/agent/", b"/agent/./"),
        lambda p: p.replace(b"/agent/", b"/x/../agent/"),
        lambda p: p + b";x=1",
        lambda p: p + b"%2F",
        lambda p: p.replace(b"/", b"%2F", 3),
        lambda p: b"http://127.0.0.1" + p,
    ]
    return Request(req.method, fz.rng.choice(variants)(path) + sep + query, req.headers, req.body)


def query_variant(fz: Fuzz) -> Request:
    """Same canonical query or a different one, each judged by the oracle alone."""
    req = fz.base("assignments")
    path, _, query = req.target.partition(b"?")
    parts = query.split(b"&")
    choice = fz.rng.randrange(4)
    if choice == 0:
        parts.reverse()  # reordered: still the signed canonical query
    elif choice == 1:  # values percent-encoded: still the signed canonical query
        split = (p.partition(b"=") for p in parts)
        parts = [n + b"=" + b"".join(b"%%%02X" % c for c in v) for n, _, v in split]
    elif choice == 2:
        parts.append(b"extra=1")
    else:
        parts = [p.replace(b"after", b"AFTER") for p in parts]
    return Request(req.method, path + b"?" + b"&".join(parts), req.headers)


def boundary_int(fz: Fuzz) -> Request:
    value = fz.rng.choice(BOUNDARY_INTS)
    if fz.rng.random() < 0.25:
        token = fz.rng.choice(fz.tokens)
        body: dict[str, Any] = {
            "protocol": 1,
            "agent_version": "0.1.0",
            "hostname": "fz",
            "resources": dict(RESOURCES),
        }
        target = fz.rng.choice(["protocol", "cpus", "memory_mb", "disk_gb"])
        if target == "protocol":
            body["protocol"] = value
        else:
            body["resources"][target] = value
        return fz.sign(token, "POST", "/v1/agent/register", body=json.dumps(body).encode())
    key = fz.rng.choice(fz.live)
    body = fz.heartbeat_body(containers=[])
    target = fz.rng.choice(
        ["applied_generation", "cpus", "memory_mb", "disk_gb", "memory_available_mb", "restart"]
    )
    if target == "applied_generation":
        body[target] = value
    elif target == "restart":
        body["containers"] = [
            {"user_id": "alice", "state": "running", "health": "none", "restart_count": value}
        ]
    else:
        body["resources"][target] = value
    return fz.sign(key, "POST", "/v1/agent/heartbeat", body=json.dumps(body).encode())


def stale(fz: Fuzz) -> Request:
    offset = fz.rng.choice([-1, 1]) * fz.rng.choice([301, 302, 3600, 10**9])
    key = fz.rng.choice(fz.live)
    body = json.dumps(fz.heartbeat_body()).encode()
    return fz.sign(key, "POST", "/v1/agent/heartbeat", body=body, ts=int(time.time()) + offset)


def revoked_key(fz: Fuzz) -> Request:
    return fz.base(fz.rng.choice(["heartbeat", "assignments"]), fz.rng.choice(sorted(fz.revoked)))


MUTATIONS: dict[str, Callable[[Fuzz], Request]] = {
    "body_bitflip": body_bitflip,
    "header_bitflip": header_bitflip,
    "non_ascii": non_ascii,
    "dup_header": dup_header,
    "dup_query": dup_query,
    "path_variant": path_variant,
    "query_variant": query_variant,
    "boundary_int": boundary_int,
    "stale_timestamp": stale,
    "revoked_or_deleted_key": revoked_key,
}


# --- set-up and the scenarios that are not a single request ------------------------------
def set_server(path: str, server_id: str, status: str | None) -> None:
    with sqlite3.connect(path, timeout=10) as db:
        if status is None:
            db.execute("DELETE FROM servers WHERE id = ?", (server_id,))
        else:
            db.execute("UPDATE servers SET status = ? WHERE id = ?", (status, server_id))


async def mint(fz: Fuzz) -> None:
    status, body = await fz.control.admin("POST", "/v1/join-tokens")
    assert status == 201, body
    token_id, _, secret = body["token"].partition(".")
    fz.secrets[token_id] = secret
    fz.tokens.append(token_id)


async def enrol(fz: Fuzz, hostname: str) -> str:
    await mint(fz)
    token_id = fz.tokens.pop()
    worker = FakeWorker(fz.control.url, fz.control.session, token_id, fz.secrets[token_id])
    assert (await worker.register(hostname)).status == 201
    fz.secrets[worker.key_id] = worker.secret
    return worker.key_id


async def settle(fz: Fuzz) -> None:
    """Waits out the autoscaler's start-up run (it deletes dead servers). With
    AUTOSCALE_INTERVAL at an hour and no user left pending, nothing but the requests
    under test writes after this, so a changed digest is theirs."""
    async with asyncio.timeout(10):
        await fz.scaler_ran.wait()
    fz.scaler_ran.clear()


async def setup(fz: Fuzz) -> None:
    for i in range(4):
        fz.live.append(await enrol(fz, f"live-{i}"))
    gone = {status: await enrol(fz, f"gone-{status}") for status in ("dead", "deleted", None)}
    for key in gone.values():
        # One request first, so the control plane caches its secret.
        assert (await fz.client.send(fz.base("heartbeat", key)))[0] == 200
    for user in USERS:
        status, body = await fz.control.admin(
            "POST", "/v1/users", {"user_id": user, "subdomain": user}
        )
        assert status == 201, body
    await settle(fz)
    for status, key in gone.items():
        await asyncio.to_thread(set_server, fz.control.settings.database_path, key, status)
        fz.revoked.add(key)
    await fz.refresh()


async def replay(fz: Fuzz, category: str, count: int) -> None:
    for req in fz.rng.sample(fz.replayable, min(count, len(fz.replayable))):
        await fz.send(category, req)


async def restart(fz: Fuzz) -> None:
    await fz.client.close()
    await fz.control.stop()
    await fz.control.start()
    await settle(fz)
    await fz.refresh()


async def poisoned_batch(fz: Fuzz) -> None:
    """All live workers heartbeat at once through the writer, one with 2^63 (as if the
    edge had let it through): the others are answered normally."""
    assert fz.control.app is not None
    writer = fz.control.app[FLEET].heartbeats
    poisoned = fz.rng.randrange(len(fz.live))
    beats = []
    for i, key in enumerate(fz.live):
        generation = 2**63 if i == poisoned else fz.rng.randrange(10)
        caller = AgentCaller(key, fz.nonce(), int(time.time()), b"")
        hb = protocol.Heartbeat("0.1.0", generation, protocol.Resources(**RESOURCES), [])
        beats.append(writer.submit(caller, hb, 10.0))
    results = await asyncio.gather(*beats, return_exceptions=True)
    fz.categories["poisoned_batch"] += 1
    for i, result in enumerate(results):
        if (i == poisoned) != isinstance(result, BaseException):
            fz.server_errors.append(f"poisoned batch: worker {i} got {result!r}")
    await fz.refresh()


async def test_protocol_fuzz(
    control_factory: Callable[..., ControlPlane], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Liveness and the autoscaler stay quiet for the test's length (see `settle`); a few
    # workers send thousands of requests, so no pace (tests/test_agent_pace.py has it).
    control = control_factory(
        heartbeat_interval=60, dead_after=600, autoscale_interval=3600, agent_calls_per_second=0
    )
    rng = random.Random(SEED)
    fz = Fuzz(control, rng, RawClient(control.settings.listen_port))
    scheduled_tick = Scaler.tick

    async def observed_tick(scaler: Scaler, scheduled: bool) -> None:
        await scheduled_tick(scaler, scheduled)
        fz.scaler_ran.set()

    monkeypatch.setattr(Scaler, "tick", observed_tick)
    await control.start()
    try:
        await setup(fz)
        names = sorted(MUTATIONS)
        started = time.monotonic()
        step = 0
        while fz.mutations() < MUTATED_REQUESTS:
            if step % 250 == 0:
                # Valid traffic between bursts: keeps workers alive, feeds the replays.
                for key in fz.live:
                    await fz.send("valid", fz.base("heartbeat", key), expect_ok=True)
                    await fz.send("valid", fz.base("assignments", key), expect_ok=True)
                await replay(fz, "replay", 20)
            if step % 2000 == 0:
                await poisoned_batch(fz)
            while len(fz.tokens) < 3:
                await mint(fz)
                await fz.refresh()
            if step == 5000:
                await restart(fz)
                await replay(fz, "replay_after_restart", 100)
            name = rng.choice(names)
            await fz.send(name, MUTATIONS[name](fz))
            step += 1
        elapsed = time.monotonic() - started
    finally:
        await fz.client.close()

    summary = f"{sum(fz.categories.values())} requests in {elapsed:.1f}s: {dict(fz.categories)}, statuses {dict(fz.statuses)}"
    assert not fz.forgeries, f"(a) accepted forgeries: {fz.forgeries[:5]}\n{summary}"
    assert not fz.dirty, (
        f"(b) rejected requests that changed the database: {fz.dirty[:5]}\n{summary}"
    )
    assert not fz.server_errors, f"(c) 5xx answers: {fz.server_errors[:5]}\n{summary}"
    assert not fz.valid_refused, f"valid requests refused: {fz.valid_refused[:5]}\n{summary}"
    assert fz.mutations() >= MUTATED_REQUESTS, summary
    for category in [*MUTATIONS, "replay", "replay_after_restart"]:
        assert fz.categories[category] >= 80, (category, summary)
    assert fz.categories["poisoned_batch"] >= 3, summary
    # The judged answers were not all one kind: the oracle saw accepts and refusals.
    accepted = fz.statuses[200] + fz.statuses[201] + fz.statuses[304]
    assert accepted > 500 and fz.statuses[401] > 1000 and fz.statuses[400] > 500, summary
