"""Socket activation: listening sockets that ``kling-hooks serve`` inherits instead of binding.

Two ways in, the first that applies wins:

- ``serve --fd N``: file descriptor ``N``, left open by whoever started the process (a
  supervisor, a test, ``systemd-socket-activate``).
- systemd's protocol (``sd_listen_fds(3)``): ``LISTEN_FDS`` sockets starting at fd 3
  (:data:`SD_LISTEN_FDS_START`), meant for this process only when ``LISTEN_PID`` is its pid.
  ``LISTEN_FDS``, ``LISTEN_PID`` and ``LISTEN_FDNAMES`` are removed from the environment once
  read, whoever they were meant for, so that a child process never takes them for its own.

Neither: the caller binds ``KLING_HOOKS_HOST:KLING_HOOKS_PORT`` itself. An inherited socket
outlives the process: while one ``serve`` stops and the next starts, new connections wait in
the kernel's accept queue (the socket unit's ``Backlog=``) instead of being refused.
"""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Literal

from receiver.errors import ConfigError

__all__ = ["SD_LISTEN_FDS_START", "Inherited", "inherited_sockets"]

#: The first file descriptor systemd passes (``SD_LISTEN_FDS_START`` of sd-daemon.h).
SD_LISTEN_FDS_START = 3
_LISTEN_VARIABLES = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")


#: Where inherited sockets came from: ``--fd N``, systemd's ``LISTEN_FDS``, or nowhere.
Source = Literal["--fd", "LISTEN_FDS", ""]


@dataclass(frozen=True)
class Inherited:
    """The listening sockets a process was given, and where they came from.

    Attributes:
        sockets: Listening stream sockets, in fd order; empty when none were given.
        source: ``"--fd"``, ``"LISTEN_FDS"``, or ``""`` when none were given.
    """

    sockets: list[socket.socket]
    source: Source


def inherited_sockets(fd: int | None, environ: MutableMapping[str, str], pid: int) -> Inherited:
    """The listening sockets to serve on: ``fd`` if given, else systemd's ``LISTEN_FDS``.

    Args:
        fd: ``serve --fd``'s value, or None.
        environ: The process environment (``os.environ``); the ``LISTEN_*`` variables are
            removed from it in every case.
        pid: This process's id (``os.getpid()``); ``LISTEN_FDS`` counts only when
            ``LISTEN_PID`` equals it (sd_listen_fds(3)), otherwise it is ignored.

    Returns:
        The sockets (the objects own their fds) and their source; no sockets when neither
        applies.

    Raises:
        ConfigError: ``LISTEN_FDS`` or ``LISTEN_PID`` is not a number, or a given fd is not
            open, not a stream socket, or not listening; the message names the fd and
            where it came from (``--fd 7 is not a socket``).
    """
    given = {name: environ.pop(name) for name in _LISTEN_VARIABLES if name in environ}
    if fd is not None:
        return Inherited([_listening_socket(fd, f"--fd {fd}")], "--fd")
    if "LISTEN_FDS" not in given or "LISTEN_PID" not in given:
        return Inherited([], "")
    count, listen_pid = (_count(given, name) for name in ("LISTEN_FDS", "LISTEN_PID"))
    if listen_pid != pid:  # meant for another process (sd_listen_fds ignores them too)
        return Inherited([], "")
    fds = range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)
    return Inherited([_listening_socket(n, f"LISTEN_FDS fd {n}") for n in fds], "LISTEN_FDS")


def _count(given: dict[str, str], name: str) -> int:
    """``given[name]`` as a whole number >= 0. Raises ConfigError naming it otherwise."""
    value = given[name].strip()
    if not value.isascii() or not value.isdigit():
        raise ConfigError(f"{name}={given[name]!r} is not a whole number (sd_listen_fds(3))")
    return int(value)


def _listening_socket(fd: int, name: str) -> socket.socket:
    """A socket object owning ``fd``, once it is checked to be a listening stream socket.

    Raises:
        ConfigError: ``fd`` is not open, not a socket, not a stream socket, or not listening.
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        raise ConfigError(f"{name} is not an open file descriptor ({exc.strerror})") from None
    if not stat.S_ISSOCK(mode):
        raise ConfigError(f"{name} is not a socket")
    sock = socket.socket(fileno=fd)  # family and type are read from the fd
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ConfigError(f"{name} is not a stream socket (SOCK_STREAM; use ListenStream=)")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ConfigError(f"{name} is a socket that is not listening (call listen() on it)")
    return sock
