"""The built-in downloader: saves every result file of a succeeded task before Kling deletes it.

Kling deletes result files after 30 days and newer URLs are signed and may expire sooner
(PROTOCOL.md section 4), so on each ``succeed`` event this plugin fetches every URL of
:meth:`Event.result_urls` (images, image watermarks, videos, video watermarks, audios...) and
returns one :class:`SavedFile` per URL, which the dispatcher records and ``GET /tasks/{id}``
shows. Configure it with::

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

* Safe names (:func:`path_segment`): ``external_task_id`` and ``kind`` each become one path
  segment: every character outside ``[A-Za-z0-9._-]`` becomes ``_``, a leading ``.`` becomes
  ``_`` (so no ``..``, no hidden file), the result is cut to 100 characters, and when
  anything was changed ``-`` and 8 hex digits of the original's SHA-256 are appended, so two
  different ids never share a directory. ``../x`` becomes ``_._x-<hash>``.
* Extension: the suffix of the path of the URL that served the file (after redirects) when it
  is a known media suffix (:data:`MEDIA_SUFFIXES`), else the one :mod:`mimetypes` gives for
  the ``Content-Type``, else ``.bin``.
* Content type: an ``image`` or ``image_watermark`` URL must answer ``image/*``, a ``video``
  one ``video/*``, an ``audio`` one ``audio/*``; any other kind (``video_cover``...) one of
  those three. ``application/octet-stream`` and ``binary/octet-stream`` (signed CDN URLs often
  serve those) and a missing ``Content-Type`` are accepted for every kind. Anything else
  (``text/html`` login or error pages, JSON, XML) raises :class:`PermanentError`.
* Size: a ``Content-Length`` above ``max_bytes`` is refused before the body is read, and the
  bytes are counted while streaming (a chunked body has no length), aborting past
  ``max_bytes``: :class:`PermanentError` either way. ``Accept-Encoding: identity`` is sent.
* Atomic saving: the body is streamed (never held whole in memory) into a temporary file
  ``.{name}.XXXXXXXX.part`` in the final directory while its size and SHA-256 are computed;
  then the file is fsynced, renamed over the final name (``os.replace``) and the directory
  fsynced (its parent too when the directory is new). Any failure or cancellation before the
  rename removes the temporary file, so the final name only ever holds a complete file. A
  temporary file left by a killed process is removed when the delivery runs again (a
  delivery left ``running`` by a crash is resumed at start-up).
  Creating the temporary file and writing chunks (to the page cache) happen in the event
  loop; the fsyncs, the rename and the re-hashing of existing files run in a thread
  (``asyncio.to_thread``).
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
import contextlib
import glob
import hashlib
import mimetypes
import os
import re
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import IO, ClassVar

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
from receiver.plugins.safehttp import (
    Guard,
    Resolver,
    new_client,
    open_stream,
    redact,
    system_resolver,
)
from submitter.protocol import TaskStatus

__all__ = ["MEDIA_SUFFIXES", "DownloadError", "Downloader", "DownloaderSettings", "path_segment"]

log = structlog.get_logger("kling_hooks.plugins.downloader")

#: URL path suffixes taken as the saved file's extension as they are.
MEDIA_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4", ".mov", ".webm", ".mp3", ".wav",
     ".m4a", ".aac", ".ogg", ".flac"}
)  # fmt: skip
#: Content types accepted for every kind (see the module docstring).
ANY_KIND_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
NETWORK_TIMEOUT_S = 60.0
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_SEGMENT = 100


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


def path_segment(value: str) -> str:
    """``value`` made into one safe path segment (rule in the module docstring).

    >>> path_segment("kh-01JD0000"), path_segment("../x")
    ('kh-01JD0000', '_._x-d6b96a97')
    """
    safe = _UNSAFE_CHARS.sub("_", value)[:_MAX_SEGMENT]
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if safe != value or not safe:
        safe = f"{safe}-{hashlib.sha256(value.encode()).hexdigest()[:8]}"
    return safe


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
        self._guard = Guard(settings.allow_private_hosts, resolver or system_resolver)
        self._verify = verify
        self._client: httpx.AsyncClient | None = None
        self._directory = settings.directory

    async def start(self) -> None:
        """Create ``directory``, check that a file can be written there, open the client.

        Raises:
            OSError: the directory cannot be created or written to.
        """
        self._directory = await asyncio.to_thread(_writable_directory, self.settings.directory)
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
            label = _unique(f"{path_segment(item.kind)}-{item.index}", labels)
            record = known.get(item.url)
            if record is not None and await asyncio.to_thread(_unchanged, record):
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
            final_url = response.request.url.path  # the path after redirects
            part = _PartFile(
                folder / f"{label}{_extension(final_url, content_type)}"
            )  # not in a thread: a cancel must not orphan it
            try:
                async for chunk in response.aiter_bytes():
                    part.write(chunk)
                    if part.size > self.settings.max_bytes:
                        raise PermanentError(
                            f"{redact(item.url)}: body longer than max_bytes="
                            f"{self.settings.max_bytes}; refused"
                        )
                part.committing = True
                sha256 = await asyncio.to_thread(part.commit)
            except asyncio.CancelledError:
                if not part.committing:  # a running commit ends as a whole file or none
                    part.discard()
                raise
            except BaseException:
                part.discard()
                raise
        return SavedFile(item.url, str(part.final), part.size, sha256)


def _unique(label: str, taken: set[str]) -> str:
    """``label``, or ``label-2``, ``label-3``... when an earlier URL of the event had it."""
    unique, n = label, 1
    while unique in taken:
        n += 1
        unique = f"{label}-{n}"
    taken.add(unique)
    return unique


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


def _extension(url_path: str, content_type: str) -> str:
    suffix = PurePosixPath(url_path).suffix.lower()
    if suffix in MEDIA_SUFFIXES:
        return suffix
    guessed = mimetypes.guess_extension(content_type) if content_type else None
    return guessed if guessed and _UNSAFE_CHARS.sub("", guessed) == guessed else ".bin"


def _writable_directory(directory: Path) -> Path:
    directory = directory.absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
        pass
    return directory


def _unchanged(record: SavedFile) -> bool:
    path = Path(record.path)
    try:
        if not path.is_file() or path.stat().st_size != record.bytes:
            return False
        with path.open("rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest() == record.sha256
    except OSError:
        return False


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _PartFile:
    """The temporary file a download streams into, beside its final name."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self._new_directory = not final.parent.is_dir()
        final.parent.mkdir(parents=True, exist_ok=True)
        # A process killed mid-download leaves its temporary file behind; this delivery is
        # the only one writing this name now (a running delivery is never replayed).
        for stale in final.parent.glob(f".{glob.escape(final.name)}.*.part"):
            stale.unlink(missing_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
        self.path = Path(name)
        self._file: IO[bytes] = os.fdopen(fd, "wb")
        self._sha256 = hashlib.sha256()
        self.size = 0
        self.committing = False

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self._sha256.update(chunk)
        self.size += len(chunk)

    def commit(self) -> str:
        """fsync, rename over the final name, fsync the directory; returns the SHA-256."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.path, self.final)
        _fsync_directory(self.final.parent)
        if self._new_directory:
            _fsync_directory(self.final.parent.parent)
        return self._sha256.hexdigest()

    def discard(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._file.close()
        self.path.unlink(missing_ok=True)
