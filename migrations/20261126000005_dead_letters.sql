-- Records a projection could not apply: undecodable, or whose handler kept failing. The
-- projection moves past them; operators inspect and re-drive them after a fix.
CREATE TABLE dead_letters (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projection    text        NOT NULL,
    topic         text        NOT NULL,
    partition     integer     NOT NULL,
    log_offset    bigint      NOT NULL,
    record_key    text,
    payload       bytea,
    headers       jsonb       NOT NULL,
    reason        text        NOT NULL,
    attempts      integer     NOT NULL,
    failed_at     timestamptz NOT NULL DEFAULT now(),
    redriven_at   timestamptz,
    UNIQUE (projection, topic, partition, log_offset)
);

CREATE INDEX dead_letters_pending ON dead_letters (projection, id) WHERE redriven_at IS NULL;
