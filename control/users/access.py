"""How a user reaches its gateway: the URL and the gateway token, read for the admin
API. Read-only; the token is stored encrypted (control/keyring.py) and rotated
through control/users/records.py `set_gateway_token`.

Contract: `user_url` is the one rule for a user's URL: `https://<subdomain>.<BASE_DOMAIN>`,
or, for the local demo (PROVIDER=local with LOCAL_ROUTER_ADDRESS), plain http on the
local router's port, e.g. `http://alice.clawfleet.localhost:8000`. The access reply,
the sign-in link and the gateway's allowed origin (control/workers/specs.py) all use it.
"""

from __future__ import annotations

from control.db.store import Store
from control.errors import NotFound
from control.keyring import Keyring
from control.settings import Settings


def user_url(settings: Settings, subdomain: str) -> str:
    host = f"{subdomain}.{settings.base_domain}"
    router = settings.local_router_address
    if settings.provider == "local" and router:
        return f"http://{host}:{router.rpartition(':')[2]}"
    return f"https://{host}"


async def details(
    store: Store, keyring: Keyring, settings: Settings, user_id: str
) -> dict[str, str]:
    subdomain, token = await _read(store, keyring, user_id)
    return {"url": user_url(settings, subdomain), "token": token}


async def _read(store: Store, keyring: Keyring, user_id: str) -> tuple[str, str]:
    row = await store.fetch_one(
        "SELECT subdomain, gateway_token_ciphertext FROM users WHERE id = ?", (user_id,)
    )
    if row is None:
        raise NotFound(f"no user {user_id}")
    return str(row["subdomain"]), keyring.decrypt(row["gateway_token_ciphertext"])
