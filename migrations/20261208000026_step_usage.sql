-- What the model calls of each attempt and step used and cost, as the read model shows it
-- beside the run, its steps and their attempts (issue 12). One JSON object per row,
-- `flowline_domain::UsageSummary`: counts as numbers and `cost_usd` as exact decimal text;
-- absent while an attempt runs and for steps that called no model.
--
-- Nullable columns only, and no index (see 20261202000016_step_reads.sql on rebuilds).

ALTER TABLE workflow_steps ADD COLUMN usage jsonb;
ALTER TABLE workflow_step_attempts ADD COLUMN usage jsonb;

-- A rebuild under way keeps shadow copies made before this migration: give them the
-- same shape, or the new projector code could not write into them.
DO $$
DECLARE
    shadow text;
BEGIN
    FOR shadow IN
        SELECT table_schema FROM information_schema.tables
         WHERE table_name = 'workflow_steps' AND table_schema LIKE 'rebuild\_%'
    LOOP
        EXECUTE format(
            'ALTER TABLE %1$I.workflow_steps ADD COLUMN IF NOT EXISTS usage jsonb;
             ALTER TABLE %1$I.workflow_step_attempts ADD COLUMN IF NOT EXISTS usage jsonb;',
            shadow);
    END LOOP;
END
$$;
