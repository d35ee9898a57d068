"""Capacity: where servers come from (the local machine or Hetzner Cloud), the pure
autoscaling decisions, and the autoscaler that applies them; the demo image for
machines that cannot pull the real one.

Owns: creating and deleting servers at the provider (provisioning.py), the
autoscaler's run (scaler.py) and its steps (lifecycle.py, scale_up.py, scale_down.py,
orphans.py), and the provider's health. Server rows are written through
control.workers.servers.
May import: the foundation modules, control.db, and the domain packages (users,
workers, billing, dns), never the HTTP layer.
"""
