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

ALTER TABLE tg_usage OWNER TO tenant_gateway_owner;
ALTER TABLE tg_usage_events OWNER TO tenant_gateway_owner;
ALTER TABLE tg_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE tg_usage FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tg_usage
    USING (tenant_id = (SELECT current_setting('tenant_gateway.tenant_id', true)))
    WITH CHECK (tenant_id = (SELECT current_setting('tenant_gateway.tenant_id', true)));
CREATE POLICY gateway_service ON tg_usage TO tenant_gateway_owner USING (true) WITH CHECK (true);
ALTER TABLE tg_usage_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE tg_usage_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tg_usage_events
    USING (tenant_id = (SELECT current_setting('tenant_gateway.tenant_id', true)))
    WITH CHECK (tenant_id = (SELECT current_setting('tenant_gateway.tenant_id', true)));
CREATE POLICY gateway_service ON tg_usage_events TO tenant_gateway_owner
    USING (true) WITH CHECK (true);
REVOKE ALL ON tg_usage, tg_usage_events FROM PUBLIC;
