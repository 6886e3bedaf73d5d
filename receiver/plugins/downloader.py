"""The built-in downloader: saves every result file of a succeeded task before Kling deletes it.

Kling deletes result files after 30 days and newer URLs are signed and may expire sooner
(PROTOCOL.md section 4), so on each ``succeed`` event this plugin fetches every URL of
:meth:`Event.result_urls` (images, image watermarks, videos, video watermarks, audios...) and
returns one :class:`SavedFile` per URL (with the ``Content-Type`` it was served with, or, for
a generic or missing one, that of the extension chosen), which the dispatcher records and
``GET /tasks/{id}`` shows. Configure it with::

    [plugins.downloader]
    directory = "/var/lib/kling-hooks/files"   # required
    max_bytes = 2147483648                     # per file; default 2 GiB
    allow_private_hosts = false                # default; true only for a test rig

Layout: ``{directory}/{external_task_id}/{kind}-{index}{ext}``, for example
``kh-01JD.../image-0.png``, ``kh-01JD.../image_watermark-0.png``, ``kh-01JD.../video-0.mp4``,
``kh-01JD.../video_watermark-0.mp4``. ``kind`` and ``index`` are those of
:class:`ResultURL`; a task without an ``external_task_id`` uses its ``task_id``. Should two
URLs of one event share a kind and an index, the later ones get ``-2``, ``-3``... after the
index.

Rules:

* Names and extensions: see :mod:`receiver.plugins.files`: ``external_task_id`` and
  ``kind`` each become one safe path segment (:func:`path_segment`: ``../x`` becomes
  ``_._x-<hash>``); the extension is the URL's media suffix (:data:`MEDIA_SUFFIXES`), else
  the ``Content-Type``'s, else ``.bin``.
* Content type: an ``image`` or ``image_watermark`` URL must answer ``image/*``, a ``video``
  one ``video/*``, an ``audio`` one ``audio/*``; any other kind (``video_cover``...) one of
  those three. ``application/octet-stream`` and ``binary/octet-stream`` (signed CDN URLs often
  serve those) and a missing ``Content-Type`` are accepted for every kind. Anything else
  (``text/html`` login or error pages, JSON, XML) raises :class:`PermanentError`.
* Size: a ``Content-Length`` above ``max_bytes`` is refused before the body is read, and the
  bytes are counted while streaming (a chunked body has no length), aborting past
  ``max_bytes``: :class:`PermanentError` either way. ``Accept-Encoding: identity`` is sent.
* Atomic saving: see :mod:`receiver.plugins.files`: the body is streamed into a temporary
  file beside the final name, fsynced and renamed, so the final name only ever holds a
  complete file; any failure or cancellation before the rename removes the temporary file,
  and one left by a killed process is removed when the delivery runs again (a delivery left
  ``running`` by a crash is resumed at start-up).
* Redelivery: when ``event.saved_files`` has a record for the same URL whose file still
  exists with the recorded size and SHA-256, that record is returned again and no request is
  made; otherwise the file is fetched again (and replaces the changed one).
* SSRF: see :mod:`receiver.plugins.safehttp`: only http(s); unless ``allow_private_hosts``,
  hosts resolving to loopback, private, link-local, multicast, reserved or unspecified
  addresses are refused; the connection is pinned to the checked address; at most 5
  redirects, each checked the same way. Refusals are :class:`PermanentError`.
* HTTP answers: 404 and 410 are :class:`PermanentError` (Kling deleted the file); 429 and
  503 with ``Retry-After`` (seconds or an HTTP date) are :class:`RetryAfter`; every other
  non-200 answer and every network error is :class:`DownloadError` or an ``httpx`` error,
  retried on ``retry_schedule_s``.
* Time: ``timeout_s`` (default 900 s, for large videos) bounds a whole delivery; each
  network step (connect, each read) times out after ``min(timeout_s, 60)`` seconds.
* Logs and error messages show URLs without their query string (signatures live there).
"""

from __future__ import annotations

import asyncio
import mimetypes
import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

import httpx
import structlog
from pydantic import Field

from receiver import __version__
from receiver.plugins import (
    Event,
    PermanentError,
    Plugin,
    PluginError,
    PluginSettings,
    ResultURL,
    RetryAfter,
    SavedFile,
    retry_after_s,
)
from receiver.plugins.files import (
    MEDIA_SUFFIXES,
    PartFile,
    extension,
    path_segment,
    unchanged,
    unique,
    writable_directory,
)
from receiver.plugins.safehttp import open_stream
from submitter.protocol import TaskStatus
from submitter.safehttp import Guard, Resolver, new_client, redact, system_resolver

__all__ = ["MEDIA_SUFFIXES", "DownloadError", "Downloader", "DownloaderSettings", "path_segment"]

log = structlog.get_logger("kling_hooks.plugins.downloader")

#: Content types accepted for every kind (see the module docstring).
ANY_KIND_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
NETWORK_TIMEOUT_S = 60.0


class DownloadError(PluginError):
    """A failed fetch worth retrying (a 5xx, an unexpected status, a network error); the
    message names the cause and the URL without its query string."""


class DownloaderSettings(PluginSettings):
    """The ``[plugins.downloader]`` table.

    Attributes:
        directory: Where files are saved (created at start-up).
        max_bytes: Largest file accepted, bytes; default 2 GiB.
        allow_private_hosts: Fetch from loopback, private, link-local... hosts too.
        timeout_s: Longest a delivery (all of an event's files) may take; default 900 s.
    """

    directory: Path
    max_bytes: int = Field(default=2 * 1024**3, gt=0)
    allow_private_hosts: bool = False
    timeout_s: float = Field(default=900.0, gt=0)


class Downloader(Plugin):
    """Saves every result URL of a succeeded task under ``directory`` (see the module
    docstring for the layout and the rules).

    Args:
        settings: A :class:`DownloaderSettings`.
        resolver: Host name resolver (default: the system's, via ``loop.getaddrinfo``).
        verify: TLS verification: True (system CAs) or an ``ssl.SSLContext``.

    Raises:
        TypeError: ``settings`` is not a :class:`DownloaderSettings`.
    """

    name = "downloader"
    version = __version__
    settings_model = DownloaderSettings
    default_statuses: ClassVar[frozenset[TaskStatus]] = frozenset({TaskStatus.SUCCEED})
    settings: DownloaderSettings

    def __init__(
        self,
        settings: PluginSettings,
        *,
        resolver: Resolver | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        if not isinstance(settings, DownloaderSettings):
            raise TypeError("Downloader needs DownloaderSettings")
        super().__init__(settings)
        self._guard = Guard(
            settings.allow_private_hosts,
            resolver or system_resolver,
            private_hint="allow_private_hosts = true allows it",
        )
        self._verify = verify
        self._client: httpx.AsyncClient | None = None
        self._directory = settings.directory

    async def start(self) -> None:
        """Create ``directory``, check that a file can be written there, open the client.

        Raises:
            OSError: the directory cannot be created or written to.
        """
        self._directory = await asyncio.to_thread(writable_directory, self.settings.directory)
        timeout_s = min(self.settings.timeout_s, NETWORK_TIMEOUT_S)
        self._client = new_client(timeout_s=timeout_s, verify=self._verify)

    async def stop(self) -> None:
        """Close the HTTP client."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def handle(self, event: Event) -> Iterable[SavedFile] | None:
        """Save every URL of ``event.result_urls()``, one after the other.

        Returns:
            One :class:`SavedFile` per URL, in order (reused records included).

        Raises:
            PermanentError: a refused URL, content type or size; HTTP 404 or 410.
            RetryAfter: HTTP 429 or 503 with ``Retry-After``.
            DownloadError: anything else (retried), network and disk errors included.

            Each carries, as ``saved_files``, the files this attempt saved (or found
            unchanged) before the failure: they are recorded, and the next attempt skips them.
        """
        known = {f.url: f for f in event.saved_files}
        folder = self._directory / path_segment(event.external_task_id or event.task_id)
        saved: list[SavedFile] = []
        labels: set[str] = set()
        for item in event.result_urls():
            label = unique(f"{path_segment(item.kind)}-{item.index}", labels)
            record = known.get(item.url)
            if record is not None and await asyncio.to_thread(unchanged, record):
                log.info("file_kept", task_id=event.task_id, path=record.path)
                saved.append(record)
                continue
            try:
                saved.append(await self._download(item, folder, label))
            except PluginError as exc:  # keep what this attempt saved before the failure
                exc.saved_files = (*saved, *exc.saved_files)
                raise
            except (httpx.HTTPError, OSError) as exc:
                raise DownloadError(
                    f"{redact(item.url)}: {type(exc).__name__}", saved_files=saved
                ) from exc
            log.info(
                "file_saved",
                task_id=event.task_id,
                url=redact(item.url),
                path=saved[-1].path,
                bytes=saved[-1].bytes,
            )
        return saved

    async def _download(self, item: ResultURL, folder: Path, label: str) -> SavedFile:
        if self._client is None:
            raise RuntimeError("Downloader.start() was not called")
        headers = {"Accept-Encoding": "identity", "User-Agent": f"kling-hooks/{__version__}"}
        async with open_stream(self._client, item.url, self._guard, headers) as response:
            _check_status(response, item.url)
            content_type = _check_content_type(response, item)
            _check_length(response, item.url, self.settings.max_bytes)
            # The path after redirects names the extension.
            name = f"{label}{extension(response.request.url.path, content_type)}"
            with PartFile(folder / name) as part:
                async for chunk in response.aiter_bytes():
                    part.write(chunk)
                    if part.size > self.settings.max_bytes:
                        raise PermanentError(
                            f"{redact(item.url)}: body longer than max_bytes="
                            f"{self.settings.max_bytes}; refused"
                        )
                sha256 = await part.commit()
        recorded = content_type if content_type not in ("", *ANY_KIND_TYPES) else None
        # A generic or missing type: the one of the extension chosen (``image/png``...).
        recorded = recorded or mimetypes.guess_type(name)[0]
        return SavedFile(item.url, str(part.final), part.size, sha256, recorded)


def _check_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status == 200:
        return
    where = f"HTTP {status} for {redact(url)}"
    if status in (404, 410):
        raise PermanentError(f"{where}: the file is gone (Kling deletes results after 30 days)")
    if status in (429, 503):
        delay_s = retry_after_s(response.headers.get("retry-after"))
        if delay_s is not None:
            raise RetryAfter(delay_s, f"{where}: Retry-After {delay_s:g} s")
    raise DownloadError(where)


def _check_content_type(response: httpx.Response, item: ResultURL) -> str:
    header: str = response.headers.get("content-type", "")
    content_type = header.split(";")[0].strip().lower()
    media = item.media if item.kind in (item.media, f"{item.media}_watermark") else "other"
    allowed = ("image", "video", "audio") if media == "other" else (media,)
    if not content_type or content_type in ANY_KIND_TYPES:
        return content_type
    if content_type.split("/")[0] in allowed:
        return content_type
    raise PermanentError(
        f"{redact(item.url)}: Content-Type {content_type!r} is not "
        f"{' or '.join(f'{m}/*' for m in allowed)} (expected for {item.kind}); refused"
    )


def _check_length(response: httpx.Response, url: str, max_bytes: int) -> None:
    try:
        length = int(response.headers.get("content-length", ""))
    except ValueError:
        return
    if length > max_bytes:
        raise PermanentError(
            f"{redact(url)}: Content-Length {length} is over max_bytes={max_bytes}; refused"
        )
