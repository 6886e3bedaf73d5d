"""kling-hooks submitter: create Kling tasks whose progress comes back as callbacks.

Modules: ``client`` (:class:`KlingClient`: idempotent create, query one task, list a page),
``providers`` (the profile of each Kling system: paths, auth, rule overlays), ``answers``
(reading Kling's answers), ``retries`` (the retry policy), ``registrar`` (``POST /tasks``),
``bodies`` (the rules of each create body), ``images`` (the image rules: format, size, pixels),
``safehttp`` (fetching a URL without SSRF; the receiver's downloader uses it too), ``auth``
(JWT or bearer key), ``protocol`` (Kling's wire format), ``tokens`` (callback URL tokens),
``simulator`` (a Kling stand-in), ``media`` (its result files) and ``errors`` (the hierarchy).
"""

from submitter.auth import BearerAuth, KlingJWTAuth, auth_for, auth_from_keys
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
from submitter.providers import PROVIDERS, Provider
from submitter.registrar import Registrar, Submission, redact

__all__ = [
    "PROVIDERS",
    "AuthNotConfigured",
    "BearerAuth",
    "InvalidRequest",
    "KlingAPIError",
    "KlingClient",
    "KlingJWTAuth",
    "KlingUnreachable",
    "Problem",
    "Provider",
    "Registrar",
    "RegistrationFailed",
    "Submission",
    "SubmitterError",
    "auth_for",
    "auth_from_keys",
    "new_external_task_id",
    "redact",
    "validate_body",
]
