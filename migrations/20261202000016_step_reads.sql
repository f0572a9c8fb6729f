-- Runs, steps and attempts as the executor drives them (the run's events of schema
-- 20261202: started, step attempts, succeeded/failed, paused/resumed).
--
-- Projection tables only gain nullable (or defaulted) columns, and the one new table has
-- no index but its primary key: rebuilds copy tables with LIKE ... INCLUDING ALL and give
-- their indexes new names (ADR 8), so nothing here names an index.

ALTER TABLE workflows
    ADD COLUMN started_at      timestamptz,
    ADD COLUMN finished_at     timestamptz,
    ADD COLUMN failure_reason  text,
    ADD COLUMN failed_step     text;

ALTER TABLE workflow_steps
    ADD COLUMN attempts         integer NOT NULL DEFAULT 0,
    ADD COLUMN started_at       timestamptz,
    ADD COLUMN finished_at      timestamptz,
    ADD COLUMN output           jsonb,
    ADD COLUMN output_ref       text,
    ADD COLUMN error            jsonb,
    ADD COLUMN next_attempt_at  timestamptz,
    ADD COLUMN skip_reason      text;

-- One row per attempt of a step. `input` is the config the attempt ran with (templates
-- rendered); `error` is `{kind, message}` of a failed or timed-out attempt.
CREATE TABLE workflow_step_attempts (
    workflow_id  uuid        NOT NULL,
    step_id      text        NOT NULL,
    attempt      integer     NOT NULL,
    attempt_id   uuid        NOT NULL,
    status       text        NOT NULL,
    input        jsonb       NOT NULL,
    error        jsonb,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    duration_ms  bigint,
    PRIMARY KEY (workflow_id, step_id, attempt)
);

-- The graph view keeps step statuses now, and whether a run started (a resumed run goes
-- back to `running` if it had started, else to `pending`). Step nodes written before had
-- no status; back then a step was cancelled with its run or still pending.
ALTER TABLE graph_nodes ADD COLUMN started boolean NOT NULL DEFAULT false;
UPDATE graph_nodes step
   SET status = CASE WHEN run.status = 'cancelled' THEN 'cancelled' ELSE 'pending' END
  FROM graph_edges has, graph_nodes run
 WHERE step.kind = 'step' AND step.status IS NULL
   AND has.predicate = 'has_step' AND has.to_xid = step.xid AND run.xid = has.from_xid;

-- A rebuild under way keeps shadow copies of these tables (schema rebuild_<id>) made
-- before this migration: give them the same shape, or the new projector code could not
-- write into them and their swap would miss the new table.
DO $$
DECLARE
    shadow text;
BEGIN
    FOR shadow IN
        SELECT table_schema FROM information_schema.tables
         WHERE table_name = 'workflows' AND table_schema LIKE 'rebuild\_%'
    LOOP
        EXECUTE format(
            'ALTER TABLE %1$I.workflows
                 ADD COLUMN IF NOT EXISTS started_at timestamptz,
                 ADD COLUMN IF NOT EXISTS finished_at timestamptz,
                 ADD COLUMN IF NOT EXISTS failure_reason text,
                 ADD COLUMN IF NOT EXISTS failed_step text;
             ALTER TABLE %1$I.workflow_steps
                 ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0,
                 ADD COLUMN IF NOT EXISTS started_at timestamptz,
                 ADD COLUMN IF NOT EXISTS finished_at timestamptz,
                 ADD COLUMN IF NOT EXISTS output jsonb,
                 ADD COLUMN IF NOT EXISTS output_ref text,
                 ADD COLUMN IF NOT EXISTS error jsonb,
                 ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz,
                 ADD COLUMN IF NOT EXISTS skip_reason text;
             CREATE TABLE IF NOT EXISTS %1$I.workflow_step_attempts
                 (LIKE public.workflow_step_attempts INCLUDING ALL);',
            shadow);
    END LOOP;
    FOR shadow IN
        SELECT table_schema FROM information_schema.tables
         WHERE table_name = 'graph_nodes' AND table_schema LIKE 'rebuild\_%'
    LOOP
        EXECUTE format(
            'ALTER TABLE %1$I.graph_nodes ADD COLUMN IF NOT EXISTS started boolean NOT NULL DEFAULT false;
             UPDATE %1$I.graph_nodes step
                SET status = CASE WHEN run.status = ''cancelled'' THEN ''cancelled'' ELSE ''pending'' END
               FROM %1$I.graph_edges has, %1$I.graph_nodes run
              WHERE step.kind = ''step'' AND step.status IS NULL
                AND has.predicate = ''has_step'' AND has.to_xid = step.xid AND run.xid = has.from_xid;',
            shadow);
    END LOOP;
END
$$;
