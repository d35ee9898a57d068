"""The agent's errors: every error the agent raises on purpose is an `AgentError`.

Each carries a stable `code` and a `message` that is safe to log and to report to the
control plane (never a secret); an error from the control plane (`ControlPlaneError`,
agent/client.py) also carries its HTTP status and the request id the control plane
answered with (`correlation_id`, to find the request in its log). Subclasses:
`ConfigError` (agent/config.py), `ControlPlaneError`, `DockerError` and
`ForeignObjectError` (agent/docker_objects.py), `StateError` (agent/state.py),
`MetadataBlockError` (agent/metadata_block.py), `BackupError` and its kinds
(agent/backup_errors.py) and the daemon's fatal stop.
"""

from __future__ import annotations

from shared.errors import CodedError


class AgentError(CodedError):
    """The root: `code`, `message` and, for the control plane's errors, its request id."""

    code = "agent_error"
