"""Billing: the Stripe webhook inbox (verify, store, process in order with retries),
the pure decoding of Stripe events into billing facts, and the rules that turn facts
and operators' holds into what each user should be.

Owns: the `stripe_events` table (inbox.py) and the `subscriptions` table
(subscriptions.py); who a payment may act on (claims.py) and what a user should be
(rules.py), written to users through control.users.records.
May import: the foundation modules, control.db and control.users.
"""
