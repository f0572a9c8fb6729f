-- GraphQL subscriptions read a tenant's events past a cursor of per-partition log offsets,
-- partition by partition in offset order, and start live readers at each partition's
-- latest offset.
CREATE INDEX IF NOT EXISTS workflow_events_by_tenant_log
    ON workflow_events (tenant, log_partition, log_offset);
