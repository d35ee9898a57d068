"""Clawfleet control plane: HTTP API, store, scheduler and worker protocol."""
