"""Worker user data (cloud-init): `render_user_data(WorkerBootstrap(...))` returns the
bash script that turns a fresh Ubuntu 24.04 / Debian 12 server into a Clawfleet worker.
The contract is in `cloud_init.render`; the operator's view in docs/cloud-init.md."""

from cloud_init.render import (
    MAX_USER_DATA,
    UserDataTooLarge,
    WorkerBootstrap,
    render_user_data,
    user_data_hash,
)

__all__ = [
    "MAX_USER_DATA",
    "UserDataTooLarge",
    "WorkerBootstrap",
    "render_user_data",
    "user_data_hash",
]
