-- The latest snapshot of each stream: the folded state at `version`, in the aggregate's
-- `shape_version`. A snapshot of another shape is ignored (state rebuilt from events).
CREATE TABLE snapshots (
    stream_id      uuid        PRIMARY KEY,
    tenant         text        NOT NULL,
    version        bigint      NOT NULL,
    shape_version  integer     NOT NULL,
    state          jsonb       NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now()
);
