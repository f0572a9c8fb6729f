-- Indexes behind the filters and sorts of GET /v1/workflows (and the GraphQL list).
-- Every sort is keyset-paginated on (sort key, id) within a tenant, so each sort key gets a
-- (tenant, key, id) index that serves both directions; submitted_at doubles as the time
-- range filter's index.
CREATE INDEX IF NOT EXISTS workflows_by_tenant_submitted ON workflows (tenant, submitted_at, id);
CREATE INDEX IF NOT EXISTS workflows_by_tenant_updated ON workflows (tenant, updated_at, id);
CREATE INDEX IF NOT EXISTS workflows_by_tenant_name ON workflows (tenant, name, id);

-- Tool and model filters: expression indexes over the step config the projector already
-- writes, rather than a side table, so the projector and table-swapping rebuilds (which copy
-- indexes with LIKE ... INCLUDING ALL) stay unchanged. The expressions must stay identical to
-- the ones in query-service/src/read_model.rs for the planner to use them. A tool is named
-- `server/tool` (or `tool` alone), as in the graph view.
CREATE INDEX IF NOT EXISTS workflow_steps_by_tool ON workflow_steps (
    (CASE WHEN config ->> 'server' IS NULL THEN config ->> 'tool'
          ELSE (config ->> 'server') || '/' || (config ->> 'tool') END),
    workflow_id
) WHERE kind = 'mcp_tool';
CREATE INDEX IF NOT EXISTS workflow_steps_by_model ON workflow_steps ((config ->> 'model'), workflow_id)
    WHERE kind = 'llm';
