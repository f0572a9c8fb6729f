-- A rebuild replaces a projection's tables; the dead letters of the replaced tables no
-- longer say what the live tables miss (the rebuild read every record again and kept its
-- own dead letters). They are kept, marked superseded, and are no longer pending; only
-- letters not superseded are unique per record.
ALTER TABLE dead_letters ADD COLUMN superseded_at timestamptz;
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_projection_topic_partition_log_offset_key;
CREATE UNIQUE INDEX dead_letters_current ON dead_letters (projection, topic, partition, log_offset)
    WHERE superseded_at IS NULL;
DROP INDEX dead_letters_pending;
CREATE INDEX dead_letters_pending ON dead_letters (projection, id)
    WHERE redriven_at IS NULL AND superseded_at IS NULL;
