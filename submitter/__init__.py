"""kling-hooks submitter: create Kling tasks whose progress comes back as callbacks.

Modules: ``client`` (:class:`KlingClient`: idempotent create and query), ``answers`` (reading
Kling's answers), ``retries`` (the retry policy), ``registrar`` (``POST /tasks``), ``bodies``
(the rules of each create body), ``images`` (the image rules: format, size, pixels),
``safehttp`` (fetching a URL without SSRF; the receiver's downloader uses it too), ``auth``
(JWT or bearer key), ``protocol`` (Kling's wire format), ``tokens`` (callback URL tokens),
``simulator`` (a Kling stand-in), ``media`` (its result files) and ``errors`` (the hierarchy).
"""

from submitter.auth import BearerAuth, KlingJWTAuth, auth_from_keys
from submitter.bodies import validate_body
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
