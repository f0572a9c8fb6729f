-- API keys for service-to-service calls (ADR 27): a public id, the SHA-256 of the secret
-- (never the secret), the tenant and role the key acts with, and its life.
CREATE TABLE api_keys (
    id            text PRIMARY KEY,
    tenant        text NOT NULL,
    name          text NOT NULL,
    role          text NOT NULL,
    secret_sha256 bytea NOT NULL,
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);

CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at);
