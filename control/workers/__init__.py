"""Workers and the agent protocol: bootstrap tokens, registration, request
authentication and nonces, heartbeats (group commit), liveness, capacity trust, each
worker's desired set and the long-poll that delivers it, and the user data and agent
wheel a new server boots from.

Owns: the `servers` rows' registration and liveness columns, `bootstrap_tokens`,
`nonces`.
May import: the foundation modules, control.db and control.users.
"""
