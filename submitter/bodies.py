"""Request bodies of Kling's create routes, modelled declaratively, checked before sending.

Every rule comes from ``docs/kling/PROTOCOL.md`` section 1 (route table) and the API pages in
``docs/kling/seeds/`` (000: multi-image2image, 001: multi-image2video, 002: official-format
multi-image2image, 003: images/generations, 004: a reseller's multi-image page). Unknown fields
are kept and passed through, because Kling adds fields over time.

Use :func:`validate_body`; it raises :class:`~submitter.errors.InvalidRequest` naming every
broken rule, so that no request is ever sent with a body Kling would refuse. These are the
common rules; a provider's own (CometAPI's 2 to 4 subject images, seed 004) are an
:func:`overlay` declared in :mod:`submitter.providers`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
    model_validator,
)

from submitter.errors import InvalidRequest, Problem
from submitter.protocol import Route

MAX_PROMPT_CHARS = 2500
MAX_IMAGE_BYTES = 10 * 1024 * 1024

# Fields that carry an image (a URL or raw Base64). Used by validation and by the registration
# redaction in submitter.registrar.
IMAGE_FIELDS = frozenset(
    {
        "image",
        "image_tail",
        "subject_image",
        "scene_image",
        "scence_image",  # CometAPI's wire spelling of scene_image (seed 004)
        "style_image",
        "static_mask",
        "mask",
    }
)


def _check_image(value: str) -> str:
    """An image is an http(s) URL or raw Base64 of a JPEG/PNG of at most 10 MB, no ``data:``."""
    if value[:8].lower().startswith(("http://", "https://")):
        return value
    if value.startswith("data:"):
        raise ValueError("must be a URL or raw Base64 without a 'data:' prefix")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be an http(s) URL or raw Base64") from None
    if len(raw) > MAX_IMAGE_BYTES:
        raise ValueError(f"decodes to {len(raw)} bytes, over the 10 MB limit")
    if not (raw.startswith(b"\x89PNG\r\n\x1a\n") or raw.startswith(b"\xff\xd8\xff")):
        raise ValueError("must be a JPEG or PNG image")
    return value


Image = Annotated[StrictStr, Field(min_length=1), AfterValidator(_check_image)]
Prompt = Annotated[StrictStr, Field(max_length=MAX_PROMPT_CHARS)]
RequiredPrompt = Annotated[StrictStr, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
Unit = Annotated[StrictFloat, Field(ge=0, le=1)]
Count = Annotated[StrictInt, Field(ge=1, le=9)]
ImageAspect = Literal["16:9", "9:16", "1:1", "4:3", "3:4", "3:2", "2:3", "21:9"]
VideoAspect = Literal["16:9", "9:16", "1:1"]
Mode = Literal["std", "pro"]
Duration = Literal["5", "10"]


class _Body(BaseModel):
    """Fields every async create route accepts (PROTOCOL.md section 1)."""

    model_config = ConfigDict(extra="allow")

    callback_url: StrictStr | None = None
    external_task_id: Annotated[StrictStr, Field(min_length=1, max_length=256)] | None = None


class WatermarkInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    enabled: StrictBool


class SubjectImage(BaseModel):
    model_config = ConfigDict(extra="allow")

    subject_image: Image


class ListImage(BaseModel):
    model_config = ConfigDict(extra="allow")

    image: Image


class ImagesGenerations(_Body):
    """``POST /v1/images/generations`` (seed 003)."""

    model_name: Literal["kling-v1", "kling-v1-5", "kling-v2", "kling-v2-new", "kling-v2-1"] = (
        "kling-v1"
    )
    prompt: RequiredPrompt
    negative_prompt: Prompt | None = None
    image: Image | None = None
    image_reference: Literal["subject", "face"] | None = None
    image_fidelity: Unit | None = None
    human_fidelity: Unit | None = None
    resolution: Literal["1k", "2k"] | None = None
    n: Count | None = None
    aspect_ratio: ImageAspect | None = None
    watermark_info: WatermarkInfo | None = None

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ImagesGenerations:
        if self.image and self.negative_prompt is not None:
            raise ValueError("negative_prompt: not allowed together with image")
        if self.image_reference is not None and self.model_name != "kling-v1-5":
            raise ValueError(
                f"image_reference: only allowed with kling-v1-5, not {self.model_name}"
            )
        if self.model_name == "kling-v1-5" and self.image and self.image_reference is None:
            raise ValueError("image_reference: required for kling-v1-5 when image is given")
        return self


class ImagesMultiImage2Image(_Body):
    """``POST /v1/images/multi-image2image`` (seeds 000, 002; 004 spells ``scence_image``)."""

    model_name: Literal["kling-v2", "kling-v2-1"] = "kling-v2"
    prompt: Prompt | None = None
    subject_image_list: Annotated[list[SubjectImage], Field(min_length=1, max_length=4)]
    scene_image: Image | None = None
    style_image: Image | None = None
    n: Count | None = None
    aspect_ratio: ImageAspect | None = None
    watermark_info: WatermarkInfo | None = None


class VideosMultiImage2Video(_Body):
    """``POST /v1/videos/multi-image2video`` (seed 001)."""

    model_name: Literal["kling-v1-6"] = "kling-v1-6"
    image_list: Annotated[list[ListImage], Field(min_length=1, max_length=4)]
    prompt: RequiredPrompt
    negative_prompt: Prompt | None = None
    mode: Mode | None = None
    duration: Duration | None = None
    aspect_ratio: VideoAspect | None = None


class VideosText2Video(_Body):
    """``POST /v1/videos/text2video`` (PROTOCOL.md route table)."""

    model_name: StrictStr | None = None
    prompt: RequiredPrompt
    negative_prompt: Prompt | None = None
    mode: Mode | None = None
    duration: Duration | None = None
    aspect_ratio: VideoAspect | None = None
    cfg_scale: Unit | None = None
    camera_control: dict[str, Any] | None = None


class DynamicMask(BaseModel):
    model_config = ConfigDict(extra="allow")

    mask: Image
    trajectories: list[Any] | None = None


class VideosImage2Video(_Body):
    """``POST /v1/videos/image2video``: as text2video, prompt optional, ``image`` or
    ``image_tail`` required (PROTOCOL.md route table)."""

    model_name: StrictStr | None = None
    prompt: Prompt | None = None
    negative_prompt: Prompt | None = None
    image: Image | None = None
    image_tail: Image | None = None
    static_mask: Image | None = None
    dynamic_masks: list[DynamicMask] | None = None
    mode: Mode | None = None
    duration: Duration | None = None
    aspect_ratio: VideoAspect | None = None
    cfg_scale: Unit | None = None
    camera_control: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _needs_an_image(self) -> VideosImage2Video:
        if not self.image and not self.image_tail:
            raise ValueError("image: image or image_tail is required")
        return self


MODELS: dict[Route, type[_Body]] = {
    Route.IMAGES_GENERATIONS: ImagesGenerations,
    Route.IMAGES_MULTI_IMAGE2IMAGE: ImagesMultiImage2Image,
    Route.VIDEOS_MULTI_IMAGE2VIDEO: VideosMultiImage2Video,
    Route.VIDEOS_TEXT2VIDEO: VideosText2Video,
    Route.VIDEOS_IMAGE2VIDEO: VideosImage2Video,
}

# Input spellings accepted and rewritten before sending (PROTOCOL.md section 1: seed 004).
ALIASES: dict[Route, dict[str, str]] = {
    Route.IMAGES_MULTI_IMAGE2IMAGE: {"scence_image": "scene_image"},
}


def overlay(route: Route, name: str, fields: Mapping[str, tuple[Any, Any]]) -> type[_Body]:
    """The common model of ``route`` with some fields' rules replaced: a provider's overlay.

    Args:
        route: The route whose common model (:data:`MODELS`) is narrowed.
        name: Names the new model (e.g. ``"cometapi"``), for messages and reprs.
        fields: ``{field: (type, default)}`` in :func:`pydantic.create_model`'s terms;
            ``...`` as the default makes the field required. Every other rule is kept.

    Returns:
        A subclass of ``MODELS[route]``, to pass to :func:`validate_body` as ``model``.
    """
    base = MODELS[route]
    model_name = f"{base.__name__}_{name}"
    defined: dict[str, Any] = dict(fields)
    return create_model(model_name, __base__=base, **defined)


def parse_route(route: str) -> Route:
    """Return the :class:`Route` for ``"images/generations"`` and the like.

    Raises:
        InvalidRequest: the route is not one of the five supported create routes.
    """
    try:
        return Route(route.strip("/"))
    except ValueError:
        allowed = ", ".join(r.value for r in Route)
        raise InvalidRequest(
            route, [Problem("route", f"{route!r} is not one of {allowed}")]
        ) from None


def validate_body(
    route: str | Route, body: dict[str, Any], *, model: type[_Body] | None = None
) -> dict[str, Any]:
    """Check a create body against every documented rule of its route.

    Args:
        route: One of the five create routes, e.g. ``"images/generations"``.
        body: The JSON object to send, as a dict.
        model: The rules to check against instead of the common ones (``MODELS[route]``):
            a provider's overlay made by :func:`overlay` (see :mod:`submitter.providers`).

    Returns:
        The body to send: the caller's fields unchanged (no defaults are added), unknown
        fields kept, input aliases rewritten (``scence_image`` -> ``scene_image``).

    Raises:
        InvalidRequest: the route is unknown, the body is not an object, or one or more rules
            are broken; ``problems`` names each field and rule.
    """
    parsed_route = parse_route(str(route))
    if not isinstance(body, dict):
        raise InvalidRequest(parsed_route, [Problem("body", "must be a JSON object")])
    out = dict(body)
    for alias, name in ALIASES.get(parsed_route, {}).items():
        if alias in out:
            if name in out:
                raise InvalidRequest(
                    parsed_route, [Problem(alias, f"give {name} or {alias}, not both")]
                )
            out[name] = out.pop(alias)
    try:
        (model or MODELS[parsed_route]).model_validate(out)
    except ValidationError as exc:
        raise InvalidRequest(parsed_route, [_problem(e) for e in exc.errors()]) from None
    from submitter.images import check_inline_images  # here: submitter.images imports us

    check_inline_images(parsed_route, out)  # pixel size and aspect ratio (seed 002)
    return out


def _problem(error: Any) -> Problem:
    """Turn one pydantic error into ``Problem(field, rule)`` with the bad value named."""
    loc = [str(p) for p in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if not loc and ": " in message:  # cross-field rule: "field: rule"
        field, _, message = message.partition(": ")
        return Problem(field, message)
    field = ".".join(loc) or "body"
    value = error.get("input")
    if error["type"] == "missing":
        return Problem(field, "is required")
    if isinstance(value, str) and len(value) > 40:
        got = f"a string of {len(value)} chars"
    elif isinstance(value, (dict, list)):
        got = f"a {type(value).__name__} of {len(value)}"
    else:
        got = repr(value)
    return Problem(field, f"{message[0].lower()}{message[1:]} (got {got})")
