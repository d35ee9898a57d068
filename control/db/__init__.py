"""The database: the SQLite store (one writer, snapshot reads), its versioned
migrations, and the event log written in the same transaction as each decision.

Owns: the connection, the schema, the `events` table.
May import: control's foundation modules (errors, clock, settings) only. Nothing here
knows about users, workers or billing.
"""
