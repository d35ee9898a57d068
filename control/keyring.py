"""Keys derived from INTERNAL_SECRET, the control plane's master secret.

Contract: the master secret never leaves this object. Bootstrap-token secrets are
derived (HMAC of the token id), so the database holds no token material at all; so is
each user's backup repository password (HKDF, info "clawfleet backup repository v1:" +
user id, base64url without padding);
worker and user secrets are random and stored Fernet-encrypted. A copy of the
database alone can neither forge a signature nor read a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from control.errors import ClawfleetError


class SecretUnreadable(ClawfleetError):
    """Ciphertext that this master secret did not produce (or that was tampered with)."""


def _hkdf(master: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


class Keyring:
    def __init__(self, master_secret: str) -> None:
        master = master_secret.encode()
        self._master = master
        self._bootstrap_key = _hkdf(master, b"clawfleet/bootstrap-token/v1")
        self._fernet = Fernet(base64.urlsafe_b64encode(_hkdf(master, b"clawfleet/at-rest/v1")))

    def bootstrap_secret(self, token_id: str) -> str:
        digest = hmac.new(self._bootstrap_key, token_id.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def backup_password(self, user_id: str) -> str:
        """The password of `user_id`'s restic repository (docs/backups.md): derived on
        demand, so neither the database nor a worker beyond one run ever holds it."""
        key = _hkdf(self._master, b"clawfleet backup repository v1:" + user_id.encode())
        return base64.urlsafe_b64encode(key).rstrip(b"=").decode()

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise SecretUnreadable(
                "stored secret cannot be decrypted with INTERNAL_SECRET"
            ) from None

    @staticmethod
    def new_secret() -> str:
        """A fresh random secret: 32 bytes of entropy, URL-safe text."""
        return secrets.token_urlsafe(32)
