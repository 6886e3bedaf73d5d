-- Schema version 2: the outbox. One delivery row per (transition, interested plugin), written in
-- the same transaction as the transition; the files plugins saved.

-- The event a transition carries, as it was when it was accepted (the task row moves on).
ALTER TABLE transitions ADD COLUMN task_status_msg TEXT;
ALTER TABLE transitions ADD COLUMN task_result_json TEXT;
ALTER TABLE transitions ADD COLUMN final_unit_deduction TEXT;

CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY,
    transition_id   INTEGER NOT NULL REFERENCES transitions (id),
    plugin          TEXT NOT NULL,
    state           TEXT NOT NULL,              -- pending | running | done | failed | dead
    attempts        INTEGER NOT NULL DEFAULT 0, -- attempts started
    next_attempt_at INTEGER,                    -- Unix ms; NULL when done or dead
    last_error      TEXT,
    created_at      INTEGER NOT NULL,           -- our clock, Unix ms
    updated_at      INTEGER NOT NULL,
    UNIQUE (transition_id, plugin)
);
CREATE INDEX deliveries_due ON deliveries (plugin, state, next_attempt_at);
CREATE INDEX deliveries_by_state ON deliveries (state, id);

-- Files a plugin saved for a task (the downloader): one row per (task, url), the latest save.
CREATE TABLE files (
    id          INTEGER PRIMARY KEY,
    task_id     TEXT NOT NULL,
    delivery_id INTEGER NOT NULL REFERENCES deliveries (id),
    url         TEXT NOT NULL,
    path        TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    sha256      TEXT NOT NULL,
    saved_at    INTEGER NOT NULL,
    UNIQUE (task_id, url)
);
