"""wrk (Debian package ``wrk``, LuaJIT) as the benchmarks' load generator, fed pre-built
requests by one Lua script (:data:`LUA`).

A feed file holds one request per line, ``METHOD<TAB>PATH<TAB>BODY`` (the body may be empty,
else it is JSON and sent as ``application/json``); :func:`write_feed` writes one. The script
sends the feed in one of three orders:

- ``seq``: each line once, in order (thread k of n takes every n-th line), until the feed,
  ``limit`` or ``duration_s`` runs out; distinct callbacks are sent so;
- ``cycle``: the lines in order, over and over, until ``duration_s`` (a duplicate storm, a
  server that stores nothing);
- ``random``: a random line each time (random task ids for the status API).

``rate_per_s`` throttles with wrk's ``delay()``: request k goes out at ``start + k / rate``
(an open-loop schedule: a slow answer does not slow the schedule while connections are free).
The clock is CLOCK_MONOTONIC through LuaJIT's FFI. When sending ends (``duration_s``, the feed
or ``limit``), no connection sends again; the thread stops once every request it sent has
been answered, so every request the server saw is counted (the receivers' loss checks need
that), and the harness then ends wrk with SIGINT. Should a connection's own write come in the
same event-loop turn as that stop, it sends ``GET /healthz`` instead (``extra``; not a
callback, never answered).

Latency is wrk's: from writing a request to the end of its answer, in the Lua ``done()``
function's latency object (p50, p90, p99, p99.9, max). Rates are 2xx answers per second
from the first request to the last answer (:attr:`WrkResult.rps`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: Seconds wrk's own ``-d`` deadline runs past ``duration_s``: only reached when answers never
#: come (socket errors), which :attr:`WrkResult.finished` then reports.
HARD_DEADLINE_GRACE_S = 60
#: wrk's per-request timeout, seconds (a timed-out request counts as a socket error).
REQUEST_TIMEOUT_S = 30

LUA = r"""
-- kling-hooks benchmark feeder: see bench/wrk.py. Arguments: key=value after "--".
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } kh_timespec;
int clock_gettime(int clk_id, kh_timespec *tp);
]]
local ts = ffi.new("kh_timespec")
local function now_s()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads = {}
function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

-- wrk calls request() once on thread 0, after init() and before the run, only to check it.
local health = wrk.format("GET", "/healthz")
local checking = false
local reqs, n_reqs, mode, rate, duration, share = {}, 0, "seq", 0, 0, 0
local next_i, reserved, issued, answered = 0, 0, 0, 0
local started, deadline, next_slot = nil, nil, 0
local stopping, finished = false, false
counts = {ok = 0, new = 0, duplicate = 0, stale = 0, non2xx = 0, extra = 0,
          issued = 0, first = 0, last = 0}
statuses = {}

function init(args)
  local opts = {}
  for _, a in ipairs(args) do
    local k, v = a:match("^([%w_]+)=(.*)$")
    if k then opts[k] = v end
  end
  local nthreads = tonumber(opts.threads or "1")
  mode = opts.mode or "seq"
  duration = tonumber(opts.duration or "0")
  rate = tonumber(opts.rate or "0") / nthreads
  local limit = tonumber(opts.limit or "0")
  share = -1
  if limit > 0 then
    share = math.floor(limit / nthreads)
    if id < limit % nthreads then share = share + 1 end
  end
  local k = 0
  for line in io.lines(opts.feed) do
    if mode ~= "seq" or k % nthreads == id then
      local t1 = line:find("\t", 1, true)
      local t2 = line:find("\t", t1 + 1, true)
      local path, body = line:sub(t1 + 1, t2 - 1), line:sub(t2 + 1)
      if opts.path then path = opts.path end
      local headers = {}
      for name, value in pairs(wrk.headers) do headers[name] = value end
      if body == "" then body = nil else headers["Content-Type"] = "application/json" end
      reqs[#reqs + 1] = wrk.format(line:sub(1, t1 - 1), path, headers, body)
      if #reqs == share then break end
    end
    k = k + 1
  end
  n_reqs = #reqs
  checking = (id == 0)
  if share < 0 or share > n_reqs then share = n_reqs end
  math.randomseed(os.time() + id)
end

local function finish()
  if finished then return end
  finished = true
  io.write("thread-done\n")
  io.flush()
  wrk.thread:stop()
end

function delay()
  local now = now_s()
  if started == nil then
    started, next_slot = now, now
    counts.first = now
    if duration > 0 then deadline = now + duration end
  end
  if not stopping and ((deadline and now >= deadline) or (mode == "seq" and reserved >= share)) then
    stopping = true
  end
  if stopping then
    if answered == reserved then finish() end
    return 600000  -- this connection sends no more
  end
  reserved = reserved + 1  -- each delay() is followed by one request() on its connection
  if rate > 0 then
    local slot = next_slot
    next_slot = next_slot + 1 / rate
    if slot > now then return (slot - now) * 1000 end
  end
  return 0
end

function request()
  if checking then checking = false; return health end
  if finished then
    counts.extra = counts.extra + 1
    return health
  end
  issued = issued + 1
  counts.issued = issued
  if mode == "random" then return reqs[math.random(n_reqs)] end
  next_i = next_i % n_reqs + 1
  return reqs[next_i]
end

function response(status, headers, body)
  answered = answered + 1
  counts.last = now_s()
  if status >= 200 and status < 300 then
    counts.ok = counts.ok + 1
    if body:find('"verdict":"new"', 1, true) then counts.new = counts.new + 1
    elseif body:find('"verdict":"duplicate"', 1, true) then
      counts.duplicate = counts.duplicate + 1
    elseif body:find('"verdict":"stale"', 1, true) then counts.stale = counts.stale + 1 end
  else
    counts.non2xx = counts.non2xx + 1
    statuses[tostring(status)] = (statuses[tostring(status)] or 0) + 1
  end
  if stopping and answered == reserved then finish() end
end

function done(summary, latency, requests)
  local total = {ok = 0, new = 0, duplicate = 0, stale = 0, non2xx = 0, extra = 0, issued = 0}
  local first, last, codes = nil, 0, {}
  for _, t in ipairs(threads) do
    local c = t:get("counts")
    for key, _ in pairs(total) do total[key] = total[key] + c[key] end
    if c.first > 0 and (first == nil or c.first < first) then first = c.first end
    if c.last > last then last = c.last end
    for code, n in pairs(t:get("statuses")) do codes[code] = (codes[code] or 0) + n end
  end
  local parts = {}
  for code, n in pairs(codes) do parts[#parts + 1] = string.format('"%s":%d', code, n) end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"ok":%d,"new":%d,"duplicate":%d,"stale":%d,"non2xx":%d,"extra":%d,' ..
    '"issued":%d,"span_s":%.6f,"requests":%d,"duration_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"timeout":%d,"statuses":{%s},' ..
    '"p50":%d,"p90":%d,"p95":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}\n',
    total.ok, total.new, total.duplicate, total.stale, total.non2xx, total.extra,
    total.issued, first and (last - first) or 0, summary.requests, summary.duration,
    e.connect, e.read, e.write, e.timeout, table.concat(parts, ","),
    latency:percentile(50), latency:percentile(90), latency:percentile(95), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


@dataclass(frozen=True)
class FeedLine:
    """One request of a feed: ``method``, ``path`` (with its query) and a JSON body (b'')."""

    method: str
    path: str
    body: bytes = b""


def write_feed(path: Path, lines: Iterable[FeedLine]) -> int:
    """Write a feed file (see the module docstring); returns the number of lines.

    Raises:
        ValueError: a path or body holds a tab or a line break (it would split the line).
    """
    count = 0
    with path.open("wb") as f:
        for line in lines:
            if any(c in line.path for c in "\t\n") or b"\t" in line.body or b"\n" in line.body:
                raise ValueError(f"feed line {count}: a tab or line break in {line.path!r}")
            f.write(f"{line.method}\t{line.path}\t".encode() + line.body + b"\n")
            count += 1
    return count


@dataclass
class WrkResult:
    """What one wrk run observed.

    Attributes:
        ok: 2xx answers. ``new``, ``duplicate``, ``stale``: the verdicts among them.
        non2xx: Other answers by status code. ``errors``: socket errors by kind.
        issued: Requests sent from the feed (all answered when ``finished``).
        extra: ``GET /healthz`` sent instead of a feed request at the very end (never read).
        span_s: Seconds from the first request to the last answer.
        latency_ms: ``p50``, ``p90``, ``p95``, ``p99``, ``p999`` (p99.9), ``max``, ``mean``.
        wrk_cpu_s: wrk's own CPU time (user + system), seconds.
        finished: Every thread stopped by itself (False: wrk's hard deadline ended it).
    """

    ok: int = 0
    new: int = 0
    duplicate: int = 0
    stale: int = 0
    non2xx: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    issued: int = 0
    extra: int = 0
    span_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    wrk_cpu_s: float = 0.0
    finished: bool = True

    @property
    def rps(self) -> float:
        """2xx answers per second over :attr:`span_s`."""
        return self.ok / self.span_s if self.span_s > 0 else 0.0

    @property
    def answered(self) -> int:
        """Every answer: 2xx and the others."""
        return self.ok + sum(self.non2xx.values())

    @property
    def wrk_cpu_share(self) -> float:
        """wrk's CPU time as a share of one core over the run."""
        return self.wrk_cpu_s / self.span_s if self.span_s > 0 else 0.0


def run_wrk(
    base_url: str,
    feed: Path,
    *,
    connections: int,
    mode: str = "seq",
    duration_s: float = 0.0,
    rate_per_s: float = 0.0,
    limit: int = 0,
    path: str | None = None,
    headers: Sequence[str] = (),
    threads: int = 1,
    workdir: Path,
) -> WrkResult:
    """Run wrk against ``base_url`` with ``feed`` (see the module docstring for the modes).

    Args:
        connections: Keep-alive connections (wrk ``-c``).
        duration_s: Stop sending after this many seconds (0: when the feed or ``limit`` runs
            out; required for ``cycle`` and ``random``).
        rate_per_s: Requests per second over all connections (0: as fast as answers come).
        limit: Send at most this many requests (0: no limit).
        path: Send every request to this path instead of the feed's.
        headers: Extra ``Name: value`` headers (wrk ``-H``), e.g. the API token.
        threads: wrk threads (default 1: the server under test keeps the other core).
        workdir: Where the Lua script is written.

    Raises:
        RuntimeError: wrk printed no result (it failed to start, or crashed).
    """
    if mode != "seq" and duration_s <= 0:
        raise ValueError(f"mode {mode!r} needs duration_s > 0")
    script = workdir / "feed.lua"
    script.write_text(LUA)
    threads = max(1, min(threads, connections))
    cap_s = int(duration_s or 600) + HARD_DEADLINE_GRACE_S
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{cap_s}s"]
    command += ["--timeout", f"{REQUEST_TIMEOUT_S}s", "-s", str(script)]
    for header in headers:
        command += ["-H", header]
    command += [base_url, "--", f"feed={feed}", f"mode={mode}", f"threads={threads}"]
    command += [f"duration={duration_s}", f"rate={rate_per_s}", f"limit={limit}"]
    if path is not None:
        command.append(f"path={path}")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    done, lines = 0, []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("thread-done"):
            done += 1
            if done == threads:
                proc.send_signal(signal.SIGINT)  # wrk's main thread sleeps until -d otherwise
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    found = [json.loads(x[len("RESULT ") :]) for x in lines if x.startswith("RESULT ")]
    if not found:
        raise RuntimeError(f"wrk printed no result ({command!r}):\n" + "".join(lines[-20:]))
    data = found[0]
    return WrkResult(
        ok=data["ok"],
        new=data["new"],
        duplicate=data["duplicate"],
        stale=data["stale"],
        non2xx=Counter({k: v for k, v in data["statuses"].items() if v}),
        errors=Counter({k: data[k] for k in ("connect", "read", "write", "timeout") if data[k]}),
        issued=data["issued"],
        extra=data["extra"],
        span_s=data["span_s"],
        latency_ms={k: data[k] / 1000 for k in ("p50", "p90", "p95", "p99", "p999", "max", "mean")},
        wrk_cpu_s=usage.ru_utime + usage.ru_stime,
        finished=done == threads,
    )
