"""Sign-in links: the URL that signs a customer into their gated gateway (docs/tenants.md).

Contract: `signin_link` gives `<user URL>/_clawfleet/signin?ticket=<t>`, the user URL being
the one the access reply gives (control/users/access.py `user_url`), with a ticket
`shared.signin.make_ticket` signs under the user's key (`signin_key` of the gateway
token, the key the worker's verifier holds), valid `TICKET_SECONDS` from `now`, with a
random nonce (the verifier accepts each nonce once). It refuses with 409 when the tenant
profile has no sign-in gate (`signin_off`: the route goes straight to the container)
and when the user has no container to sign into (`not_running`: pending, suspended or
deprovisioned; a ticket would expire long before a pending user is placed), and with
409 `not_paid` for a provisional user (control/users/prestart.py: started while its
buyer pays, nobody's agent until the payment arrives).
Read-only: nothing is stored.
"""

from __future__ import annotations

from dataclasses import dataclass

from control.db.store import Store
from control.errors import Conflict, NotFound
from control.keyring import Keyring
from control.settings import Settings
from control.users.access import user_url
from control.users.prestart import is_provisional
from shared import signin

SIGNIN_PATH = "/_clawfleet/signin"


@dataclass(frozen=True)
class Link:
    url: str
    expires_at: int


async def signin_link(
    store: Store, keyring: Keyring, settings: Settings, user_id: str, now: float
) -> Link:
    row = await store.fetch_one(
        "SELECT subdomain, state, gateway_token_ciphertext, billing_status FROM users WHERE id = ?",
        (user_id,),
    )
    if row is None:
        raise NotFound(f"no user {user_id}")
    if is_provisional(row):
        raise Conflict(f"user {user_id} is not paid for yet", code="not_paid")
    if not settings.tenant_profile.signin:
        raise Conflict(
            f"TENANT_PROFILE {settings.tenant_profile.name} has no sign-in gate: "
            "the user's URL needs no link",
            code="signin_off",
        )
    if row["state"] not in ("provisioning", "running"):
        raise Conflict(
            f"user {user_id} is {row['state']}: nothing to sign into", code="not_running"
        )
    key = signin.signin_key(keyring.decrypt(row["gateway_token_ciphertext"]))
    expires_at = int(now) + signin.TICKET_SECONDS
    ticket = signin.make_ticket(key, user_id, expires_at, signin.new_nonce())
    url = f"{user_url(settings, row['subdomain'])}{SIGNIN_PATH}?ticket={ticket}"
    return Link(url=url, expires_at=expires_at)
