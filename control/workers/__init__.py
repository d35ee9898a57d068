"""Workers and the agent protocol: bootstrap tokens, registration, request
authentication and nonces, heartbeats (group commit), liveness, capacity trust, each
worker's desired set and the long-poll that delivers it, and the user data and agent
wheel a new server boots from.

Owns: the `servers` table (servers.py is its only writer), `bootstrap_tokens`
(tokens.py), `nonces` (nonces.py), and the generation bump that goes with every change
to a worker's desired set (assignments.py `commit`).
May import: the foundation modules, control.db, control.users and control.backup_jobs
(the desired set carries a worker's backup jobs; its heartbeats report them).
"""
