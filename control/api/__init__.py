"""The HTTP layer: admin and agent routes, the JSON error middleware, views (the JSON
shapes of the admin API), the dashboard and its sessions, rate limits on credentials,
/metrics access, and /readyz.

Owns: the `dashboard_sessions` table, and every HTTP shape.
May import: everything below it (foundation, db, the domain packages, capacity, the
Fleet facade); nothing imports it except the app factory.
"""
