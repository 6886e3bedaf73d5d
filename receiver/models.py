"""The shapes that cross a boundary of the receiver, each defined once.

The status API returns these models, ``/openapi.json`` is generated from them, the store's
reads build them, and plugins receive :class:`Event`. Field names are Kling's wherever the
value is Kling's (PROTOCOL.md section 4); times are Unix epoch milliseconds.
"""

from __future__ import annotations

from enum import StrEnum


class Verdict(StrEnum):
    """What a callback did: recorded a transition, repeated one, or arrived too late."""

    NEW = "new"
    DUPLICATE = "duplicate"
    STALE = "stale"


class DeliveryState(StrEnum):
    """Where one delivery (transition, plugin) stands; see ``receiver.deliveries``."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"


class TransitionSource(StrEnum):
    """What recorded a transition: Kling's callback, or the submitter's registration."""

    CALLBACK = "callback"
    REGISTRATION = "registration"
