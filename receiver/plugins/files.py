"""The downloader's files on disk: what each one is called, and how it is saved atomically.

* Safe names (:func:`path_segment`): ``external_task_id`` and ``kind`` each become one path
  segment: every character outside ``[A-Za-z0-9._-]`` becomes ``_``, a leading ``.`` becomes
  ``_`` (so no ``..``, no hidden file), the result is cut to 100 characters, and when
  anything was changed ``-`` and 8 hex digits of the original's SHA-256 are appended, so two
  different ids never share a directory. ``../x`` becomes ``_._x-<hash>``.
* Extension (:func:`extension`): the suffix of the path of the URL that served the file
  (after redirects) when it is a known media suffix (:data:`MEDIA_SUFFIXES`), else the one
  :mod:`mimetypes` gives for the ``Content-Type``, else ``.bin``.
* Atomic saving (:class:`PartFile`): the body is streamed (never held whole in memory) into
  a temporary file ``.{name}.XXXXXXXX.part`` in the final directory while its size and
  SHA-256 are computed; then the file is fsynced, renamed over the final name
  (``os.replace``) and the directory fsynced (its parent too when the directory is new). Any
  failure or cancellation before the rename removes the temporary file, so the final name
  only ever holds a complete file. A temporary file left by a killed process is removed when
  the same name is saved again. Creating the temporary file and writing chunks (to the page
  cache) happen in the event loop; the fsyncs, the rename and the re-hashing of existing
  files (:func:`unchanged`) run in a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hashlib
import mimetypes
import os
import re
import tempfile
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO

from receiver.plugins import SavedFile

__all__ = [
    "MEDIA_SUFFIXES",
    "PartFile",
    "extension",
    "path_segment",
    "unchanged",
    "unique",
    "writable_directory",
]

#: URL path suffixes taken as the saved file's extension as they are.
MEDIA_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp4", ".mov", ".webm", ".mp3", ".wav",
     ".m4a", ".aac", ".ogg", ".flac"}
)  # fmt: skip
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_MAX_SEGMENT = 100


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


def unique(label: str, taken: set[str]) -> str:
    """``label``, or ``label-2``, ``label-3``... when ``taken`` has it; adds the result to
    ``taken``."""
    name, n = label, 1
    while name in taken:
        n += 1
        name = f"{label}-{n}"
    taken.add(name)
    return name


def extension(url_path: str, content_type: str) -> str:
    """The file extension (``".png"``) for a body served at ``url_path`` with
    ``content_type`` (a bare media type, or ``""``); rule in the module docstring."""
    suffix = PurePosixPath(url_path).suffix.lower()
    if suffix in MEDIA_SUFFIXES:
        return suffix
    guessed = mimetypes.guess_extension(content_type) if content_type else None
    return guessed if guessed and _UNSAFE_CHARS.sub("", guessed) == guessed else ".bin"


def writable_directory(directory: Path) -> Path:
    """``directory`` made absolute, created if missing, and checked by writing a file there.

    Raises:
        OSError: it cannot be created or written to.
    """
    directory = directory.absolute()
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=directory):
        pass
    return directory


def unchanged(record: SavedFile) -> bool:
    """Whether ``record``'s file still exists with the recorded size and SHA-256 (reads the
    whole file: call it in a thread)."""
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


class PartFile:
    """The temporary file a download streams into, beside its ``final`` name.

    Use it as a context manager around the writes and :meth:`commit`: leaving the block
    without a commit (an error, a cancellation) removes the temporary file, except when a
    cancellation arrives while the commit runs (it then ends as a whole file or none).

    Args:
        final: Where the file goes; its directory is created if missing. Create the part
            file in the event loop, not in a thread, so that a cancellation cannot orphan it.

    Raises:
        OSError: the directory or the temporary file cannot be created.
    """

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
        self._committing = False
        self._committed = False

    def __enter__(self) -> PartFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._committed:
            return
        if self._committing and isinstance(error, asyncio.CancelledError):
            return  # the commit goes on in its thread
        self.discard()

    def write(self, chunk: bytes) -> None:
        """Append ``chunk`` (to the page cache), counting its size and hashing it."""
        self._file.write(chunk)
        self._sha256.update(chunk)
        self.size += len(chunk)

    async def commit(self) -> str:
        """fsync, rename over the final name, fsync the directory (in a thread); returns the
        SHA-256 of the content, hex.

        Raises:
            OSError: a step failed; the final name was not replaced unless the rename ran.
        """
        self._committing = True
        sha256 = await asyncio.to_thread(self._commit)
        self._committed = True
        return sha256

    def _commit(self) -> str:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.path, self.final)
        _fsync_directory(self.final.parent)
        if self._new_directory:
            _fsync_directory(self.final.parent.parent)
        return self._sha256.hexdigest()

    def discard(self) -> None:
        """Close and remove the temporary file (the final name is left as it was)."""
        with contextlib.suppress(OSError, ValueError):
            self._file.close()
        self.path.unlink(missing_ok=True)
