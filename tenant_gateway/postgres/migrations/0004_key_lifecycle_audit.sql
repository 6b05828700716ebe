-- Key lifecycle (last use, flushed in batches, never per request) and the audit trail.
ALTER TABLE tg_api_keys ADD COLUMN last_used_at timestamptz;
ALTER TABLE tg_tenants ADD COLUMN deleted_at timestamptz;

CREATE TABLE tg_audit (
    tenant_id text NOT NULL REFERENCES tg_tenants (id) ON DELETE CASCADE,
    id        bigint GENERATED ALWAYS AS IDENTITY,
    at        timestamptz NOT NULL,
    actor     text NOT NULL,
    action    text NOT NULL,
    target    text,
    ip        text,
    PRIMARY KEY (tenant_id, id)
);
ALTER TABLE tg_audit OWNER TO tenant_gateway_owner;
ALTER TABLE tg_audit ENABLE ROW LEVEL SECURITY;
ALTER TABLE tg_audit FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tg_audit
    USING (tenant_id = (SELECT current_setting('tenant_gateway.tenant_id', true)))
    WITH CHECK (tenant_id = (SELECT current_setting('tenant_gateway.tenant_id', true)));
CREATE POLICY gateway_service ON tg_audit TO tenant_gateway_owner USING (true) WITH CHECK (true);
REVOKE ALL ON tg_audit FROM PUBLIC;
