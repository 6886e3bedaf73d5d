"""A throwaway Postgres server for the tests, and a fresh database for each test.

``KLING_HOOKS_TEST_DATABASE_URL`` names a server to use (``.ci/run`` starts one and sets it:
``postgresql://postgres@127.0.0.1:PORT/postgres``, a role that may create databases). Unset,
the first test that needs Postgres starts one cluster for its pytest worker
(:func:`bench.postgres.throwaway_cluster`, ``fsync=off``: Debian's ``initdb`` and ``pg_ctl`` in
a temporary directory, on 127.0.0.1); it is stopped when the worker ends. Each test gets a
database of its own (``CREATE DATABASE``), dropped after it.

Where there is no server and no ``initdb``, Postgres tests are skipped, except in CI
(``CI=true``), where they fail: no Postgres test is skipped in CI (issue 13).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from bench.postgres import fresh_database, pg_bin, throwaway_cluster, with_database

__all__ = ["URL_VARIABLE", "fresh_database", "server", "with_database"]

URL_VARIABLE = "KLING_HOOKS_TEST_DATABASE_URL"


@contextlib.contextmanager
def server() -> Iterator[str]:
    """The URL of a Postgres server's admin database (the environment's, or a throwaway
    cluster's); skips the test where there is none, or fails it in CI."""
    given = os.environ.get(URL_VARIABLE)
    if given:
        yield given
        return
    bin_dir = pg_bin()
    if bin_dir is None:
        message = f"no Postgres: set {URL_VARIABLE}, or install Debian's postgresql (initdb)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; in CI no Postgres test is skipped")
        pytest.skip(message)
    with throwaway_cluster(bin_dir) as url:
        yield url
