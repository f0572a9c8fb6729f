-- Crypto-shredding of personal data (ADR 26).
--
-- One random 256-bit data key per (tenant, subject). The subject's name is never stored:
-- rows are found by `subject_hash` (SHA-256 of a domain tag, the tenant and the subject).
-- Erasing a subject overwrites its key with NULL and sets `erased_at`; the row stays as the
-- tombstone of the erasure, and envelopes naming its `key_id` read as erased for ever. A
-- later use of the same subject gets a new key (a new `key_id`), so old data never comes
-- back readable.
CREATE TABLE personal_data_keys (
    key_id        uuid        PRIMARY KEY,
    tenant        text        NOT NULL,
    subject_hash  bytea       NOT NULL,
    key           bytea       CHECK (key IS NULL OR octet_length(key) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    erased_at     timestamptz,
    CHECK ((key IS NULL) = (erased_at IS NOT NULL))
);

-- At most one live key per subject: the race-safe upsert of "create on first use".
CREATE UNIQUE INDEX personal_data_keys_live
    ON personal_data_keys (tenant, subject_hash) WHERE erased_at IS NULL;

-- The key a run's personal signal fields are sealed with: its data subject's key at submit.
CREATE TABLE personal_data_runs (
    workflow_id  uuid  PRIMARY KEY,
    tenant       text  NOT NULL,
    key_id       uuid  NOT NULL
);

-- Which input and signal fields of a tenant's runs are personal (`PUT /v1/privacy`).
CREATE TABLE privacy_configs (
    tenant      text        PRIMARY KEY,
    config      jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
