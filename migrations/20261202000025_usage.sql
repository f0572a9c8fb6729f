-- The usage read model (projection `usage.v1`): one row per model call, as the step's
-- StepSucceeded / StepFailed event recorded it. The key is the event's place in its stream
-- plus the call's index on the event, so a replayed event is not counted twice; the cost is
-- the exact decimal computed at call time (never re-priced here).
CREATE TABLE usage_calls (
    workflow_id         uuid        NOT NULL,
    stream_version      bigint      NOT NULL,
    call_index          integer     NOT NULL,
    event_id            uuid        NOT NULL,
    tenant              text        NOT NULL,
    step_id             text        NOT NULL,
    attempt             integer     NOT NULL,
    provider            text        NOT NULL,
    model               text        NOT NULL,
    called_at           timestamptz NOT NULL,
    day                 date        NOT NULL,
    input_tokens        bigint      NOT NULL,
    output_tokens       bigint      NOT NULL,
    cache_read_tokens   bigint      NOT NULL,
    cache_write_tokens  bigint      NOT NULL,
    reasoning_tokens    bigint      NOT NULL,
    cost_usd            numeric,
    price_ref           text,
    complete            boolean     NOT NULL,
    PRIMARY KEY (workflow_id, stream_version, call_index)
);

-- Tenant-scoped reads by time window (GET /v1/usage) and per run / step sums.
CREATE INDEX usage_calls_tenant_called_at ON usage_calls (tenant, called_at);
CREATE INDEX usage_calls_workflow_step ON usage_calls (workflow_id, step_id);
