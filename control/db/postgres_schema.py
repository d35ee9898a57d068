"""The schema on PostgreSQL: control/db/migrations.py's, version for version.

Contract:
- `migration(version)` is the list of PostgreSQL statements of migration `version`
  (1-based, the numbering of `MIGRATIONS`): SQLite's DDL translated by
  control/db/dialect.py (BIGINT for INTEGER, DOUBLE PRECISION for REAL, an identity
  column for AUTOINCREMENT, LOWER() for a NOCASE index), except the counts migration,
  whose SQLite triggers have their PL/pgSQL twins here (same tables, same backfill,
  same rules as control/db/counts_schema.py says them: a group's row stays at n = 0
  once empty, a server's containers with an error are counted from its report's JSON
  without Python, only when the report holds `"error":"`, and an invalid report counts 0).
- `STORE_SETUP`: what the store itself needs, idempotent, run before the migrations:
  the `schema_migrations` table, the sequence every write draws from
  (control/db/postgres.py `data_version`), and SQLite's scalar MAX and MIN
  (`clawfleet_greatest`, `clawfleet_least`: NULL when any argument is NULL), which
  control/db/dialect.py translates to.
- Keys for PostgreSQL's advisory locks: `MIGRATE_LOCK` (held by the process applying
  migrations, so replicas starting at once apply each migration once) and `WRITE_LOCK`
  (held by every write transaction: writers never interleave, across processes too).
"""

from __future__ import annotations

from control.db import dialect
from control.db.counts_schema import COUNTS_MIGRATION
from control.db.migrations import MIGRATIONS

# Arbitrary, fixed: "clawfleet" in the key space of pg_advisory_lock(bigint).
MIGRATE_LOCK = 0x636C617766_01
WRITE_LOCK = 0x636C617766_02
COMMITS = "clawfleet_commits"

STORE_SETUP = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version BIGINT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)",
    f"CREATE SEQUENCE IF NOT EXISTS {COMMITS}",
    *(
        f"CREATE OR REPLACE FUNCTION clawfleet_{name}(VARIADIC a ANYCOMPATIBLEARRAY) "
        "RETURNS ANYCOMPATIBLE LANGUAGE sql IMMUTABLE AS $$ SELECT CASE "
        f"WHEN array_position(a, NULL) IS NULL THEN (SELECT {agg}(x) FROM unnest(a) x) END $$"
        for name, agg in (("greatest", "max"), ("least", "min"))
    ),
    # Two arguments, the usual call (MAX(0, x) in a sum over every server): a plain
    # expression the planner inlines. The variadic form above costs a subquery per call,
    # about 0.5 s for /metrics' heartbeat ages over 10k servers against 7 ms.
    *(
        f"CREATE OR REPLACE FUNCTION clawfleet_{name}(a ANYCOMPATIBLE, b ANYCOMPATIBLE) "
        "RETURNS ANYCOMPATIBLE LANGUAGE sql IMMUTABLE AS $$ SELECT CASE "
        f"WHEN a IS NULL OR b IS NULL THEN NULL ELSE {name.upper()}(a, b) END $$"
        for name in ("greatest", "least")
    ),
)

# How many of a report's containers carry an error (SQLite: json_each over
# $.containers, objects whose error is not NULL nor '').
_CONTAINER_ERRORS = """
CREATE FUNCTION clawfleet_container_errors(report TEXT) RETURNS BIGINT
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    containers JSONB;
BEGIN
    IF report IS NULL OR position('"error":"' IN report) = 0 THEN
        RETURN 0;
    END IF;
    BEGIN
        containers := report::JSONB -> 'containers';
    EXCEPTION WHEN invalid_text_representation THEN
        RETURN 0;
    END;
    RETURN (
        SELECT COUNT(*) FROM jsonb_array_elements(
            CASE jsonb_typeof(containers)
                WHEN 'array' THEN containers
                WHEN 'object' THEN (SELECT jsonb_agg(value) FROM jsonb_each(containers))
                ELSE '[]'::JSONB END) AS c(value)
        WHERE jsonb_typeof(c.value) = 'object' AND COALESCE(c.value ->> 'error', '') <> '');
END $$
"""


def _counter(
    counts: str,
    source: str,
    keys: dict[str, str],
    values: dict[str, str],
    watched: tuple[str, ...],
    fired: str | None = None,
) -> list[str]:
    """The backfill of `counts` from the rows of `source` already there, then the trigger
    function and triggers that keep it (grouped by `keys`, summing `values`; expressions
    over {r} the row and {s} the sign) for every insert and delete on `source`, and every
    update of a `watched` column that changes one (or for which `fired` holds, over OLD
    and NEW).
    One definition for both: the backfill and the triggers cannot count differently."""
    columns = ", ".join([*keys, *values])
    groups = ", ".join(str(i) for i in range(1, len(keys) + 1))
    backfill = (
        f"INSERT INTO {counts} ({columns}) SELECT "
        + ", ".join(
            [*(k.format(r="r") for k in keys.values())]
            + [f"SUM({v.format(r='r', s='1')})" for v in values.values()]
        )
        + f" FROM {source} r GROUP BY {groups}"
    )

    def delta(row: str, sign: str) -> str:
        exprs = [e.format(r=row, s=sign) for e in (*keys.values(), *values.values())]
        updates = ", ".join(f"{c} = {counts}.{c} + excluded.{c}" for c in values)
        return (
            f"INSERT INTO {counts} ({columns}) VALUES ({', '.join(exprs)}) "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates};"
        )

    function = f"clawfleet_{counts}"
    return [
        backfill,
        f"""CREATE FUNCTION {function}() RETURNS TRIGGER LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP <> 'INSERT' THEN {delta("OLD", "-1")} END IF;
            IF TG_OP <> 'DELETE' THEN {delta("NEW", "1")} END IF;
            RETURN NULL;
        END $$""",
        f"CREATE TRIGGER {counts}_change AFTER INSERT OR DELETE ON {source} "
        f"FOR EACH ROW EXECUTE FUNCTION {function}()",
        f"CREATE TRIGGER {counts}_update AFTER UPDATE OF {', '.join(watched)} ON {source} "
        f"FOR EACH ROW WHEN ({fired or _changed(*watched)}) EXECUTE FUNCTION {function}()",
    ]


def _changed(*columns: str) -> str:
    return " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in columns)


_SERVER_KEYS = {
    "status": "{r}.status",
    "server_type": "COALESCE({r}.server_type, '')",
    "memory_mb": "COALESCE({r}.memory_mb, -1)",
    "cpus": "COALESCE({r}.cpus, -1)",
    "cordoned": "{r}.cordoned",
    "draining": "{r}.draining",
}
_SERVER_VALUES = {"n": "{s}", "container_errors": "{s} * clawfleet_container_errors({r}.report)"}
_SHAPE = ("status", "server_type", "memory_mb", "cpus", "cordoned", "draining")
# A heartbeat changes the report only: counted again only when either report has errors.
_SERVERS_FIRED = (
    _changed(*_SHAPE)
    + """ OR position('"error":"' IN OLD.report) > 0 OR position('"error":"' IN NEW.report) > 0"""
)


def _counts_migration() -> list[str]:
    tables = [
        "CREATE TABLE server_counts (status TEXT NOT NULL, server_type TEXT NOT NULL, "
        "memory_mb BIGINT NOT NULL, cpus BIGINT NOT NULL, cordoned BIGINT NOT NULL, "
        "draining BIGINT NOT NULL, n BIGINT NOT NULL, container_errors BIGINT NOT NULL, "
        "PRIMARY KEY (status, server_type, memory_mb, cpus, cordoned, draining))",
        "CREATE TABLE user_counts (state TEXT NOT NULL, plan TEXT NOT NULL, "
        "n BIGINT NOT NULL, PRIMARY KEY (state, plan))",
        "CREATE TABLE event_counts (kind TEXT PRIMARY KEY, n BIGINT NOT NULL)",
        "CREATE TABLE volume_counts (state TEXT PRIMARY KEY, n BIGINT NOT NULL, "
        "size_gb BIGINT NOT NULL)",
        _CONTAINER_ERRORS,
    ]
    triggers = [
        *_counter(
            "server_counts",
            "servers",
            _SERVER_KEYS,
            _SERVER_VALUES,
            (*_SHAPE, "report"),
            _SERVERS_FIRED,
        ),
        *_counter(
            "user_counts",
            "users",
            {"state": "{r}.state", "plan": "{r}.plan"},
            {"n": "{s}"},
            ("state", "plan"),
        ),
        *_counter("event_counts", "events", {"kind": "{r}.kind"}, {"n": "{s}"}, ("kind",)),
        *_counter(
            "volume_counts",
            "volumes",
            {"state": "{r}.state"},
            {"n": "{s}", "size_gb": "{s} * {r}.size_gb"},
            ("state", "size_gb"),
        ),
    ]
    index = "CREATE INDEX servers_heartbeat ON servers(status, last_heartbeat)"
    return [*tables, *triggers, index]


def migration(version: int) -> list[str]:
    script = MIGRATIONS[version - 1]
    if script is COUNTS_MIGRATION:
        return _counts_migration()
    return dialect.script(script)
