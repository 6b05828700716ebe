-- Issued invoices, stored as the exact JSON document served, so they never change.
CREATE SEQUENCE tg_invoice_number_seq;
CREATE TABLE tg_invoices (
    tenant_id text NOT NULL,
    period    text NOT NULL CHECK (period ~ '^[0-9]{4}-[0-9]{2}$'),
    number    bigint NOT NULL,
    issued_at timestamptz NOT NULL,
    document  text NOT NULL,
    PRIMARY KEY (tenant_id, period)
);
ALTER SEQUENCE tg_invoice_number_seq OWNER TO tenant_gateway_owner;
ALTER TABLE tg_invoices OWNER TO tenant_gateway_owner;
ALTER TABLE tg_invoices ENABLE ROW LEVEL SECURITY;
ALTER TABLE tg_invoices FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tg_invoices
    USING (tenant_id = (SELECT current_setting('tenant_gateway.tenant_id', true)))
    WITH CHECK (tenant_id = (SELECT current_setting('tenant_gateway.tenant_id', true)));
CREATE POLICY gateway_service ON tg_invoices TO tenant_gateway_owner USING (true) WITH CHECK (true);
REVOKE ALL ON tg_invoices FROM PUBLIC;
