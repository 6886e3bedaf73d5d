"""Storage faults made for real, from outside the receiver's process, and cleared again.

* :class:`FullDisk`: a small tmpfs the suite mounts itself (as root, ``mount -t tmpfs -o
  size=``), filled to the last byte by a filler file; SQLite's writes get ``ENOSPC``
  (``SQLITE_FULL``). Clearing deletes the filler.
* :class:`FileSizeLimit`: where mounting is not allowed (a container without
  ``CAP_SYS_ADMIN``), the running ``serve`` process's ``RLIMIT_FSIZE`` is lowered with
  ``prlimit(2)`` to the database files' current size; a write past it gets ``EFBIG`` (Python
  ignores ``SIGXFSZ``). Clearing raises the limit back.
* :class:`Immutable`: the database and its WAL get the inode flag ``FS_IMMUTABLE_FL``
  (``chattr +i``, through the ioctl: no package needed), which refuses writes even through
  file descriptors already open, and even to root (``EPERM``: ``SQLITE_IOERR``). A plain
  ``chmod`` would not do: root's writes ignore the mode, and open descriptors keep writing.

Nothing here runs inside the receiver; each fault is what an operator's disk can do to it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x00000010


def _flags(path: Path, *, set_: int = 0, clear: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        got = struct.unpack("l", fcntl.ioctl(fd, FS_IOC_GETFLAGS, struct.pack("l", 0)))[0]
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", (got | set_) & ~clear))
    finally:
        os.close(fd)


class Immutable:
    """``FS_IMMUTABLE_FL`` on ``paths`` (those that exist) while applied.

    Args:
        paths: The database file and its ``-wal`` (the ``-shm`` is memory-mapped; leave it).
    """

    def __init__(self, *paths: Path) -> None:
        self.paths = paths
        self._applied: list[Path] = []

    @staticmethod
    def available(directory: Path) -> bool:
        """Whether this process may set the flag on files in ``directory`` (root with
        ``CAP_LINUX_IMMUTABLE``, on a file system that has it: ext4, xfs, btrfs)."""
        probe = directory / ".immutable-probe"
        probe.write_bytes(b"x")
        try:
            _flags(probe, set_=FS_IMMUTABLE_FL)
            _flags(probe, clear=FS_IMMUTABLE_FL)
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                _flags(probe, clear=FS_IMMUTABLE_FL)
            probe.unlink()
        return True

    def apply(self) -> None:
        for path in self.paths:
            if path.exists():
                _flags(path, set_=FS_IMMUTABLE_FL)
                self._applied.append(path)

    def clear(self) -> None:
        while self._applied:
            _flags(self._applied.pop(), clear=FS_IMMUTABLE_FL)


class FullDisk:
    """A tmpfs of ``size_bytes`` at ``mountpoint``, mounted by :meth:`mount`; :meth:`apply`
    fills it (a ``.filler`` file, until ``ENOSPC``), :meth:`clear` deletes the filler."""

    def __init__(self, mountpoint: Path, size_bytes: int) -> None:
        self.mountpoint = mountpoint
        self.size_bytes = size_bytes
        self.filler = mountpoint / ".filler"
        self.mounted = False

    def mount(self) -> bool:
        """Mount it; False when this process may not mount (then nothing was done)."""
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_bytes}", "tmpfs", self.mountpoint],
            capture_output=True,
            check=False,
        )
        self.mounted = done.returncode == 0
        return self.mounted

    def apply(self) -> None:
        chunk = b"\0" * (1 << 16)
        with open(self.filler, "ab", buffering=0) as out:
            while True:
                try:
                    out.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
            # the last pages: smaller writes until not even one byte fits
            for size in (4096, 512, 1):
                with contextlib.suppress(OSError):
                    while True:
                        out.write(b"\0" * size)

    def clear(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", self.mountpoint], check=False)
            self.mounted = False


class FileSizeLimit:
    """``RLIMIT_FSIZE`` of process ``pid`` lowered while applied: to ``limit_bytes``, or by
    default to the largest of ``paths``' sizes (the files cannot grow; writes inside them still
    work, as on a full disk). ``limit_bytes=0``: no file can be written at all."""

    def __init__(self, pid: int, *paths: Path, limit_bytes: int | None = None) -> None:
        self.pid = pid
        self.paths = paths
        self.limit_bytes = limit_bytes
        self._before: tuple[int, int] | None = None

    def apply(self) -> None:
        limit = self.limit_bytes
        if limit is None:
            limit = max(p.stat().st_size for p in self.paths if p.exists())
        self._before = resource.prlimit(self.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (limit, self._before[1]))

    def clear(self) -> None:
        if self._before is not None:
            resource.prlimit(self.pid, resource.RLIMIT_FSIZE, self._before)
            self._before = None


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[Immutable]:
    """:class:`Immutable` applied for the block, cleared however it ends."""
    fault = Immutable(*paths)
    fault.apply()
    try:
        yield fault
    finally:
        fault.clear()
