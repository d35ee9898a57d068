"""The schema of the counts the database keeps by itself (issue 16), and their only
writers: the triggers below, applied by migration 15 (control/db/migrations.py);
control/db/counts.py reads them.

/v1/summary and /metrics read these few rows instead of counting 10k servers and 100k
users on every read. Triggers, not Python: every write, from any module, adjusts them
in its own transaction, so a rolled-back write leaves them as they were and no writer
can forget them. The migration backfills them from the rows already there before it
creates the triggers (one transaction: no write comes between).

Servers are counted by shape (status, type, size, cordoned, draining; a NULL type is
kept as '' and a NULL size as -1, since a key cannot hold NULL), with the containers
whose error their last report carries (counted in SQLite, without Python, and only
when the report holds `"error":"` at all: heartbeats store compact JSON). A heartbeat
that changes neither costs its trigger's WHEN clause only. No writer may REPLACE a
row of these tables' sources: REPLACE's deletes fire no trigger unless
recursive_triggers is on. The syntax is SQLite's: a PostgreSQL backend needs its own
trigger functions.

The migration also indexes servers by (status, last_heartbeat): /metrics' heartbeat-age
histogram reads that index instead of every server's row (10k rows of about 2.5 KB with
their report: 43 ms; the index: 9 ms).

This text is a shipped migration once released: never edit it (nor `_errors` and `_delta`,
which write part of it) then; append a new one.
"""


def _errors(row: str) -> str:
    """SQL: how many containers of `row`'s report carry an error (counted without
    Python, and only when the report holds `"error":"` at all)."""
    return f"""(CASE
                WHEN instr({row}.report, '"error":"') > 0 AND json_valid({row}.report) THEN (
                    SELECT COUNT(*) FROM json_each({row}.report, '$.containers') c
                    WHERE c.type = 'object'
                        AND IFNULL(json_extract(c.value, '$.error'), '') != '')
                ELSE 0 END)"""


def _delta(row: str, sign: str) -> str:
    """SQL: adds (`sign` '') or takes away ('-') the server `row` (NEW, OLD) in its group."""
    return f"""INSERT INTO server_counts
            (status, server_type, memory_mb, cpus, cordoned, draining, n, container_errors)
        VALUES ({row}.status, IFNULL({row}.server_type, ''), IFNULL({row}.memory_mb, -1),
            IFNULL({row}.cpus, -1), {row}.cordoned, {row}.draining, {sign}1,
            {sign}{_errors(row)})
        ON CONFLICT (status, server_type, memory_mb, cpus, cordoned, draining) DO UPDATE SET
            n = n + excluded.n, container_errors = container_errors + excluded.container_errors;"""


COUNTS_MIGRATION = f"""
    CREATE TABLE server_counts (
        status TEXT NOT NULL,
        server_type TEXT NOT NULL,
        memory_mb INTEGER NOT NULL,
        cpus INTEGER NOT NULL,
        cordoned INTEGER NOT NULL,
        draining INTEGER NOT NULL,
        n INTEGER NOT NULL,
        container_errors INTEGER NOT NULL,
        PRIMARY KEY (status, server_type, memory_mb, cpus, cordoned, draining)
    );
    INSERT INTO server_counts
        SELECT status, IFNULL(server_type, ''), IFNULL(memory_mb, -1), IFNULL(cpus, -1),
            cordoned, draining, COUNT(*),
            SUM({_errors("s")}) FROM servers s
        GROUP BY 1, 2, 3, 4, 5, 6;
    CREATE TRIGGER server_counts_insert AFTER INSERT ON servers BEGIN
        {_delta("NEW", "")}
    END;
    CREATE TRIGGER server_counts_delete AFTER DELETE ON servers BEGIN
        {_delta("OLD", "-")}
    END;
    CREATE TRIGGER server_counts_update
        AFTER UPDATE OF status, server_type, memory_mb, cpus, cordoned, draining, report
        ON servers
        WHEN OLD.status IS NOT NEW.status OR OLD.server_type IS NOT NEW.server_type
            OR OLD.memory_mb IS NOT NEW.memory_mb OR OLD.cpus IS NOT NEW.cpus
            OR OLD.cordoned IS NOT NEW.cordoned OR OLD.draining IS NOT NEW.draining
            OR instr(OLD.report, '"error":"') > 0 OR instr(NEW.report, '"error":"') > 0
    BEGIN
        {_delta("OLD", "-")}
        {_delta("NEW", "")}
    END;
    CREATE TABLE user_counts (
        state TEXT NOT NULL,
        plan TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (state, plan)
    );
    INSERT INTO user_counts SELECT state, plan, COUNT(*) FROM users GROUP BY state, plan;
    CREATE TRIGGER user_counts_insert AFTER INSERT ON users BEGIN
        INSERT INTO user_counts (state, plan, n) VALUES (NEW.state, NEW.plan, 1)
        ON CONFLICT (state, plan) DO UPDATE SET n = n + excluded.n;
    END;
    CREATE TRIGGER user_counts_delete AFTER DELETE ON users BEGIN
        INSERT INTO user_counts (state, plan, n) VALUES (OLD.state, OLD.plan, -1)
        ON CONFLICT (state, plan) DO UPDATE SET n = n + excluded.n;
    END;
    CREATE TRIGGER user_counts_update AFTER UPDATE OF state, plan ON users
        WHEN OLD.state IS NOT NEW.state OR OLD.plan IS NOT NEW.plan
    BEGIN
        INSERT INTO user_counts (state, plan, n) VALUES (OLD.state, OLD.plan, -1)
        ON CONFLICT (state, plan) DO UPDATE SET n = n + excluded.n;
        INSERT INTO user_counts (state, plan, n) VALUES (NEW.state, NEW.plan, 1)
        ON CONFLICT (state, plan) DO UPDATE SET n = n + excluded.n;
    END;
    CREATE TABLE event_counts (kind TEXT PRIMARY KEY, n INTEGER NOT NULL);
    INSERT INTO event_counts SELECT kind, COUNT(*) FROM events GROUP BY kind;
    CREATE TRIGGER event_counts_insert AFTER INSERT ON events BEGIN
        INSERT INTO event_counts (kind, n) VALUES (NEW.kind, 1)
        ON CONFLICT (kind) DO UPDATE SET n = n + excluded.n;
    END;
    CREATE TRIGGER event_counts_delete AFTER DELETE ON events BEGIN
        INSERT INTO event_counts (kind, n) VALUES (OLD.kind, -1)
        ON CONFLICT (kind) DO UPDATE SET n = n + excluded.n;
    END;
    CREATE TRIGGER event_counts_update AFTER UPDATE OF kind ON events
        WHEN OLD.kind IS NOT NEW.kind
    BEGIN
        INSERT INTO event_counts (kind, n) VALUES (OLD.kind, -1)
        ON CONFLICT (kind) DO UPDATE SET n = n + excluded.n;
        INSERT INTO event_counts (kind, n) VALUES (NEW.kind, 1)
        ON CONFLICT (kind) DO UPDATE SET n = n + excluded.n;
    END;
    CREATE TABLE volume_counts (
        state TEXT PRIMARY KEY,
        n INTEGER NOT NULL,
        size_gb INTEGER NOT NULL
    );
    INSERT INTO volume_counts SELECT state, COUNT(*), SUM(size_gb) FROM volumes GROUP BY state;
    CREATE TRIGGER volume_counts_insert AFTER INSERT ON volumes BEGIN
        INSERT INTO volume_counts (state, n, size_gb) VALUES (NEW.state, 1, NEW.size_gb)
        ON CONFLICT (state) DO UPDATE SET n = n + excluded.n, size_gb = size_gb + excluded.size_gb;
    END;
    CREATE TRIGGER volume_counts_delete AFTER DELETE ON volumes BEGIN
        INSERT INTO volume_counts (state, n, size_gb) VALUES (OLD.state, -1, -OLD.size_gb)
        ON CONFLICT (state) DO UPDATE SET n = n + excluded.n, size_gb = size_gb + excluded.size_gb;
    END;
    CREATE TRIGGER volume_counts_update AFTER UPDATE OF state, size_gb ON volumes
        WHEN OLD.state IS NOT NEW.state OR OLD.size_gb IS NOT NEW.size_gb
    BEGIN
        INSERT INTO volume_counts (state, n, size_gb) VALUES (OLD.state, -1, -OLD.size_gb)
        ON CONFLICT (state) DO UPDATE SET n = n + excluded.n, size_gb = size_gb + excluded.size_gb;
        INSERT INTO volume_counts (state, n, size_gb) VALUES (NEW.state, 1, NEW.size_gb)
        ON CONFLICT (state) DO UPDATE SET n = n + excluded.n, size_gb = size_gb + excluded.size_gb;
    END;
    CREATE INDEX servers_heartbeat ON servers(status, last_heartbeat);
    """
