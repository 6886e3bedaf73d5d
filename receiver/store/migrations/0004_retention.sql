-- Schema version 4: pruning (`kling-hooks prune`). A finished delivery is removed only when no
-- saved file points at it (files.delivery_id); this index makes that check a look-up.
CREATE INDEX files_by_delivery ON files (delivery_id);
