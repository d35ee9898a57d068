"""What every deliberate error of either program carries; each program has its own root
below this one (`control.errors.ClawfleetError`, `agent.errors.AgentError`), and code
catches those roots, never this class.

Contract: `message` is safe to show and to log (never a secret); `code` is a stable
machine-readable name, the class's own unless one is given; `correlation_id` is the
request id of the other side (an upstream's, or the control plane's for the agent),
None when there was none.
"""

from __future__ import annotations


class CodedError(Exception):
    code = "error"

    def __init__(
        self, message: str, *, code: str | None = None, correlation_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.correlation_id = correlation_id
