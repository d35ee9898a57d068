"""Versioned schema. Each entry is applied once, in order, in its own transaction;
`statements(script)` splits one into the statements SQLite runs.

Append only: never edit a migration that has shipped. The SQL avoids SQLite-only
syntax (times are epoch seconds passed in from Python, conflicts use ON CONFLICT),
so that a PostgreSQL backend can follow.
"""

import sqlite3

from control.db.counts_schema import COUNTS_MIGRATION

MIGRATIONS: tuple[str, ...] = (
    # 1: servers, tokens, users, nonces, events
    """
    CREATE TABLE servers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        origin TEXT NOT NULL,
        provider TEXT,
        provider_id TEXT,
        public_ip TEXT,
        hostname TEXT,
        cordoned INTEGER NOT NULL DEFAULT 0,
        draining INTEGER NOT NULL DEFAULT 0,
        cpus INTEGER,
        memory_mb INTEGER,
        disk_gb INTEGER,
        agent_version TEXT,
        secret_ciphertext TEXT,
        generation INTEGER NOT NULL DEFAULT 0,
        applied_generation INTEGER,
        heartbeat_interval REAL,
        last_heartbeat REAL,
        registered_at REAL,
        created_at REAL NOT NULL,
        status_changed_at REAL NOT NULL,
        report TEXT,
        server_type TEXT,
        location TEXT,
        create_requested_at REAL,
        create_confirmed_at REAL,
        empty_since REAL,
        deleted_at REAL,
        user_data_hash TEXT
    );
    CREATE INDEX servers_status ON servers(status);
    CREATE TABLE bootstrap_tokens (
        id TEXT PRIMARY KEY,
        server_id TEXT REFERENCES servers(id),
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        consumed_at REAL
    );
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        subdomain TEXT NOT NULL UNIQUE,
        plan TEXT NOT NULL,
        state TEXT NOT NULL,
        server_id TEXT REFERENCES servers(id),
        moving_from TEXT REFERENCES servers(id),
        error TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        billing_status TEXT,
        stripe_customer_id TEXT,
        stripe_subscription_id TEXT,
        subscription_event_created INTEGER,
        past_due_since REAL,
        gateway_token_ciphertext TEXT,
        data_server_id TEXT REFERENCES servers(id),
        purge_after REAL,
        purge_generation INTEGER
    );
    CREATE UNIQUE INDEX users_subscription ON users(stripe_subscription_id);
    CREATE TABLE stripe_events (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        created INTEGER NOT NULL,
        payload TEXT NOT NULL,
        received_at REAL NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        processed_at REAL
    );
    CREATE INDEX stripe_events_due ON stripe_events(status, next_attempt_at);
    CREATE TABLE subscriptions (
        id TEXT PRIMARY KEY,
        customer_id TEXT,
        status TEXT,
        price_id TEXT,
        current_period_end INTEGER,
        state_at INTEGER NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX users_server ON users(server_id);
    CREATE INDEX users_state ON users(state);
    CREATE TABLE nonces (
        key_id TEXT NOT NULL,
        nonce TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (key_id, nonce)
    );
    CREATE INDEX nonces_expiry ON nonces(expires_at);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        server_id TEXT,
        user_id TEXT,
        message TEXT NOT NULL
    );
    CREATE INDEX events_at ON events(at);
    """,
    # 2: capacity trust: stated resources, over-claim flags, token revocation (issue 9, capacity)
    """
    ALTER TABLE servers ADD COLUMN known_cpus INTEGER;
    ALTER TABLE servers ADD COLUMN known_memory_mb INTEGER;
    ALTER TABLE servers ADD COLUMN known_disk_gb INTEGER;
    ALTER TABLE servers ADD COLUMN capacity_source TEXT;
    ALTER TABLE servers ADD COLUMN overclaim TEXT;
    ALTER TABLE servers ADD COLUMN overclaim_at REAL;
    ALTER TABLE bootstrap_tokens ADD COLUMN cpus INTEGER;
    ALTER TABLE bootstrap_tokens ADD COLUMN memory_mb INTEGER;
    ALTER TABLE bootstrap_tokens ADD COLUMN disk_gb INTEGER;
    ALTER TABLE bootstrap_tokens ADD COLUMN revoked_at REAL;
    CREATE INDEX bootstrap_tokens_server ON bootstrap_tokens(server_id);
    CREATE INDEX users_data_server ON users(data_server_id);
    """,
    # 3: billing: payer ownership, livemode, operator holds, inbox pruning (issues 9 and 10, billing)
    """
    ALTER TABLE users ADD COLUMN created_by TEXT;
    ALTER TABLE users ADD COLUMN hold TEXT;
    ALTER TABLE users ADD COLUMN hold_at REAL;
    ALTER TABLE users ADD COLUMN billing_state TEXT;
    ALTER TABLE users ADD COLUMN billing_conflict TEXT;
    ALTER TABLE subscriptions ADD COLUMN previous_status TEXT;
    ALTER TABLE subscriptions ADD COLUMN held_user TEXT;
    CREATE INDEX stripe_events_done ON stripe_events(status, processed_at);
    """,
    # 4: operators' surfaces: dashboard sessions in the database, sign-in rate limits (issue 9)
    """
    CREATE TABLE dashboard_sessions (
        id_hash TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    CREATE INDEX dashboard_sessions_last_seen ON dashboard_sessions(last_seen);
    """,
    # 5: reserved for provider resilience, which needed no schema change (left empty so
    # that the numbering of the migrations after it stays as applied)
    """
    """,
    # 6: per-customer secrets and settings, one Fernet-encrypted JSON object (issue 12)
    """
    ALTER TABLE users ADD COLUMN secrets_ciphertext TEXT;
    """,
    # 7: one block volume per user that follows the user between servers (issue 13)
    """
    CREATE TABLE volumes (
        user_id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        provider TEXT NOT NULL,
        provider_id TEXT,
        location TEXT NOT NULL,
        size_gb INTEGER NOT NULL,
        device TEXT,
        server_id TEXT,
        state TEXT NOT NULL,
        last_error TEXT,
        failures INTEGER NOT NULL DEFAULT 0,
        not_before REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX volumes_server ON volumes(server_id);
    """,
    # 8: backup jobs (issue 13): snapshots and restores asked of the worker holding a
    # user's volume; the done snapshots are the user's list of snapshots
    """
    CREATE TABLE backup_jobs (
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        reason TEXT NOT NULL,
        snapshot_id TEXT,
        server_id TEXT,
        volume_id TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 1,
        retry_after REAL,
        error TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        reported_at REAL,
        finished_at REAL,
        result_snapshot_id TEXT,
        bytes_added INTEGER
    );
    CREATE INDEX backup_jobs_user ON backup_jobs(user_id, created_at);
    CREATE INDEX backup_jobs_done ON backup_jobs(user_id, kind, state, finished_at);
    CREATE INDEX backup_jobs_server ON backup_jobs(server_id, state);
    CREATE INDEX backup_jobs_state ON backup_jobs(state, finished_at);
    """,
    # 9: the agent features each server's agent declared (docs/protocol.md), sorted and
    # comma-separated; '' for an agent that declares none, as one older than them does;
    # NULL until its first registration or heartbeat after this migration (none either)
    """
    ALTER TABLE servers ADD COLUMN features TEXT;
    """,
    # 10: a move to another location through a backup and a restore (issue 13): the
    # move's phase, its jobs, and the volume it leaves (old_*) or makes (new_*), kept
    # until the end so a crash at any point resumes the move
    """
    CREATE TABLE relocations (
        user_id TEXT PRIMARY KEY,
        phase TEXT NOT NULL,
        source_server TEXT,
        target_server TEXT NOT NULL,
        target_location TEXT NOT NULL,
        snapshot_job TEXT,
        snapshot_id TEXT,
        restore_job TEXT,
        old_provider_id TEXT NOT NULL,
        old_name TEXT NOT NULL,
        old_location TEXT NOT NULL,
        old_device TEXT,
        size_gb INTEGER NOT NULL,
        new_name TEXT NOT NULL,
        new_provider_id TEXT,
        new_device TEXT,
        last_error TEXT,
        failures INTEGER NOT NULL DEFAULT 0,
        not_before REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 11: a sign-up's Stripe Checkout (issue 15, control/portal/checkouts.py): the subdomain
    # it reserves while open, the hash of its status page's token, and the user id
    # (client_reference_id) Stripe's webhook will create; at most one open checkout
    # holds a subdomain
    """
    CREATE TABLE checkouts (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        user_id TEXT NOT NULL UNIQUE,
        subdomain TEXT NOT NULL,
        plan TEXT NOT NULL,
        email TEXT NOT NULL,
        stripe_session_id TEXT UNIQUE,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE UNIQUE INDEX checkouts_open_subdomain ON checkouts(subdomain) WHERE state = 'open';
    CREATE INDEX checkouts_email ON checkouts(email COLLATE NOCASE);
    CREATE INDEX checkouts_open ON checkouts(state, plan, expires_at);
    """,
    # returning customers (issue 15, docs/portal.md): one-time sign-in links
    # (control/portal/login_links.py) and portal sessions (control/portal/customer_sessions.py),
    # both keyed by the SHA-256 of a secret only the customer holds
    """
    CREATE TABLE portal_login_links (
        token_hash TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        used_at REAL
    );
    CREATE INDEX portal_login_links_email ON portal_login_links(email);
    CREATE INDEX portal_login_links_expiry ON portal_login_links(expires_at);
    CREATE TABLE portal_sessions (
        id_hash TEXT PRIMARY KEY,
        email TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    CREATE INDEX portal_sessions_email ON portal_sessions(email, last_seen);
    CREATE INDEX portal_sessions_seen ON portal_sessions(last_seen);
    """,
    # the hot paths' queries find their rows through an index (issue 16,
    # tests/test_query_plans.py): a worker's moving users (the desired set, a dead
    # worker's release, placement's holders), the past_due sweep, held volumes and
    # relocations by phase (placement's volume slots, a worker's backup jobs)
    """
    CREATE INDEX users_moving_from ON users(moving_from) WHERE moving_from IS NOT NULL;
    CREATE INDEX users_past_due ON users(billing_status, past_due_since);
    CREATE INDEX volumes_held ON volumes(server_id) WHERE server_id IS NOT NULL;
    CREATE INDEX relocations_phase ON relocations(phase);
    """,
    # a restart asked for by the operator or the customer: part of the spec's hash
    # (control/workers/specs.py), so the worker replaces the container with its state
    """
    ALTER TABLE users ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0;
    """,
    # counts kept by the writes themselves (issue 16): the triggers that keep them, and
    # why, are control/db/counts_schema.py's (frozen there like any shipped migration)
    COUNTS_MIGRATION,
    # the singletons' leader among replicas sharing one database (issue 16,
    # control/leadership/): one row per lease; `epoch` is the fencing token, raised on
    # every change of holder; times are epoch seconds from the holders' clocks
    """
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        epoch INTEGER NOT NULL,
        acquired_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );
    """,
)


def statements(script: str) -> list[str]:
    # A trigger's body holds `;` of its own: a piece joins the next ones until SQLite
    # calls the statement complete.
    found: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if statement := pending.strip().rstrip(";").strip():
                found.append(statement)
            pending = ""
    if leftover := pending.strip().rstrip(";").strip():
        found.append(leftover)  # incomplete: SQLite says what is wrong with it
    return found
