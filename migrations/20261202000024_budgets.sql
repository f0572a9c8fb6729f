-- Budgets per tenant per calendar month (UTC) for model calls (ADR 24).
--
-- `tenant_budgets` is what `PUT /v1/budgets/{tenant}` sets; a tenant without a row has no
-- limit. The executor reserves a call's maximum cost before it makes the call, under a row
-- lock of the tenant's budget, and settles on the real cost afterwards: `budget_spend`
-- gets the cost and the reservation goes. Reservations of an executor that died expire
-- at `expires_at` and stop counting.

CREATE TABLE tenant_budgets (
    tenant             text          PRIMARY KEY,
    monthly_limit_usd  numeric(24, 12) NOT NULL CHECK (monthly_limit_usd >= 0),
    updated_at         timestamptz   NOT NULL DEFAULT now()
);

-- What model calls cost per tenant and month (the first day of the month, UTC), settled.
CREATE TABLE budget_spend (
    tenant     text            NOT NULL,
    month      date            NOT NULL,
    spent_usd  numeric(24, 12) NOT NULL DEFAULT 0,
    calls      bigint          NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, month)
);

-- Calls in flight: their maximum cost, held against the month's budget until settled.
CREATE TABLE budget_reservations (
    id          uuid            PRIMARY KEY,
    tenant      text            NOT NULL,
    month       date            NOT NULL,
    amount_usd  numeric(24, 12) NOT NULL,
    created_at  timestamptz     NOT NULL DEFAULT now(),
    expires_at  timestamptz     NOT NULL
);

CREATE INDEX budget_reservations_by_tenant ON budget_reservations (tenant, month);
