"""A client of the receiver's status API, as the ``kling-hooks`` status commands use it.

Each method makes one request with ``Authorization: Bearer <token>`` and returns the answer
as the model the server built it from (``receiver.models``). Errors::

    ApiError           the status API answered, but not 200 (the message names the URL,
                       the status and the API's ``error``), or its answer is not the
                       documented shape (another program, or another version)
    ApiUnreachable     (an ApiError) the receiver could not be reached, or did not answer
                       in time; the message names the URL and the setting that chose it
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from receiver.errors import ReceiverError
from receiver.models import (
    Accepted,
    DeliveryPage,
    PluginList,
    Pruned,
    PruneRequest,
    Redelivered,
    Task,
    TaskPage,
    Verdict,
)
from submitter.protocol import TaskObject, first_error

Answer = TypeVar("Answer", bound=BaseModel)


class ApiError(ReceiverError):
    """The status API answered with an error status.

    Args:
        message: ``"{base_url}{path}: HTTP {status}: {error}"``.
        status: The HTTP status code.
    """

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ApiUnreachable(ApiError):
    """The receiver could not be reached (refused, timed out...); the message names the URL
    and what chose it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 0)


class StatusClient:
    """The status API at ``base_url``, over one ``httpx.AsyncClient``.

    Use it as an async context manager (or call :meth:`aclose`).

    Args:
        base_url: The receiver's status API base, e.g. ``http://127.0.0.1:8000``.
        token: The status API bearer token (``KLING_HOOKS_API_TOKEN``).
        timeout_s: Timeout of each request, seconds.
        transport: An httpx transport (tests pass ``httpx.ASGITransport``); default: the
            network.
        source: What chose ``base_url`` (``--url``, ``KLING_HOOKS_API_URL``...), named when
            the receiver cannot be reached or refuses the token (401).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        source: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.source = source
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout_s,
            transport=transport,
            headers={"Authorization": f"Bearer {token}"},
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def tasks(
        self,
        *,
        task_status: str | None = None,
        route: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        transition_before: int | None = None,
    ) -> TaskPage:
        """``GET /tasks``: one page, newest first, filtered by the arguments given
        (``transition_before``: latest transition received before, Unix ms).

        Raises:
            ApiError: e.g. 400 for a limit outside [1, 500] or a bad cursor.
        """
        query = _query(
            task_status=task_status,
            route=route,
            limit=limit,
            cursor=cursor,
            transition_before=transition_before,
        )
        return await self._call(TaskPage, "GET", "/tasks", params=query)

    async def task(self, task_id: str) -> Task:
        """``GET /tasks/{id}``: one task by task_id or external_task_id, with its transitions,
        deliveries and saved files.

        Raises:
            ApiError: 404 when no task has that id.
        """
        return await self._call(Task, "GET", f"/tasks/{task_id}")

    async def reconcile(self, task_id: str, answer: TaskObject) -> Verdict:
        """``POST /tasks/{id}/reconcile``: record Kling's query ``answer`` for a known task.

        Returns:
            What it did: ``new`` when it moved the task forward.

        Raises:
            ApiError: 404 for an unknown task; 409 when ``answer`` is another task.
        """
        body = answer.model_dump(mode="json", exclude_none=True)
        path = f"/tasks/{quote(task_id, safe='')}/reconcile"
        return (await self._call(Accepted, "POST", path, body=body)).verdict

    async def deliveries(
        self,
        *,
        state: str | None = None,
        plugin: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> DeliveryPage:
        """``GET /deliveries``: one page, newest first, filtered by the arguments given."""
        query = _query(state=state, plugin=plugin, limit=limit, cursor=cursor)
        return await self._call(DeliveryPage, "GET", "/deliveries", params=query)

    async def redeliver(self, delivery_id: int) -> int:
        """``POST /deliveries/{id}/redeliver``: replay one delivery.

        Returns:
            How many deliveries were replayed (1).

        Raises:
            ApiError: 404 for an unknown id; 409 while it runs or when its plugin is not
                loaded.
        """
        path = f"/deliveries/{delivery_id}/redeliver"
        return (await self._call(Redelivered, "POST", path)).redelivered

    async def redeliver_all(
        self, *, state: str, plugin: str | None = None, since_ms: int | None = None
    ) -> int:
        """``POST /deliveries/redeliver``: replay every delivery in ``state`` (to ``plugin``,
        created at or after ``since_ms``, Unix epoch milliseconds, when given).

        Returns:
            How many deliveries were replayed.
        """
        body = {"state": state, "plugin": plugin, "since": since_ms}
        given = {k: v for k, v in body.items() if v is not None}
        answer = await self._call(Redelivered, "POST", "/deliveries/redeliver", body=given)
        return answer.redelivered

    async def plugins(self) -> PluginList:
        """``GET /plugins``: the plugins the receiver runs, secrets in settings masked."""
        return await self._call(PluginList, "GET", "/plugins")

    async def prune(self, request: PruneRequest) -> Pruned:
        """``POST /prune``: remove raw callbacks and done deliveries older than
        ``request.older_than_ms`` (``dry_run``: count them; ``vacuum``: then give the space
        back). It may take a while on a large database: give this client a long timeout.

        Raises:
            ApiError: e.g. 422 for an ``older_than_ms`` below 1.
        """
        body = request.model_dump(mode="json")
        return await self._call(Pruned, "POST", "/prune", body=body)

    async def _call(
        self,
        model: type[Answer],
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Answer:
        """The answer of one request as ``model``; raises :class:`ApiError` unless a 200."""
        try:
            response = await self._http.request(method, path, params=params, json=body)
        except httpx.TransportError as exc:
            chosen = f" (set by {self.source})" if self.source else ""
            raise ApiUnreachable(
                f"cannot reach the status API at {self.base_url}{chosen}: "
                f"{exc or type(exc).__name__}"
            ) from None
        if response.status_code != 200:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text[:200]
            hint = ""
            if response.status_code == 401 and self.source:
                hint = (
                    f" (the URL was set by {self.source}: is this the receiver whose token"
                    " you have, KLING_HOOKS_API_TOKEN or the one in its database?)"
                )
            raise ApiError(
                f"{self.base_url}{path}: HTTP {response.status_code}: {message}{hint}",
                response.status_code,
            )
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise ApiError(
                f"{self.base_url}{path}: the answer is not a kling-hooks status API answer"
                f" ({first_error(exc)}): is another program, or another version, there?",
                response.status_code,
            ) from None


def _query(**values: object) -> dict[str, str]:
    """Query parameters: the given values as text, leaving out None and empty ones."""
    return {k: str(v) for k, v in values.items() if v is not None and v != ""}
