"""What the fake APIs share: naming the endpoint a request hit and reading its body,
so every fake records calls the same way."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


async def endpoint_and_body(request: web.Request, prefix: str) -> tuple[str, Any]:
    """("METHOD /path/{param}" without `prefix`, the JSON body or its text or None)."""
    resource = request.match_info.route.resource
    path = resource.canonical if resource is not None else ""
    endpoint = f"{request.method} {path.removeprefix(prefix)}" if path else ""
    body: Any = None
    if request.can_read_body:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
    return endpoint, body
