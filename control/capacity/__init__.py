"""Capacity: where servers come from (the local machine or Hetzner Cloud), the pure
autoscaling decisions, and the autoscaler that applies them; the demo image for
machines that cannot pull the real one.

Owns: creating and deleting servers at the provider, and the provider's health.
May import: the foundation modules, control.db, and the domain packages (users,
workers, billing, dns), never the HTTP layer.
"""
