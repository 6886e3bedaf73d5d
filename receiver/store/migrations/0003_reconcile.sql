-- Schema version 3: what brought each raw body in, a callback or `kling-hooks reconcile` (Kling's
-- answer to a query, for a task whose callback was lost).
ALTER TABLE callbacks ADD COLUMN source TEXT NOT NULL DEFAULT 'callback';
