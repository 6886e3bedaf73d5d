-- Schema version 2 of the Postgres store: a delivery's claim is leased to one replica
-- (receiver.store.postgres.deliveries). While a delivery is running, claimed_by names the
-- replica that claimed it (Replica.replica_id) and lease_expires_at (Unix ms) is when another
-- replica may take it back; both are NULL in every other state.
ALTER TABLE deliveries
    ADD COLUMN claimed_by       TEXT,
    ADD COLUMN lease_expires_at BIGINT;

-- Recover's scan: the running rows, by when their lease runs out.
CREATE INDEX deliveries_leases ON deliveries (lease_expires_at) WHERE state = 'running';
