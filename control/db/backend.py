"""Which store the control plane runs on (DATABASE_URL, docs/production.md).

Contract: `open_store(database_url, database_path)` is PostgreSQL's store
(control/db/postgres.py) for a URL, else SQLite's at the path (control/db/store.py);
neither is opened yet. The PostgreSQL store keeps the SQLite one's contract, under
whose name (`Store`) the domain's code is typed, so it is returned as one.
"""

from __future__ import annotations

from typing import cast

from control.db.store import Store


def open_store(database_url: str, database_path: str) -> Store:
    if database_url:
        # Imported here: on SQLite the driver and sqlglot (about 25,000 objects and
        # 20 MB at start-up) would only be more for every collection to walk.
        from control.db.postgres import PostgresStore

        return cast(Store, PostgresStore(database_url))
    return Store(database_path)
