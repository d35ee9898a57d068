"""Billing: the Stripe webhook inbox (verify, store, process in order with retries),
the pure decoding of Stripe events into billing facts, and the rules that turn facts
and operators' holds into what each user should be.

Owns: the `stripe_events` table (inbox.py) and the `subscriptions` table
(subscriptions.py); who a payment may act on (claims.py) and what a user should be
(rules.py), written to users through control.users.records; the events Stripe would
send for a payment, signed as Stripe signs them, for the stand-ins that need no Stripe
account (simulated.py: `clawfleet simulate-payment`, the portal's Checkout stand-in).
May import: the foundation modules, control.db and control.users.
"""
