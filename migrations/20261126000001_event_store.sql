-- Write side: the event store, which is also the outbox relayed to Kafka.
-- The unique constraints are the concurrency control: one event per stream version
-- (optimistic concurrency) and one event per command (idempotency).
CREATE TABLE event_store (
    position        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant          text        NOT NULL,
    stream_id       uuid        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    event_id        uuid        NOT NULL UNIQUE,
    command_id      uuid        NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    occurred_at     timestamptz NOT NULL,
    correlation_id  uuid        NOT NULL,
    causation_id    uuid        NOT NULL,
    traceparent     text,
    tracestate      text,
    -- The Avro single-object bytes, exactly as published.
    payload         bytea       NOT NULL,
    -- Set by the relay once the broker acknowledged the record.
    published_at    timestamptz,
    log_partition   integer,
    log_offset      bigint,
    UNIQUE (stream_id, stream_version),
    UNIQUE (tenant, command_id)
);

CREATE INDEX event_store_unpublished ON event_store (position) WHERE published_at IS NULL;
