"""The autoscaler's repairs: servers that never registered, dead servers, and creates
whose outcome was never learned.

Contract:
- A created server that has not registered PROVISION_TIMEOUT after its create was
  confirmed is deleted (`provision_timeout`) and its users' demand creates another.
- A dead server (its users already released) is deleted at the provider; a row left
  `deleting` by a crash is finished.
- An unconfirmed create is called again while PROVISION_TIMEOUT has not passed (the
  provider adopts the server by name). After it, the create is given up
  (`create_abandoned`) only on a definite answer from the provider that no server
  carries its id label; until then it keeps counting against MAX_SERVERS.
"""

from __future__ import annotations

from control.capacity import decisions
from control.capacity.providers.base import ProviderError
from control.capacity.provisioning import Provisioner
from control.db.store import Row


async def expire_provisioning(p: Provisioner) -> None:
    now = p.clock()
    rows = await p.store.fetch_all(
        "SELECT * FROM servers WHERE status = 'provisioning' AND origin = 'provider'"
    )
    timeout = p.settings.provision_timeout
    for row in rows:
        if decisions.provision_expired(
            row["create_confirmed_at"], row["registered_at"], now, timeout
        ):
            await p.delete(
                row,
                "provision_timeout",
                f"not registered {timeout:.0f}s after it was created; replacing it",
            )


async def delete_dead(p: Provisioner) -> None:
    for row in await p.store.fetch_all(
        "SELECT * FROM servers WHERE status IN ('dead', 'deleting')"
    ):
        reason = (
            "dead: its users were placed elsewhere"
            if row["status"] == "dead"
            else "finishing deletion"
        )
        await p.delete(row, "server_deleting", reason)


async def retry_unconfirmed(p: Provisioner) -> None:
    """Creates whose outcome we never learned (timeout, crash): call create again;
    the provider adopts the server by name if it exists."""
    now = p.clock()
    rows = await p.store.fetch_all(
        "SELECT * FROM servers WHERE status = 'provisioning' AND origin = 'provider' "
        "AND create_confirmed_at IS NULL"
    )
    for row in rows:
        if not p.due(row["id"], now):
            continue
        if now - row["create_requested_at"] > p.settings.provision_timeout:
            await _settle_unknown(p, row)
            continue
        if now < p.state.paused_until:
            return
        await p.call_create(row["id"], row["name"], row["server_type"], row["location"])


async def _settle_unknown(p: Provisioner, row: Row) -> None:
    """A create never confirmed in PROVISION_TIMEOUT: it keeps counting against
    MAX_SERVERS until the provider definitely answers whether a server carries its
    id label (a failed look-up is no answer)."""
    try:
        found = await p.provider.list({**p.labels, "clawfleet-server": row["id"]})
    except ProviderError as exc:
        p.failed(row["id"], f"look-up of unconfirmed {row['name']}", exc)
        return
    p.succeeded(row["id"])
    if not found:
        await p.set_status(
            row["id"],
            "deleted",
            "create_abandoned",
            f"create never confirmed and {p.provider.name} has no such server",
        )
        return
    server = found[0]
    pair = (server.server_type or row["server_type"], server.location or row["location"])
    await p.confirm(row["id"], server.provider_id, server.public_ip, pair)
