-- Schema version 1. Applied in one transaction; PRAGMA user_version records it.

-- Settings the receiver generates and keeps (callback secret, status API token).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per Kling task: its current state comes from its latest accepted transition.
CREATE TABLE tasks (
    id                   INTEGER PRIMARY KEY,   -- first-seen order; the list cursor
    task_id              TEXT NOT NULL UNIQUE,  -- Kling's, always a string
    external_task_id     TEXT NOT NULL UNIQUE,  -- ours, bound to the callback URL
    route                TEXT,                  -- known once registered
    request_json         TEXT,                  -- registered body, large images redacted
    task_status          TEXT NOT NULL,
    task_status_msg      TEXT,
    task_result_json     TEXT,
    task_info_json       TEXT,
    final_unit_deduction TEXT,                  -- Kling's string, e.g. "0.2"
    created_at           INTEGER,               -- Kling's, Unix ms
    updated_at           INTEGER,               -- Kling's, of the latest accepted transition
    first_seen_at        INTEGER NOT NULL,      -- our clock, Unix ms
    last_received_at     INTEGER NOT NULL
);
CREATE INDEX tasks_by_status ON tasks (task_status, id);
CREATE INDEX tasks_by_route ON tasks (route, id);

-- Every accepted state change: the event plugins will receive. (task_id, task_status) is the
-- atomic deduplication key.
CREATE TABLE transitions (
    id          INTEGER PRIMARY KEY,
    task_id     TEXT NOT NULL,
    task_status TEXT NOT NULL,
    updated_at  INTEGER,                        -- Kling's, Unix ms
    received_at INTEGER NOT NULL,               -- our clock, Unix ms
    source      TEXT NOT NULL,                  -- 'callback' or 'registration'
    UNIQUE (task_id, task_status)
);

-- Audit log: every authenticated, parsed callback body, with the verdict it got.
CREATE TABLE callbacks (
    id          INTEGER PRIMARY KEY,
    task_id     TEXT NOT NULL,
    task_status TEXT NOT NULL,
    verdict     TEXT NOT NULL,                  -- new | duplicate | stale
    received_at INTEGER NOT NULL,
    body        TEXT NOT NULL
);
CREATE INDEX callbacks_by_task ON callbacks (task_id);
