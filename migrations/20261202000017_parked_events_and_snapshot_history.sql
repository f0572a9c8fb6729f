-- Events the relay could not publish (docs/adr/0018-parked-events-and-snapshot-history.md).
--
-- A record the log refuses for good (too large, invalid) is parked: it stays in the event
-- store, unpublished, with `parked_at` set so the relay skips it, and gets a row here
-- saying why. The stream's later events are held behind it (parked too, `blocked_by`
-- naming the event they wait for), so they never overtake it on the log.
ALTER TABLE event_store ADD COLUMN parked_at timestamptz;

-- The relay's outbox scan skips parked events without reading past them.
DROP INDEX event_store_unpublished;
CREATE INDEX event_store_unpublished ON event_store (position)
    WHERE published_at IS NULL AND parked_at IS NULL;

CREATE TABLE parked_events (
    position        bigint      PRIMARY KEY REFERENCES event_store (position),
    tenant          text        NOT NULL,
    stream_id       uuid        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    -- What the log (or the client library) said, or which event this one waits behind.
    reason          text        NOT NULL,
    -- The stream's parked event this one is held behind; NULL for the refused one itself.
    blocked_by      uuid,
    parked_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX parked_events_stream ON parked_events (stream_id, stream_version);

-- Several snapshots per stream (the newest few), so "state as of" an older version starts
-- from the nearest snapshot at or below it. Old snapshots carried every signal payload and
-- are of an older shape: dropped, rebuilt by the writers.
DELETE FROM snapshots;
ALTER TABLE snapshots DROP CONSTRAINT snapshots_pkey;
ALTER TABLE snapshots ADD PRIMARY KEY (stream_id, version);
