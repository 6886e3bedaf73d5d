"""kling-hooks submitter: create Kling tasks whose progress comes back as callbacks.

Modules: ``client`` (HTTP, retries, idempotent create, registration), ``routes`` (the rules
of each create body), ``auth`` (JWT or bearer key), ``protocol`` (Kling's wire format) and
``errors`` (the exception hierarchy).
"""

from submitter.auth import BearerAuth, KlingJWTAuth, auth_from_keys
from submitter.client import KlingClient, Registrar, Submission, new_external_task_id, redact
from submitter.errors import (
    AuthNotConfigured,
    InvalidRequest,
    KlingAPIError,
    KlingUnreachable,
    Problem,
    RegistrationFailed,
    SubmitterError,
)
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
