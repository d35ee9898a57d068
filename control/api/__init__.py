"""The HTTP layer: the routes (admin_routes: admin API and /healthz; agent_routes: the
worker protocol and the agent wheel; agent_wakes: waking held long-polls across
replicas and at shutdown; stripe_webhook; metrics_endpoint: /metrics and who
may read it; readiness: /readyz; dashboard), the middleware (request ids, the one JSON
error shape, body limit, admin auth), bodies (request decoding shared by the routes),
views (the JSON shapes of the admin API), admin_pages (its listings' pages and the
fleet summary), metrics_snapshot (what /metrics reads), the dashboard's sessions, rate limits on
credentials, and edge (how callers reach us).

Owns: the `dashboard_sessions` table, and every HTTP shape.
May import: everything below it (foundation, db, the domain packages, capacity, the
Fleet facade, metrics) and control/appkeys.py, where the app's state is named;
nothing imports it except the app factory (appkeys names its types for the type
checker only).
"""
