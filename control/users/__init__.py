"""Users: the `users` table, plans, and where each user's container goes.

Owns: the `users` table (records.py is its only writer), plans (plans.py), names
(names.py), the agent features users' specs need (features.py), the pure placement
decision (placement.py) over the room each server has
(rooms.py, and the room index that keeps it in memory, room_index.py), placing and
moving users (placing.py), a user's gateway access
(access.py) and secrets (secrets.py). Nothing here writes `servers`: functions return the servers whose
desired set they changed, and control/workers/assignments.py bumps them.
May import: the foundation modules and control.db.
"""
