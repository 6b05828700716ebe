-- The usage ledger (snapshots of monotonic tallies, one row per field) and the quota-event
-- outbox whose primary key makes each threshold event happen once per period.
CREATE TABLE tg_usage (
    tenant_id  text NOT NULL,
    period     text NOT NULL CHECK (period ~ '^[0-9]{4}-[0-9]{2}$'),
    field      text NOT NULL,
    value      bigint NOT NULL CHECK (value >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, period, field)
);

CREATE TABLE tg_usage_events (
    tenant_id    text NOT NULL,
    period       text NOT NULL,
    threshold    integer NOT NULL,
    created_at   timestamptz NOT NULL,
    delivered_at timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    PRIMARY KEY (tenant_id, period, threshold)
);

ALTER TABLE tg_tenants ADD COLUMN webhook_url text;
ALTER TABLE tg_tenants ADD COLUMN webhook_secret text;

SELECT tg_isolate_gateway_table('tg_usage', 'tenant_id');
SELECT tg_isolate_gateway_table('tg_usage_events', 'tenant_id');
