"""The agent features this agent implements, declared when it registers and in every
heartbeat (docs/protocol.md, "Agent features").

Contract: `FEATURES` names only what this code carries out; the control plane never
sends a spec that needs a feature the worker's agent did not declare, because an agent
ignores the fields it does not know (an older one would start a user on empty Docker
volumes). Add a name here only together with the code that honours it.
"""

from __future__ import annotations

FEATURES: tuple[str, ...] = (
    # ContainerSpec.volume: agent/volumes.py attaches, checks and mounts it, and
    # agent/reconcile.py creates the container only once it is mounted.
    "block-volumes",
    # Assignments.backups: agent/backup_jobs.py runs restic, reported in the heartbeat.
    "backup-jobs",
    # HealthSpec.headers: agent/health.py sends them with every probe.
    "health-headers",
    # ContainerSpec.config_files and secret_files: agent/tenant_files.py writes them.
    "tenant-files",
    # ContainerSpec.signin_key and identity_header: agent/verifier.py and the gate route.
    "signin-gate",
    # ResourceSpec: cpus as a CPU weight, cpu_limit as a hard quota (agent/runtime.py).
    "cpu-weight",
)
