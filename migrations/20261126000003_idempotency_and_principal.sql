-- Idempotency: the fingerprint (hash of method, path and body) of the request that carried
-- an Idempotency-Key, so a retry after the Redis cache expired or was flushed can still
-- tell "same request" (answer as before) from "key reused for another request" (422).
ALTER TABLE event_store ADD COLUMN command_fingerprint text;

-- Who submitted a run (WorkflowSubmitted v2).
ALTER TABLE workflows ADD COLUMN submitted_by text;
