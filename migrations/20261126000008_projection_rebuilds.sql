-- Rebuilds of a projection into shadow tables (schema rebuild_<id>), swapped in atomically
-- once they caught up with the log; the tables they replace wait in retired_<id> for a
-- grace period, then are dropped.
CREATE TABLE projection_rebuilds (
    id             uuid        PRIMARY KEY,
    projection     text        NOT NULL,
    status         text        NOT NULL,   -- running | swapped | failed
    from_time      timestamptz,
    started_at     timestamptz NOT NULL DEFAULT now(),
    swapped_at     timestamptz,
    retired_until  timestamptz,
    dropped_at     timestamptz,
    progress       jsonb       NOT NULL DEFAULT '{}',
    error          text
);

CREATE UNIQUE INDEX projection_rebuilds_one_running ON projection_rebuilds (projection) WHERE status = 'running';
