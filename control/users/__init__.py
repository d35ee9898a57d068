"""Users: the `users` table, plans, and where each user's container goes.

Owns: the `users` table (records.py is its only writer), plans (plans.py), and the
pure placement decision (placement.py).
May import: the foundation modules and control.db.
"""
