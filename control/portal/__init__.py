"""The customer portal (issue 15, docs/portal.md): the pages and JSON a buyer and a
customer use, served under `/portal` next to, never mixed with, the admin API and the
dashboard (no `/v1/` or `/dashboard` path, no admin session, no admin data).

Owns: the `checkouts` table (checkouts.py is its only writer): a sign-up's open Stripe
Checkout, the subdomain it holds while open, and the hash of its status page's token;
the sign-up and status pages and their JSON (`/portal/signup`, `/portal/status/{token}`,
`/portal/api/plans`, `/portal/api/availability`, `/portal/api/checkout`,
`/portal/api/status/...`); the portal's security headers and static files
(install.py, static/); the operator's brand on every page (brand.py:
`/portal/brand.css`, `/portal/brand/logo.*`) and the plan cards' names and prices read
from Stripe (plan_prices.py); returning customers: the `portal_login_links` table
(login_links.py) and the `portal_sessions` table (customer_sessions.py), sign-in by
e-mail over SMTP (mail.py, signin_routes.py), the customer's page and its JSON
(`/portal/signin`, `/portal/account`, `/portal/api/signin...`,
`/portal/api/account...`: account_routes.py, customers.py, billing_portal.py); the
local stand-in for Stripe's hosted Checkout page that needs no Stripe account
(`/portal/stand-in/...`, `/portal/api/stand-in/...`: stand_in.py, in memory).
May import: everything below the API layer (foundation, db, the domain packages,
capacity, the Fleet facade, metrics) and control/appkeys.py; never control.api (the
admin API and the dashboard) nor the app factory, which installs it, except its two
request-agnostic parts: control/api/edge.py (who the caller is, the rule every rate
limit uses) and control/api/ratelimit.py's `FailureLimiter` and `RateLimited` (the
buckets, and the 429 the error middleware renders with Retry-After).
"""
