"""``kling-hooks submit``: one task to Kling, with our callback_url, registered with the
receiver. The body is checked against Kling's documented rules, and the provider profile's
(:mod:`submitter.providers`), before anything is sent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from receiver import credentials
from receiver.cli.options import EXIT_OK, EXIT_UNREGISTERED, load, settings_options
from receiver.config import Settings

if TYPE_CHECKING:
    import httpx

    from submitter import Submission


@click.command()
@click.argument("route")
@click.option("--data", required=True, help="the body as JSON, or @file.json")
@click.option(
    "--external-task-id", show_default="a generated kh-<ULID>", help="your id for the task"
)
@click.option(
    "--allow-unregistered",
    is_flag=True,
    help=f"exit 0 even when the receiver could not record the task (else {EXIT_UNREGISTERED})",
)
@click.option(
    "--check-images",
    is_flag=True,
    help="also fetch the start of each image URL and check Kling's image rules on it",
)
@settings_options
def submit(
    route: str,
    data: str,
    external_task_id: str | None,
    allow_unregistered: bool,
    check_images: bool,
    config: Path | None,
    db: Path | None,
) -> int:
    """Submit one task to Kling with our callback_url.

    ROUTE is images/generations, images/multi-image2image, videos/multi-image2video,
    videos/text2video or videos/image2video. The body is checked against Kling's documented
    rules first: a body that breaks one sends nothing (exit 2). Base64 images are checked
    for format, size, pixel size and aspect ratio; image URLs only with --check-images.
    The rules, paths and auth are the provider profile's (KLING_PROVIDER, else inferred from
    KLING_API_BASE); the printed JSON names it as "provider".

    Exit 3 when the task was created at Kling but the receiver could not record it (the JSON
    says "registered": false); its callbacks still arrive, but plugins filtering on routes
    miss it. --allow-unregistered makes that exit 0.
    """
    settings = load(config, db)
    try:
        body = _read_data(data)
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"cannot read --data: {exc}") from None
    # Before anything else, by the provider's rules: a bad body sends nothing.
    settings.provider.check(route, body)
    submission = asyncio.run(_submit(settings, route, body, external_task_id, check_images))
    if submission.warning:
        click.echo(f"warning: {submission.warning}", err=True)
    click.echo(json.dumps({**submission.to_json(), "provider": settings.provider.name}))
    if not submission.registered and not allow_unregistered:
        return EXIT_UNREGISTERED
    return EXIT_OK


def _read_data(value: str) -> dict[str, Any]:
    """``--data``: JSON text, or ``@path`` of a file holding it; must be an object."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("--data must be a JSON object")
    return data


async def _submit(
    settings: Settings,
    route: str,
    body: dict[str, Any],
    external_task_id: str | None,
    check_images: bool,
) -> Submission:
    """Create the task at Kling and register it with the receiver; the ``Submission``."""
    from submitter import KlingClient, Registrar

    auth = kling_auth(settings)
    # A new database would hold a callback secret no receiver knows: every callback refused.
    creds = await credentials.resolve_from_file(settings, must_exist=True)
    async with (
        Registrar(settings.api_url, creds.api_token) as registrar,
        KlingClient(
            api_base=settings.kling_api_base,
            auth=auth,
            provider=settings.provider,
            tokens=creds.tokens,
            public_url=settings.public_url,
            registrar=registrar,
        ) as client,
    ):
        return await client.submit(route, body, external_task_id, check_images=check_images)


def kling_auth(settings: Settings) -> httpx.Auth:
    """The auth flow of the settings' provider (:func:`submitter.auth.auth_for`): a JWT from
    KLING_ACCESS_KEY + KLING_SECRET_KEY, or KLING_API_KEY as a bearer key.

    Raises:
        AuthNotConfigured: the provider's keys are not set; the message names them.
    """
    from submitter.auth import auth_for

    return auth_for(
        settings.provider,
        settings.kling_api_key.get_secret_value() if settings.kling_api_key else None,
        settings.kling_access_key,
        settings.kling_secret_key.get_secret_value() if settings.kling_secret_key else None,
    )
