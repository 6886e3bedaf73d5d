"""Callback URL tokens: stateless proof that a callback URL was made by us.

Shared by both sides: the submitter signs every ``callback_url``, the receiver verifies it.

Every task's ``callback_url`` is ``{public_url}/callbacks/{external_task_id}/{token}``, where
``token = base64url(HMAC-SHA256(secret, "kling-hooks/callback/v1\\0" + external_task_id))``.
Kling documents no signature for callbacks (PROTOCOL.md section 4), so the unguessable URL is
the only authentication there is. The receiver verifies a token with no stored state, against
every configured secret in constant time, so secrets can be rotated: the first secret signs,
all of them verify.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from collections.abc import Sequence
from urllib.parse import quote

_CONTEXT = b"kling-hooks/callback/v1\x00"
CALLBACK_PATH = "/callbacks"


def new_secret() -> str:
    """A fresh random secret: 32 bytes, base64url (43 characters)."""
    return secrets.token_urlsafe(32)


def parse_secrets(value: str | Sequence[str]) -> list[str]:
    """``"new,old"`` -> ``["new", "old"]``; blanks dropped. The first one signs."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [s.strip() for s in items if s.strip()]


class CallbackTokens:
    """Signs and verifies callback URL tokens.

    Args:
        secrets_: One or more secrets, the signing one first (``KLING_HOOKS_SECRET``).

    Raises:
        ValueError: no secret was given.
    """

    def __init__(self, secrets_: Sequence[str]) -> None:
        keys = [s.encode() for s in parse_secrets(secrets_)]
        if not keys:
            raise ValueError("at least one callback secret is needed")
        self._keys = keys

    @staticmethod
    def _mac(key: bytes, external_task_id: str) -> str:
        digest = hmac.digest(key, _CONTEXT + external_task_id.encode(), "sha256")  # one-shot
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, external_task_id: str) -> str:
        """The token for ``external_task_id``, made with the first secret (43 characters)."""
        return self._mac(self._keys[0], external_task_id)

    def verify(self, external_task_id: str, token: str) -> bool:
        """True when ``token`` was made for ``external_task_id`` by any configured secret.

        Every secret is tried, each comparison in constant time. A token that is not ASCII
        (ours are base64url) is false at once: ``hmac.compare_digest`` refuses such text.
        """
        if not token.isascii():
            return False
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(self._mac(key, external_task_id), token)
        return ok

    def callback_url(self, public_url: str, external_task_id: str) -> str:
        """``{public_url}/callbacks/{quoted external_task_id}/{token}``."""
        ext = quote(external_task_id, safe="")
        return f"{public_url.rstrip('/')}{CALLBACK_PATH}/{ext}/{self.sign(external_task_id)}"
