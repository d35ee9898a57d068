"""Clawfleet worker agent: registers with the control plane, heartbeats, long-polls its
assignments and keeps each assigned user's container running through the Docker engine."""
