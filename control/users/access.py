"""How a user reaches its gateway: the URL and the gateway token, read for the admin
API. Read-only; the token is stored encrypted (control/keyring.py) and rotated
through control/users/records.py `set_gateway_token`."""

from __future__ import annotations

from control.db.store import Store
from control.errors import NotFound
from control.keyring import Keyring


async def gateway(store: Store, keyring: Keyring, base_domain: str, user_id: str) -> dict[str, str]:
    row = await store.fetch_one(
        "SELECT subdomain, gateway_token_ciphertext FROM users WHERE id = ?", (user_id,)
    )
    if row is None:
        raise NotFound(f"no user {user_id}")
    return {
        "url": f"https://{row['subdomain']}.{base_domain}",
        "token": keyring.decrypt(row["gateway_token_ciphertext"]),
    }
