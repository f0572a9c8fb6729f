-- Rebuilds build projection tables with CREATE TABLE ... (LIKE ... INCLUDING ALL), which
-- copies indexes and checks but not foreign keys: after the first swap the live tables had
-- none anyway. One writer (the projector, in one transaction per batch) keeps workflows and
-- their steps together, so the schema says the same before and after a rebuild.
ALTER TABLE workflow_steps DROP CONSTRAINT IF EXISTS workflow_steps_workflow_id_fkey;
