"""A Kling-compatible API that runs offline: it creates tasks, drives them, sends callbacks.

The simulator answers Kling's create, query and list routes (PROTOCOL.md sections 1 and 3) for
the five routes of :class:`submitter.protocol.Route`, and drives every task it creates through
``submitted -> processing -> succeed | failed``, POSTing Kling's bare task object (section 4)
to the task's ``callback_url`` at each step. Result files are real PNG and MP4 bytes
(:mod:`submitter.media`) served from ``GET /files/{name}``. :class:`Faults` injects the
misbehaviour a receiver must survive: failures, duplicate, reordered, enveloped, old-schema and
lost callbacks, create answers lost after the task was made, and 1303 refusals.

Modules, by job:

* ``app``: :class:`Simulator`, which wires the parts below into one Starlette app;
* ``api``: the Kling HTTP API (create, query, list, files), authorization, envelopes;
* ``driver``: moves each task through its states on its planned timing;
* ``delivery``: sends callbacks (reshaped, duplicated, dropped as planned) with retries;
* ``faults``: :class:`Faults` and the per-task draw of every random choice;
* ``tasks``: :class:`SimTask` and the table of tasks by id;
* ``recorder``: records every request (:class:`RecordedRequest`) before it is handled.

Routes (``prefix`` such as ``"/kling"`` goes first, as with resellers; ``{path}`` is the
route's path in the simulator's provider profile, :mod:`submitter.providers`, which also
chooses the body rules: ``Simulator(provider=COMETAPI)`` takes multi-image bodies at
``images/generations``)::

    POST {prefix}/v1/{path}                         create   -> envelope, data = new task
    GET  {prefix}/v1/{path}/{id}                    query    -> envelope, data = task object
    GET  {prefix}/v1/{path}?pageNum&pageSize        list     -> envelope, data = [task, ...]
    GET  /files/{name}                              result file (no authorization)

Choices where Kling documents nothing:

* an unknown query id answers HTTP 400, code 1201, ``"task not found: '<id>'"``; a task is
  found only under the path of the route it was created on;
* an unknown path answers HTTP 404, code 1203; a known path with the wrong method answers
  HTTP 404, code 1202 (Kling's "Error Code" page pairs both codes with 404);
* a list is newest first;
* with :attr:`Faults.reorder_rate`, that share of tasks send all their callbacks after they
  end, newest first (terminal, processing, submitted);
* when both an API key and a JWT key pair are configured, either kind of bearer is accepted.

All randomness (ids, delays, faults, request ids) comes from one ``random.Random(seed)`` and is
drawn while a request is handled, so one sequence of requests always gives the same tasks.
"""

from submitter.simulator.app import Simulator
from submitter.simulator.faults import FAILURE_REASONS, Faults
from submitter.simulator.recorder import RecordedRequest
from submitter.simulator.tasks import OLD_STYLE_ID_EVERY, CallbackAttempt, SimTask

__all__ = [
    "FAILURE_REASONS",
    "OLD_STYLE_ID_EVERY",
    "CallbackAttempt",
    "Faults",
    "RecordedRequest",
    "SimTask",
    "Simulator",
]
