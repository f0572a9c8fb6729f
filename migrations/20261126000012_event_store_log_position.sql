-- Rebuilds read published history from the event store in log order, partition by
-- partition (docs/adr/0014-rebuilds-read-history-from-the-event-store.md).
CREATE INDEX event_store_log_position ON event_store (log_partition, log_offset)
    WHERE log_offset IS NOT NULL;
