-- Read side, written only by projectors. Each projection commits its rows together with
-- its checkpoint (next offset per partition) in one transaction.
CREATE TABLE projection_checkpoints (
    projection   text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    next_offset  bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition)
);

CREATE TABLE workflows (
    id             uuid        PRIMARY KEY,
    tenant         text        NOT NULL,
    name           text        NOT NULL,
    status         text        NOT NULL,
    version        bigint      NOT NULL,
    input          jsonb       NOT NULL,
    cancel_reason  text,
    submitted_at   timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL
);

-- Ids are UUIDv7 (time ordered), so "newest first" is "id descending" and the id is the cursor.
CREATE INDEX workflows_by_tenant ON workflows (tenant, id DESC);
CREATE INDEX workflows_by_tenant_status ON workflows (tenant, status, id DESC);

CREATE TABLE workflow_steps (
    workflow_id  uuid    NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    step_id      text    NOT NULL,
    position     integer NOT NULL,
    kind         text    NOT NULL,
    status       text    NOT NULL,
    depends_on   text[]  NOT NULL,
    config       jsonb   NOT NULL,
    PRIMARY KEY (workflow_id, step_id)
);

-- Every event of every stream, for per-stream reads without touching the log.
CREATE TABLE workflow_events (
    workflow_id     uuid        NOT NULL,
    version         bigint      NOT NULL,
    tenant          text        NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    correlation_id  uuid        NOT NULL,
    causation_id    uuid        NOT NULL,
    data            jsonb       NOT NULL,
    log_partition   integer     NOT NULL,
    log_offset      bigint      NOT NULL,
    PRIMARY KEY (workflow_id, version)
);
