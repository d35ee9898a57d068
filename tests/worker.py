"""A bare protocol client for tests: signs exactly as docs/protocol.md says and lets
a test tamper with any part of a request."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agent.features import FEATURES
from shared import signing

RESOURCES = {"cpus": 4, "memory_mb": 8192, "disk_gb": 80}


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeWorker:
    url: str
    session: aiohttp.ClientSession
    key_id: str = ""
    secret: str = ""
    sent: list[dict[str, Any]] = field(default_factory=list)
    # What it registered with; its heartbeats report the same, as a real agent's do.
    resources: dict[str, Any] = field(default_factory=lambda: dict(RESOURCES))
    # The agent features it declares, at registration and in each heartbeat: by default
    # all a current agent's (agent/features.py); [] plays an agent older than features.
    features: list[str] = field(default_factory=lambda: list(FEATURES))

    @classmethod
    def with_token(cls, url: str, session: aiohttp.ClientSession, token: str) -> FakeWorker:
        key_id, _, secret = token.partition(".")
        return cls(url, session, key_id, secret)

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        *,
        raw_body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timestamp: int | None = None,
        nonce: str | None = None,
        tamper: Any = None,
    ) -> Reply:
        data = (
            raw_body
            if raw_body is not None
            else (b"" if body is None else json.dumps(body).encode())
        )
        query, signed = signing.sign_request(
            self.key_id, self.secret, method, path, params, data, timestamp=timestamp, nonce=nonce
        )
        all_headers = {**signed, **(headers or {})}
        if data:
            all_headers.setdefault("Content-Type", "application/json")
        sent = data if tamper is None else tamper(data)
        self.sent.append(
            {"method": method, "path": path, "query": query, "headers": all_headers, "body": sent}
        )
        return await self.send(method, path + ("?" + query if query else ""), all_headers, sent)

    async def send(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        async with self.session.request(method, self.url + target, data=body, headers=headers) as r:
            payload = await r.json() if r.content_type == "application/json" else {}
            return Reply(r.status, payload, dict(r.headers))

    async def replay(self, index: int = -1) -> Reply:
        last = self.sent[index]
        target = last["path"] + ("?" + last["query"] if last["query"] else "")
        return await self.send(last["method"], target, last["headers"], last["body"])

    async def register(self, hostname: str = "worker-1", **overrides: Any) -> Reply:
        body = {
            "protocol": 1,
            "agent_version": "0.1.0",
            "hostname": hostname,
            "resources": RESOURCES,
            "features": self.features,
        }
        body.update(overrides)
        reply = await self.request("POST", "/v1/agent/register", body)
        if reply.status == 201:
            self.key_id = reply.body["worker_id"]
            self.secret = reply.body["secret"]
            self.resources = dict(body["resources"])
        return reply

    async def heartbeat(
        self, containers: list[dict[str, Any]] | None = None, generation: int = 0
    ) -> Reply:
        body = {
            "agent_version": "0.1.0",
            "applied_generation": generation,
            "resources": self.resources,
            "containers": containers or [],
            "features": self.features,
        }
        return await self.request("POST", "/v1/agent/heartbeat", body)

    async def assignments(self, after: int = 0, wait: int = 0) -> Reply:
        return await self.request(
            "GET", "/v1/agent/assignments", params={"after": str(after), "wait": str(wait)}
        )
