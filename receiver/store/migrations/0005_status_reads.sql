-- Schema version 5: indexes for the status API's reads on a large database.

-- GET /tasks?route=&task_status= finds a page through one index range, newest first, however
-- rare the combination is. Before it, the route index was scanned and each task's row read
-- to test its status (a rare status on a common route read hundreds of rows for a page).
CREATE INDEX tasks_by_route_status ON tasks (route, task_status, id);

-- GET /tasks/{id} counts a task's callbacks by verdict from the index alone, without reading
-- the raw bodies (a page each). Same name, one more column: the writes keep one index here.
DROP INDEX callbacks_by_task;
CREATE INDEX callbacks_by_task ON callbacks (task_id, verdict);
