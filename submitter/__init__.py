"""kling-hooks submitter: create Kling tasks whose progress comes back as callbacks.

Modules: ``client`` (HTTP, retries, idempotent create), ``registrar`` (``POST /tasks``),
``routes`` (the rules of each create body), ``auth`` (JWT or bearer key), ``protocol``
(Kling's wire format), ``simulator`` (a Kling stand-in) and ``errors`` (the hierarchy).
"""

from submitter.auth import BearerAuth, KlingJWTAuth, auth_from_keys
from submitter.client import KlingClient, new_external_task_id
from submitter.errors import (
    AuthNotConfigured,
    InvalidRequest,
    KlingAPIError,
    KlingUnreachable,
    Problem,
    RegistrationFailed,
    SubmitterError,
)
from submitter.registrar import Registrar, Submission, redact
from submitter.routes import validate_body

__all__ = [
    "AuthNotConfigured",
    "BearerAuth",
    "InvalidRequest",
    "KlingAPIError",
    "KlingClient",
    "KlingJWTAuth",
    "KlingUnreachable",
    "Problem",
    "Registrar",
    "RegistrationFailed",
    "Submission",
    "SubmitterError",
    "auth_from_keys",
    "new_external_task_id",
    "redact",
    "validate_body",
]
