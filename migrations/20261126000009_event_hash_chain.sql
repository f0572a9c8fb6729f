-- Tamper evidence: every event records the hash of its stream's previous event and its own
-- hash (SHA-256 over a canonical encoding, see docs/adr/0009-cloudevents-and-hash-chain.md).
-- Rows written before this migration keep NULL in both: "not chained". The next event of
-- such a stream starts a new chain (its prev_hash is all zeros, as for version 1).
ALTER TABLE event_store
    ADD COLUMN prev_hash  bytea CHECK (prev_hash IS NULL OR length(prev_hash) = 32),
    ADD COLUMN event_hash bytea CHECK (event_hash IS NULL OR length(event_hash) = 32);
