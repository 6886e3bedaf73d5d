"""Provider profiles: how each Kling system is reached, one declarative entry per system.

Our users reach Kling in three ways; each has its API pages in ``docs/kling/seeds/``:

* ``official``: Kling's own API (seed 002), ``https://api-singapore.klingai.com/v1/...``,
  an HS256 JWT signed from the Access Key / Secret Key pair;
* ``hingnet``: the hingnet reseller (seeds 000, 001, 003), ``/kling/v1/...``, a bearer key;
* ``cometapi``: the CometAPI reseller (seed 004), ``/kling/v1/...``, a bearer key, and its
  own rules for multi-image bodies.

A :class:`Provider` declares its default base URL and path prefix, the hosts it is inferred
from, its auth kind, the path of each route that differs from Kling's, the routes it
recognises from a body's fields, its rule overlay on top of the common rules of
:mod:`submitter.bodies`, and the wire spelling of fields it names differently. The methods
of :class:`Provider` are the only code paths: a fourth system is a new entry in
:data:`PROVIDERS`, nothing else.

Where a page is silent, the entry follows Kling's own layout, and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

import httpx
from pydantic import Field

from submitter.bodies import SubjectImage, overlay, parse_route, validate_body
from submitter.errors import InvalidRequest, Problem
from submitter.protocol import Route

__all__ = [
    "COMETAPI",
    "HINGNET",
    "OFFICIAL",
    "PROVIDERS",
    "AuthKind",
    "Provider",
    "Recognise",
    "by_name",
    "check_url",
    "infer",
    "resolve",
]


class AuthKind(StrEnum):
    """How a provider authenticates (PROTOCOL.md section 2)."""

    JWT = "jwt"
    """``Authorization: Bearer <JWT>``, HS256, signed from KLING_ACCESS_KEY + KLING_SECRET_KEY."""
    BEARER = "bearer"
    """``Authorization: Bearer <KLING_API_KEY>``, the key as given."""


@dataclass(frozen=True)
class Recognise:
    """A body given for ``route`` that has ``field`` is a body of ``as_route``.

    CometAPI documents its multi-image body under ``images/generations`` (seed 004), so a
    body posted there with ``subject_image_list`` is checked as ``images/multi-image2image``.
    """

    route: Route
    field: str
    as_route: Route


def _frozen(mapping: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Provider:
    """One Kling system: where it is, how it authenticates, and its own rules.

    Attributes:
        name: The ``KLING_PROVIDER`` value, e.g. ``"cometapi"``.
        seeds: The seed pages (``docs/kling/seeds/NNN_*.txt``) the entry is taken from.
        base_url: The default ``KLING_API_BASE``, scheme and host only.
        prefix: The path prefix before ``/v1/`` (``"/kling"``) or ``""``; added to a base
            URL that has no path of its own.
        hosts: Domains whose hosts (the domain itself or any subdomain) infer this provider.
        auth: Its :class:`AuthKind`.
        paths: The path after ``/v1/`` of each route that differs from the route's name;
            every other route keeps its name (``images/generations``).
        recognise: Bodies recognised as another route by one of their fields.
        rules: Per route, pydantic field definitions ``{field: (type, default)}`` that
            replace the common rules of those fields (:func:`submitter.bodies.overlay`).
        wire_names: Per route, ``{Kling's field name: the name sent to this provider}``; each
            wire name must be an input alias of :data:`submitter.bodies.ALIASES`, so that
            either spelling is accepted on every profile.
    """

    name: str
    seeds: tuple[str, ...]
    base_url: str
    prefix: str
    hosts: tuple[str, ...]
    auth: AuthKind
    paths: Mapping[Route, str] = field(default_factory=dict)
    recognise: tuple[Recognise, ...] = ()
    rules: Mapping[Route, Mapping[str, tuple[Any, Any]]] = field(default_factory=dict, repr=False)
    wire_names: Mapping[Route, Mapping[str, str]] = field(default_factory=dict)
    _models: Mapping[Route, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        models = {route: overlay(route, self.name, f) for route, f in self.rules.items()}
        object.__setattr__(self, "_models", _frozen(models))
        for name in ("paths", "rules", "wire_names"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    @property
    def default_api_base(self) -> str:
        """The base URL used when ``KLING_API_BASE`` is unset: ``base_url`` + ``prefix``."""
        return self.base_url + self.prefix

    def path(self, route: Route) -> str:
        """The path of ``route`` after ``{api_base}/v1/``, e.g. ``"images/generations"``."""
        return self.paths.get(route, route.value)

    def routes_at(self, path: str) -> tuple[Route, ...]:
        """Every route this provider serves at ``path`` (after ``/v1/``), Kling's own first."""
        found = [r for r in Route if self.path(r) == path.strip("/")]
        return tuple(sorted(found, key=lambda r: r.value != path.strip("/")))

    def resolve(self, route: str | Route, body: Any) -> Route:
        """The route a body given for ``route`` belongs to (see :class:`Recognise`).

        Raises:
            InvalidRequest: ``route`` is not one of the five create routes.
        """
        parsed = parse_route(str(route))
        for rule in self.recognise:
            if rule.route is parsed and isinstance(body, dict) and rule.field in body:
                return rule.as_route
        return parsed

    def check(self, route: str | Route, body: Any) -> tuple[Route, dict[str, Any]]:
        """Check a create body against the common rules and this provider's overlay.

        Either spelling of an aliased field is accepted (``scene_image`` or
        ``scence_image``); both at once are refused.

        Returns:
            The route the body belongs to (:meth:`resolve`) and the body in Kling's own
            spelling (``scene_image``), unknown fields kept, no defaults added.

        Raises:
            InvalidRequest: the route is unknown, or a rule is broken; a problem with a rule
                of this provider's overlay ends with ``[<name> rule, seed NNN]``, e.g.
                ``"model_name: input should be 'kling-v2' (got 'kling-v2-1') [cometapi rule,
                seed 004] (images/multi-image2image)"``.
        """
        resolved = self.resolve(route, body)
        try:
            return resolved, validate_body(resolved, body, model=self._models.get(resolved))
        except InvalidRequest as exc:
            overlaid = self.rules.get(resolved, {})
            tag = f" [{self.name} rule{_cited(self.seeds)}]"
            problems = [
                Problem(p.field, p.rule + tag) if p.field.split(".")[0] in overlaid else p
                for p in exc.problems
            ]
            raise InvalidRequest(resolved, problems) from None

    def to_wire(self, route: Route, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` (checked, in Kling's spelling) with each field renamed as this provider
        spells it (:attr:`wire_names`); a new dict, key order kept."""
        names = self.wire_names.get(route, {})
        return {names.get(k, k): v for k, v in body.items()}

    def api_base(self, url: str) -> str:
        """``url`` normalised: no trailing slash, and :attr:`prefix` added when it has no path.

        Raises:
            ValueError: ``url`` is not ``http(s)://host[:port][/path]`` (no scheme, no host, a
                bad port, a query, a fragment, credentials or whitespace), or its path ends in
                ``/v1``, which kling-hooks appends itself; the message names the value.
        """
        parts = check_url(url)
        path = parts.path.rstrip("/")
        segments = path.split("/")
        if "v1" in (s.lower() for s in segments):
            kept = "/".join(segments[: [s.lower() for s in segments].index("v1")])
            fixed = urlunsplit((parts.scheme, parts.netloc, kept, "", ""))
            raise ValueError(
                f"{url!r} {'ends in' if segments[-1].lower() == 'v1' else 'holds'} /v1,"
                " which kling-hooks adds itself before each route: "
                f"give {fixed!r}"
            )
        return urlunsplit((parts.scheme, parts.netloc, path or self.prefix, "", ""))


def _cited(seeds: tuple[str, ...]) -> str:
    """``", seed 004"``, ``", seeds 000, 001"`` or ``""``."""
    return f", seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}" if seeds else ""


def check_url(url: str) -> SplitResult:
    """``urlsplit(url)``, once ``url`` is known to be ``http(s)://host[:port][/path]``.

    Raises:
        ValueError: no scheme or not http(s), no host, a bad port, credentials, a query, a
            fragment or whitespace; the message quotes ``url``.
    """
    example = "e.g. https://api-singapore.klingai.com"
    if not url or any(c.isspace() for c in url):
        raise ValueError(f"{url!r} is not a URL ({example})")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL"
        raise ValueError(f"{url!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL with a host ({example})")
    try:
        parts.port  # noqa: B018 (urlsplit checks the port only when it is read)
    except ValueError:
        raise ValueError(f"{url!r} has a bad port") from None
    if not parts.hostname or parts.username is not None:
        raise ValueError(f"{url!r} must name a host without credentials ({example})")
    if parts.query or parts.fragment:
        raise ValueError(f"{url!r} must not carry a query or a fragment")
    try:  # the HTTP client's own parser: IDNA labels, IPv6 brackets
        parsed = httpx.URL(url)
        port = parsed.port if parsed.host else None  # reading the host decodes IDNA labels
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise ValueError(f"{url!r} is not a URL ({exc})") from None
    if port == 0:
        raise ValueError(f"{url!r} has a bad port")
    return parts


OFFICIAL = Provider(
    # Seed 002 (Kling's own multi-image2image page): routes at /v1/<route>, query by task_id
    # or external_task_id at /v1/<route>/{id}, list at ?pageNum=&pageSize=. The JWT is
    # Kling's "General Information" page (PROTOCOL.md section 2).
    name="official",
    seeds=("002",),
    base_url="https://api-singapore.klingai.com",
    prefix="",
    hosts=("klingai.com",),
    auth=AuthKind.JWT,
)

HINGNET = Provider(
    # Seeds 000 (multi-image2image), 001 (multi-image2video, with the query and list curls)
    # and 003 (images/generations): "与官网一致", the official bodies and answers under
    # https://models.hingnet.com.cn/kling/v1/..., with a bearer key.
    name="hingnet",
    seeds=("000", "001", "003"),
    base_url="https://models.hingnet.com.cn",
    prefix="/kling",
    hosts=("hingnet.com.cn",),
    auth=AuthKind.BEARER,
)

COMETAPI = Provider(
    # Seed 004: the multi-image body is posted to /kling/v1/images/generations, queried
    # through the image query path; 2 to 4 subject images, model_name kling-v2 only, the
    # scene image spelled scence_image; "Bearer token authentication. Use your CometAPI key."
    # The page documents no other route: they follow Kling's layout under /kling/v1/.
    name="cometapi",
    seeds=("004",),
    base_url="https://api.cometapi.com",
    prefix="/kling",
    hosts=("cometapi.com",),
    auth=AuthKind.BEARER,
    paths={Route.IMAGES_MULTI_IMAGE2IMAGE: "images/generations"},
    recognise=(
        Recognise(Route.IMAGES_GENERATIONS, "subject_image_list", Route.IMAGES_MULTI_IMAGE2IMAGE),
    ),
    rules={
        Route.IMAGES_MULTI_IMAGE2IMAGE: {
            "model_name": (Literal["kling-v2"], "kling-v2"),
            "subject_image_list": (
                Annotated[list[SubjectImage], Field(min_length=2, max_length=4)],
                ...,
            ),
        }
    },
    wire_names={Route.IMAGES_MULTI_IMAGE2IMAGE: {"scene_image": "scence_image"}},
)

PROVIDERS: Mapping[str, Provider] = _frozen({p.name: p for p in (OFFICIAL, HINGNET, COMETAPI)})
"""Every provider, by :attr:`Provider.name`."""


def by_name(name: str) -> Provider:
    """The provider called ``name`` (case and surrounding space ignored).

    Raises:
        ValueError: no provider has that name; the message lists the names.
    """
    found = PROVIDERS.get(name.strip().lower())
    if found is None:
        raise ValueError(f"{name!r} is not a provider: one of {', '.join(PROVIDERS)}")
    return found


def infer(api_base: str) -> Provider:
    """The provider whose :attr:`Provider.hosts` hold ``api_base``'s host, else ``official``.

    Raises:
        ValueError: ``api_base`` is not an http(s) URL with a host.
    """
    host = (check_url(api_base).hostname or "").rstrip(".")
    for provider in PROVIDERS.values():
        if any(host == domain or host.endswith("." + domain) for domain in provider.hosts):
            return provider
    return OFFICIAL


def resolve(name: str | None, api_base: str | None) -> Provider:
    """The effective provider: ``name`` when given (``KLING_PROVIDER``), else the one
    inferred from ``api_base``'s host (``KLING_API_BASE``), else ``official``.

    Raises:
        ValueError: ``name`` is unknown, or ``api_base`` is needed and is not a URL.
    """
    if name:
        return by_name(name)
    return infer(api_base) if api_base else OFFICIAL
