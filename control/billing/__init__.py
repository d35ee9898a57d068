"""Billing: the Stripe webhook inbox (verify, store, process in order with retries),
the pure decoding of Stripe events into billing facts, and the rules that turn facts
and operators' holds into what each user should be.

Owns: the `stripe_events` and `subscriptions` tables.
May import: the foundation modules, control.db and control.users.
"""
