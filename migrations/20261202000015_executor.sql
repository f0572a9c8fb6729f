-- The executor (docs/adr/0016-executor.md). It reads the published event store in log
-- order per partition; what it needs to come back after a crash is where it stopped and
-- which runs are still live. Everything else is derived from the runs' events.
CREATE TABLE executor_checkpoints (
    partition    integer     PRIMARY KEY,
    next_offset  bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Runs not yet in a terminal status, by partition: the runs an executor loads when it
-- takes a partition over.
CREATE TABLE executor_runs (
    stream_id      uuid    PRIMARY KEY,
    tenant         text    NOT NULL,
    log_partition  integer NOT NULL
);
CREATE INDEX executor_runs_by_partition ON executor_runs (log_partition);

-- Step outputs too large to travel on their event, by content hash. Written before the
-- event that refers to them, never changed.
CREATE TABLE step_payloads (
    tenant      text        NOT NULL,
    ref         text        NOT NULL,
    body        jsonb       NOT NULL,
    size_bytes  integer     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, ref)
);
